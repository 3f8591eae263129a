//! The runtime's connection to the helper: the embedded helper started as a
//! child over a socketpair, or a separately installed one reached at
//! `--helper-socket`. Requests are pipelined on the one connection: callers
//! write their frame under a lock and await their reply, which a reader
//! task hands over in request order (the helper answers in order). All of
//! it runs on the async executor; only connecting (which may start the
//! embedded helper) and reaping run on the blocking pool. A broken
//! connection is dropped and re-established (the embedded helper
//! restarted) on next use, at most every [`RETRY_AFTER`].

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    encode, read_frame, write_frame, FrameDecoder, FrameError, Hello, HelloReply,
    HelperCapabilities, Request, Response,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

use crate::peer_gate::TaskUids;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("starting the embedded helper {path} failed")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the helper socket {path} failed")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the helper socketpair failed")]
    Socketpair(#[source] std::io::Error),
    #[error("talking to the helper failed")]
    Frame(#[from] FrameError),
    #[error("the helper refused the handshake: {0}")]
    Rejected(String),
    #[error("the helper answered out of protocol")]
    Unexpected,
    #[error("the helper did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the helper connection broke: {0}")]
    Broken(String),
    #[error("helper unavailable, retrying after a backoff")]
    Backoff,
    #[error("helper link lock poisoned")]
    Poisoned,
    #[error("the helper connect task failed: {0}")]
    Join(String),
}

/// How the runtime starts its embedded helper: one field per helper flag.
#[derive(Debug, Clone)]
pub struct EmbeddedHelper {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// `json` or `journald`, as the runtime resolved it.
    pub log_format: &'static str,
    /// `--task-user` for the helper, if any.
    pub task_user: Option<String>,
    /// `--task-uid-range` for the helper, if any.
    pub task_uid_range: Option<String>,
    /// `--max-log-bytes` for the helper: the runtime's own.
    pub max_log_bytes: u64,
    pub allow_root_tasks: bool,
    /// `--rootfs-dir`s for the helper.
    pub rootfs_dirs: Vec<PathBuf>,
    /// `--workdir-root`s for the helper (the runtime's
    /// `--opensandbox-workdir-root`s).
    pub workdir_roots: Vec<PathBuf>,
}

/// Where the helper is.
#[derive(Debug, Clone)]
pub enum HelperMode {
    Embedded(EmbeddedHelper),
    Socket(PathBuf),
}

pub struct HelperLink {
    mode: HelperMode,
    link: Mutex<Option<Arc<Link>>>,
    /// Held while connecting, so concurrent callers make one attempt.
    connecting: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    connects: AtomicU64,
    up: AtomicBool,
    /// The newest probe and when it arrived (every connect probes afresh).
    latest_probe: Mutex<Option<(HelperCapabilities, String)>>,
}

/// What the host is taken to offer before the helper ever answered: the
/// process profile's minimum (process groups and rlimits exist on every
/// Linux), nothing probed.
pub fn unreached_probe() -> HelperCapabilities {
    HelperCapabilities {
        process_group: true,
        rlimit_cpu: true,
        rlimit_memory: true,
        ..Default::default()
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(15);
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A connection that passed the handshake and probe, still blocking.
struct Connected {
    stream: UnixStream,
    child: Option<Child>,
    capabilities: HelperCapabilities,
}

impl HelperLink {
    pub fn new(mode: HelperMode) -> Self {
        HelperLink {
            mode,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            connects: AtomicU64::new(0),
            up: AtomicBool::new(false),
            latest_probe: Mutex::new(None),
        }
    }

    /// The default embedded helper: next to this executable.
    pub fn default_binary() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("execgo-runtime-helper")))
            .unwrap_or_else(|| PathBuf::from("execgo-runtime-helper"))
    }

    /// Successful connections so far (the first one included).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Whether the last exchange with the helper succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sends one request and awaits its reply, connecting first if needed.
    pub async fn call(self: &Arc<Self>, req: Request) -> Result<Response, LinkError> {
        let r = self.exchange(&req).await;
        self.up.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    async fn exchange(self: &Arc<Self>, req: &Request) -> Result<Response, LinkError> {
        let link = match self.live() {
            Some(l) => l,
            None => self.connected().await?,
        };
        let rx = link.send(req).await?;
        match tokio::time::timeout(IO_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(LinkError::Broken("the reader stopped".into())),
            Err(_) => {
                link.fail();
                Err(LinkError::Timeout(IO_TIMEOUT))
            }
        }
    }

    /// The current connection, unless there is none or it broke.
    fn live(&self) -> Option<Arc<Link>> {
        let guard = self.link.lock().ok()?;
        guard.as_ref().filter(|l| !l.is_broken()).cloned()
    }

    /// The current connection, or a new one.
    async fn connected(self: &Arc<Self>) -> Result<Arc<Link>, LinkError> {
        let _one = self.connecting.lock().await;
        if let Some(l) = self.live() {
            return Ok(l);
        }
        let old = self.link.lock().map_err(|_| LinkError::Poisoned)?.take();
        let me = Arc::clone(self);
        let c = tokio::task::spawn_blocking(move || {
            if let Some(old) = old {
                old.reap();
            }
            me.connect()
        })
        .await
        .map_err(|e| LinkError::Join(e.to_string()))??;
        let link = Link::start(c)?;
        *self.link.lock().map_err(|_| LinkError::Poisoned)? = Some(Arc::clone(&link));
        self.connects.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut latest) = self.latest_probe.lock() {
            *latest = Some((link.capabilities.clone(), crate::engine::now()));
        }
        self.up.store(true, Ordering::Relaxed);
        Ok(link)
    }

    /// The newest probe result and its RFC 3339 time, if any connect
    /// succeeded yet: the runtime's one source of truth about the host.
    pub fn latest_probe(&self) -> Option<(HelperCapabilities, String)> {
        self.latest_probe.lock().ok().and_then(|l| l.clone())
    }

    /// The uids tasks run as, from the newest probe; `None` while no
    /// connect has succeeded (the probe is the only source).
    pub fn task_uids(&self, runtime_uid: u32) -> Option<TaskUids> {
        let latest = self.latest_probe.lock().ok()?;
        let (probe, _) = latest.as_ref()?;
        // With a range, `task_uid` is the helper's own uid, no task's.
        Some(TaskUids::new(
            probe.task_uid_range.is_none().then_some(probe.task_uid),
            probe.task_uid_range,
            runtime_uid,
        ))
    }

    /// Runs `f` on the newest probe, or on [`unreached_probe`] while no
    /// connect has succeeded.
    pub fn with_probe<T>(&self, f: impl FnOnce(&HelperCapabilities) -> T) -> T {
        let latest = self.latest_probe.lock().ok();
        match latest.as_ref().and_then(|l| l.as_ref()) {
            Some((p, _)) => f(p),
            None => f(&unreached_probe()),
        }
    }

    /// Capabilities the helper reported at connect (connecting first if
    /// needed).
    pub async fn capabilities(self: &Arc<Self>) -> Result<HelperCapabilities, LinkError> {
        let link = match self.live() {
            Some(l) => l,
            None => self.connected().await?,
        };
        Ok(link.capabilities.clone())
    }

    /// Blocking: starts the embedded helper or connects to its socket, then
    /// the handshake and the probe.
    fn connect(&self) -> Result<Connected, LinkError> {
        {
            let mut last = self.last_attempt.lock().map_err(|_| LinkError::Poisoned)?;
            if let Some(t) = *last {
                if t.elapsed() < RETRY_AFTER {
                    return Err(LinkError::Backoff);
                }
            }
            *last = Some(Instant::now());
        }
        let (mut stream, mut child) = match &self.mode {
            HelperMode::Embedded(helper) => {
                let (stream, child) = spawn_embedded(helper)?;
                (stream, Some(child))
            }
            HelperMode::Socket(path) => {
                let s = UnixStream::connect(path).map_err(|source| LinkError::Connect {
                    path: path.clone(),
                    source,
                })?;
                (s, None)
            }
        };
        match handshake(&mut stream) {
            Ok(capabilities) => Ok(Connected {
                stream,
                child,
                capabilities,
            }),
            Err(e) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if let Some(c) = child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Err(e)
            }
        }
    }
}

