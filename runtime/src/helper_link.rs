//! The runtime's connection to the helper: the embedded helper started as a
//! child over a socketpair, or a separately installed one reached at
//! `--helper-socket`. Requests are blocking and serialized on the one
//! connection; callers run them on the blocking pool. A broken connection is
//! dropped and re-established (the embedded helper restarted) on next use.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    read_frame, write_frame, FrameError, Hello, HelloReply, HelperCapabilities, Request, Response,
};

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
    #[error("helper unavailable, retrying after a backoff")]
    Backoff,
    #[error("helper link lock poisoned")]
    Poisoned,
}

/// Where the helper is.
#[derive(Debug, Clone)]
pub enum HelperMode {
    Embedded {
        binary: PathBuf,
        data_dir: PathBuf,
        cgroup_root: PathBuf,
        /// `json` or `journald`, as the runtime resolved it.
        log_format: &'static str,
    },
    Socket(PathBuf),
}

struct Conn {
    stream: UnixStream,
    child: Option<Child>,
    capabilities: HelperCapabilities,
}

pub struct HelperLink {
    mode: HelperMode,
    conn: Mutex<Option<Conn>>,
    last_attempt: Mutex<Option<Instant>>,
    connects: std::sync::atomic::AtomicU64,
    up: std::sync::atomic::AtomicBool,
    /// The newest probe and when it arrived (every connect probes afresh).
    latest_probe: Mutex<Option<(HelperCapabilities, String)>>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(15);
const RETRY_AFTER: Duration = Duration::from_millis(200);

impl HelperLink {
    pub fn new(mode: HelperMode) -> Self {
        HelperLink {
            mode,
            conn: Mutex::new(None),
            last_attempt: Mutex::new(None),
            connects: std::sync::atomic::AtomicU64::new(0),
            up: std::sync::atomic::AtomicBool::new(false),
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
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the last exchange with the helper succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one request and waits for its reply, connecting first if needed.
    pub fn call(&self, req: &Request) -> Result<Response, LinkError> {
        let r = self.exchange(req);
        self.up
            .store(r.is_ok(), std::sync::atomic::Ordering::Relaxed);
        r
    }

    fn exchange(&self, req: &Request) -> Result<Response, LinkError> {
        let mut guard = self.conn.lock().map_err(|_| LinkError::Poisoned)?;
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let conn = guard.as_mut().ok_or(LinkError::Unexpected)?;
        let result = write_frame(&mut conn.stream, req)
            .and_then(|()| read_frame::<Response, _>(&mut conn.stream));
        match result {
            Ok(resp) => Ok(resp),
            Err(e) => {
                if let Some(mut old) = guard.take() {
                    reap(&mut old);
                }
                Err(e.into())
            }
        }
    }

    /// The newest probe result and its RFC 3339 time, if any connect
    /// succeeded yet.
    pub fn latest_probe(&self) -> Option<(HelperCapabilities, String)> {
        self.latest_probe.lock().ok().and_then(|l| l.clone())
    }

    /// Capabilities the helper reported at connect.
    pub fn capabilities(&self) -> Result<HelperCapabilities, LinkError> {
        let mut guard = self.conn.lock().map_err(|_| LinkError::Poisoned)?;
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        Ok(guard
            .as_ref()
            .map(|c| c.capabilities.clone())
            .unwrap_or_default())
    }

    fn connect(&self) -> Result<Conn, LinkError> {
        {
            let mut last = self.last_attempt.lock().map_err(|_| LinkError::Poisoned)?;
            if let Some(t) = *last {
                if t.elapsed() < RETRY_AFTER {
                    return Err(LinkError::Backoff);
                }
            }
            *last = Some(Instant::now());
        }
        let (stream, child) = match &self.mode {
            HelperMode::Embedded {
                binary,
                data_dir,
                cgroup_root,
                log_format,
            } => {
                let (stream, child) = spawn_embedded(binary, data_dir, cgroup_root, log_format)?;
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
        let mut conn = Conn {
            stream,
            child,
            capabilities: HelperCapabilities::default(),
        };
        let setup = handshake(&mut conn);
        if let Err(e) = setup {
            reap(&mut conn);
            return Err(e);
        }
        self.connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut latest) = self.latest_probe.lock() {
            *latest = Some((conn.capabilities.clone(), crate::engine::now()));
        }
        self.up.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(conn)
    }
}

fn handshake(conn: &mut Conn) -> Result<(), LinkError> {
    let s = &mut conn.stream;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(FrameError::Io)?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(FrameError::Io)?;
    write_frame(s, &Hello::current())?;
    match read_frame::<HelloReply, _>(s)? {
        HelloReply::Accepted { .. } => {}
        HelloReply::Rejected { reason } => return Err(LinkError::Rejected(reason)),
    }
    write_frame(s, &Request::Probe)?;
    match read_frame::<Response, _>(s)? {
        Response::Probe(caps) => conn.capabilities = caps,
        _ => return Err(LinkError::Unexpected),
    }
    Ok(())
}

fn spawn_embedded(
    binary: &Path,
    data_dir: &Path,
    cgroup_root: &Path,
    log_format: &str,
) -> Result<(UnixStream, Child), LinkError> {
    let (ours, theirs) = UnixStream::pair().map_err(LinkError::Socketpair)?;
    // The helper's end must survive exec; ours stays close-on-exec.
    nix::fcntl::fcntl(
        theirs.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| LinkError::Socketpair(e.into()))?;
    let child = Command::new(binary)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--cgroup-root")
        .arg(cgroup_root)
        .arg("--log-format")
        .arg(log_format)
        .arg("--inherited-fd")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| LinkError::Spawn {
            path: binary.to_path_buf(),
            source,
        })?;
    drop(theirs);
    Ok((ours, child))
}

fn reap(conn: &mut Conn) {
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    if let Some(child) = conn.child.as_mut() {
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
