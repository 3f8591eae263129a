//! Shared harness: a real helper in standalone mode on a socket in a
//! tempdir, a tempdir data dir, a blocking protocol client, and task
//! directories laid out as the runtime lays them out at submit.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::taskdir::{ClaimRecord, StartedRecord, CLAIM, STARTED};
use execgo_runtime_protocol::{
    read_frame, write_frame, Hello, HelloReply, LaunchLimits, LaunchProfile, LaunchSpec, Request,
    Response,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_execgo-runtime-helper");

pub fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The `--task-user` a helper started by root needs: `nobody`, or a uid
/// without a passwd entry when nobody is the allowed peer. Empty when the
/// helper runs unprivileged, or when `extra` names one already.
pub fn task_user_args(allowed: u32, helper_uid: u32, extra: &[&str]) -> Vec<String> {
    if helper_uid != 0 || extra.contains(&"--task-user") {
        return Vec::new();
    }
    let user = if allowed == 65534 {
        "65533:65533"
    } else {
        "nobody"
    };
    vec!["--task-user".into(), user.into()]
}

/// A test's temp dir as root: searchable by the task user, so tasks reach
/// their workspace and scripts by path.
pub fn searchable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub struct Helper {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data: PathBuf,
}

impl Helper {
    /// Standalone helper allowing our own uid.
    pub fn start() -> Helper {
        Helper::start_allowing(my_uid())
    }

    pub fn start_allowing(uid: u32) -> Helper {
        Helper::start_with(uid, None, &[])
    }

    /// Standalone helper allowing `uid`, run as `run_as` (uid = gid, set
    /// by the spawn before exec; the test must be root) when given, with
    /// `extra` arguments.
    pub fn start_with(uid: u32, run_as: Option<u32>, extra: &[&str]) -> Helper {
        Helper::start_configured(uid, run_as, extra, |_| {})
    }

    /// [`Helper::start_with`], with `configure` applied to the command
    /// last (to override `RUST_LOG`, add a `pre_exec`, ...).
    pub fn start_configured(
        uid: u32,
        run_as: Option<u32>,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Helper {
        use std::os::unix::process::CommandExt;
        let dir = searchable_tempdir();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("tasks")).unwrap();
        let socket = dir.path().join("h.sock");
        let log = File::create(dir.path().join("helper.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&socket)
            .arg("--allowed-uid")
            .arg(uid.to_string())
            .args(extra)
            .args(task_user_args(uid, run_as.unwrap_or_else(my_uid), extra))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(id) = run_as {
            // The helper binds its socket in the dir and probes the data dir.
            for p in [dir.path(), &data, &data.join("tasks")] {
                std::os::unix::fs::chown(p, Some(id), Some(id)).unwrap();
            }
            // std drops the supplementary groups, then setgid, then setuid.
            cmd.uid(id).gid(id);
        }
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let h = Helper {
            child,
            dir,
            socket,
            data,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !h.socket.exists() {
            assert!(Instant::now() < until, "helper never bound: {}", h.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    /// Stops the helper process, keeping its directories.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("helper.log")).unwrap_or_default()
    }

    pub fn raw(&self) -> UnixStream {
        // The socket file appears at bind(2), a moment before listen(2):
        // refused until then.
        let until = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < until =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connecting failed: {e}\n{}", self.log()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// A connection with the handshake done.
    pub fn client(&self) -> Client {
        let mut s = self.raw();
        write_frame(&mut s, &Hello::current()).unwrap();
        match read_frame::<HelloReply, _>(&mut s).unwrap() {
            HelloReply::Accepted {
                helper_pid,
                version,
                ..
            } => {
                assert_eq!(version, execgo_runtime_protocol::PROTOCOL_VERSION);
                Client {
                    stream: s,
                    helper_pid,
                }
            }
            other => panic!("handshake refused: {other:?}\n{}", self.log()),
        }
    }

    /// Asserts a fresh connection is still served.
    pub fn assert_alive(&self) {
        assert_eq!(
            self.client().call(&Request::Ping),
            Response::Pong,
            "{}",
            self.log()
        );
    }

    /// Creates `tasks/<id>/` with empty logs, as the runtime does at submit.
    pub fn task(&self, id: &str) -> PathBuf {
        let d = self.data.join("tasks").join(id);
        std::fs::create_dir_all(&d).unwrap();
        File::create(d.join("stdout.log")).unwrap();
        File::create(d.join("stderr.log")).unwrap();
        d
    }

    /// [`Helper::task`], with an empty `ran` file in it that the task
    /// (which may run as another user) can append to.
    pub fn task_with_ledger(&self, id: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.task(id);
        std::fs::write(d.join("ran"), "").unwrap();
        std::fs::set_permissions(d.join("ran"), std::fs::Permissions::from_mode(0o666)).unwrap();
        d
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.data.join("tasks").join(id)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: UnixStream,
    pub helper_pid: u32,
}

impl Client {
    pub fn call(&mut self, req: &Request) -> Response {
        write_frame(&mut self.stream, req).unwrap();
        read_frame(&mut self.stream).unwrap()
    }

    /// Launches and expects `Launched`, which comes as soon as the shim is
    /// started.
    pub fn launch(&mut self, spec: LaunchSpec) -> execgo_runtime_protocol::Launched {
        match self.call(&Request::Launch(spec)) {
            Response::Launched(l) => l,
            other => panic!("launch answered {other:?}"),
        }
    }
}

pub fn spec(id: &str, argv: &[&str]) -> LaunchSpec {
    LaunchSpec {
        task_id: id.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        workspace_subdir: None,
        profile: LaunchProfile::Process,
        limits: LaunchLimits {
            wall_time_ms: 30_000,
            cpu_time_sec: None,
            memory_bytes: None,
            pids_max: None,
            cpu_millis: None,
            stdout_max_bytes: 4096,
            stderr_max_bytes: 4096,
            max_log_bytes: 64 << 20,
        },
        termination_grace_ms: 500,
        result_template: serde_json::json!({"task_id": id, "status": "accepted", "handle_id": id})
            .to_string(),
        task_cgroups: true,
        keep_descendants: false,
        sidecar_target: None,
        workdir: None,
        script_fd: false,
    }
}

/// Waits for `result.json` and parses it.
pub fn wait_result(task_dir: &Path, timeout: Duration) -> serde_json::Value {
    let path = task_dir.join("result.json");
    let until = Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(
            Instant::now() < until,
            "no result.json in {} after {timeout:?}; shim.log: {}",
            task_dir.display(),
            std::fs::read_to_string(task_dir.join("shim.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the shim's `started` record: the task's process is running
/// (or was).
pub fn wait_started(task_dir: &Path, timeout: Duration) -> StartedRecord {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(target) = std::fs::read_link(task_dir.join(STARTED)) {
            return StartedRecord::parse(target.as_os_str().as_encoded_bytes())
                .unwrap_or_else(|| panic!("a malformed started record: {target:?}"));
        }
        assert!(
            Instant::now() < until,
            "no started in {} after {timeout:?}; shim.log: {}",
            task_dir.display(),
            std::fs::read_to_string(task_dir.join("shim.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the shim recorded a start.
pub fn has_started(task_dir: &Path) -> bool {
    task_dir.join(STARTED).symlink_metadata().is_ok()
}

/// The claim's record (the target of the `shim.claim` symlink).
pub fn read_claim(task_dir: &Path) -> ClaimRecord {
    let target = std::fs::read_link(task_dir.join(CLAIM)).unwrap();
    ClaimRecord::parse(target.as_os_str().as_encoded_bytes())
        .unwrap_or_else(|| panic!("a malformed claim: {target:?}"))
}

/// Waits until `pid` is gone or a zombie (its reaper may be slow, or none).
pub fn wait_gone(pid: i32, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        match stat_fields(pid) {
            None => return,
            Some(f) if f[0] == "Z" => return,
            Some(_) => {}
        }
        assert!(Instant::now() < until, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: index 0 is field 3
/// (state), 1 is ppid, 3 is the session id.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Reads until EOF or error; what a refused peer sees.
pub fn read_to_close(s: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            // A signal to this test process (a child's exit) is no answer.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("expected the helper to close, got {e}"),
        }
    }
}

pub fn send_raw(s: &mut UnixStream, bytes: &[u8]) {
    // The helper may close after the first bytes; later ones may EPIPE.
    let _ = s.write_all(bytes);
}

/// Makes `cmd` start with RLIMIT_NOFILE at (soft, hard).
#[allow(unsafe_code)]
pub fn limit_nofile(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls
    // setrlimit, which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
}