/// One live connection. Requests may be pipelined: each caller queues a
/// waiter and writes its frame under the same lock, so the queue's order is
/// the wire order; the helper answers in request order and the reader task
/// hands each reply to the oldest waiter.
struct Link {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// The socket, for a shutdown that needs no lock (see [`Link::fail`]).
    fd: RawFd,
    waiters: Arc<Mutex<Waiters>>,
    broken: Arc<AtomicBool>,
    child: Mutex<Option<Child>>,
    capabilities: HelperCapabilities,
}

type Reply = Result<Response, LinkError>;

#[derive(Default)]
struct Waiters {
    queue: VecDeque<oneshot::Sender<Reply>>,
    /// The reader has stopped: nothing queued now would be answered.
    closed: bool,
}

impl Link {
    /// Hands the connection to the executor and starts its reader task.
    fn start(c: Connected) -> Result<Arc<Link>, LinkError> {
        c.stream.set_nonblocking(true).map_err(FrameError::Io)?;
        let fd = c.stream.as_raw_fd();
        let stream = tokio::net::UnixStream::from_std(c.stream).map_err(FrameError::Io)?;
        let (reader, writer) = stream.into_split();
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let broken = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_replies(
            reader,
            Arc::clone(&waiters),
            Arc::clone(&broken),
        ));
        Ok(Arc::new(Link {
            writer: tokio::sync::Mutex::new(writer),
            fd,
            waiters,
            broken,
            child: Mutex::new(c.child),
            capabilities: c.capabilities,
        }))
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Queues a waiter and writes the request; the receiver gets its reply.
    async fn send(&self, req: &Request) -> Result<oneshot::Receiver<Reply>, LinkError> {
        let bytes = encode(req)?;
        let mut writer = self.writer.lock().await;
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiters.lock().map_err(|_| LinkError::Poisoned)?;
            if w.closed {
                return Err(LinkError::Broken("the reader stopped".into()));
            }
            w.queue.push_back(tx);
        }
        // A caller dropped mid-write leaves half a frame on the wire: the
        // link is then unusable, and the guard says so.
        let mut guard = FailUnlessDone(self, false);
        match tokio::time::timeout(IO_TIMEOUT, writer.write_all(&bytes)).await {
            Ok(Ok(())) => {
                guard.1 = true;
                Ok(rx)
            }
            Ok(Err(e)) => Err(FrameError::Io(e).into()),
            Err(_) => Err(LinkError::Timeout(IO_TIMEOUT)),
        }
    }

    /// Marks the link unusable and shuts the socket down, which ends the
    /// reader task; it fails every queued waiter.
    fn fail(&self) {
        self.broken.store(true, Ordering::Release);
        // The fd stays open while `self` (which owns both halves) lives.
        let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
    }

    /// Blocking: fails the link and waits for an embedded helper to exit.
    fn reap(&self) {
        self.fail();
        let Ok(mut guard) = self.child.lock() else {
            return;
        };
        if let Some(child) = guard.as_mut() {
            // The embedded helper exits on EOF; give it a moment, then insist.
            for _ in 0..20 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct FailUnlessDone<'a>(&'a Link, bool);

impl Drop for FailUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fail();
        }
    }
}

/// The reader task: each reply goes to the oldest waiter. Any error (the
/// helper gone, a malformed frame, a reply nobody asked for) ends the link.
async fn read_replies(
    mut stream: OwnedReadHalf,
    waiters: Arc<Mutex<Waiters>>,
    broken: Arc<AtomicBool>,
) {
    let mut frames = FrameDecoder::default();
    let error = loop {
        let reply = read_one(&mut stream, &mut frames).await;
        let Ok(mut w) = waiters.lock() else {
            break "waiter lock poisoned".to_string();
        };
        match (reply, w.queue.pop_front()) {
            (Ok(resp), Some(tx)) => {
                let _ = tx.send(Ok(resp));
            }
            (Ok(_), None) => break "the helper sent a reply nobody asked for".to_string(),
            (Err(e), first) => {
                if let Some(tx) = first {
                    w.queue.push_front(tx);
                }
                break crate::engine::error_chain(&e);
            }
        }
    };
    broken.store(true, Ordering::Release);
    if let Ok(mut w) = waiters.lock() {
        w.closed = true;
        for tx in w.queue.drain(..) {
            let _ = tx.send(Err(LinkError::Broken(error.clone())));
        }
    }
}

/// The next reply: from what `frames` holds, else read from the stream
/// into it.
async fn read_one(
    stream: &mut OwnedReadHalf,
    frames: &mut FrameDecoder,
) -> Result<Response, FrameError> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = frames.next_frame()? {
            return Ok(reply);
        }
        match stream.read(&mut chunk).await {
            Ok(0) if frames.buffered() == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => frames.push(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

fn handshake(stream: &mut UnixStream) -> Result<HelperCapabilities, LinkError> {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(FrameError::Io)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(FrameError::Io)?;
    write_frame(stream, &Hello::current())?;
    match read_frame::<HelloReply, _>(stream)? {
        HelloReply::Accepted { .. } => {}
        HelloReply::Rejected { reason } => return Err(LinkError::Rejected(reason)),
    }
    write_frame(stream, &Request::Probe)?;
    match read_frame::<Response, _>(stream)? {
        Response::Probe(caps) => Ok(caps),
        _ => Err(LinkError::Unexpected),
    }
}

/// Starts the embedded helper on one end of a new socket pair; ours is
/// the other end.
fn spawn_embedded(h: &EmbeddedHelper) -> Result<(UnixStream, Child), LinkError> {
    let (ours, theirs) = UnixStream::pair().map_err(LinkError::Socketpair)?;
    // The helper's end must survive exec; ours stays close-on-exec.
    nix::fcntl::fcntl(
        theirs.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| LinkError::Socketpair(e.into()))?;
    let mut cmd = Command::new(&h.binary);
    cmd.arg("--data-dir")
        .arg(&h.data_dir)
        .arg("--cgroup-root")
        .arg(&h.cgroup_root)
        .arg("--log-format")
        .arg(h.log_format)
        .arg("--inherited-fd")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null());
    if let Some(user) = &h.task_user {
        cmd.arg("--task-user").arg(user);
    }
    if let Some(range) = &h.task_uid_range {
        cmd.arg("--task-uid-range").arg(range);
    }
    cmd.arg("--max-log-bytes").arg(h.max_log_bytes.to_string());
    if h.allow_root_tasks {
        cmd.arg("--allow-root-tasks");
    }
    for dir in &h.rootfs_dirs {
        cmd.arg("--rootfs-dir").arg(dir);
    }
    for dir in &h.workdir_roots {
        cmd.arg("--workdir-root").arg(dir);
    }
    let child = cmd.spawn().map_err(|source| LinkError::Spawn {
        path: h.binary.clone(),
        source,
    })?;
    drop(theirs);
    Ok((ours, child))
}
