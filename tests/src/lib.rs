//! Harness for the end-to-end suites: starts the real `execgo-runtime`
//! (which starts its real helper), talks HTTP to it, and cleans up.
//!
//! Binaries are taken from the cargo target directory the test runs from
//! (`target/<profile>/`), or from `EXECGO_RUNTIME_BIN_DIR`.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

/// Directory holding `execgo-runtime` and `execgo-runtime-helper`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EXECGO_RUNTIME_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable dir");
    // Test binaries live in target/<profile>/deps, programs in target/<profile>.
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn runtime_bin() -> PathBuf {
    let p = bin_dir().join("execgo-runtime");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

pub fn helper_bin() -> PathBuf {
    let p = bin_dir().join("execgo-runtime-helper");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temp dir for a test's data dir, searchable by others (mode 0755): as
/// root, tasks run as an unprivileged task user, which must reach its
/// workspace and scripts by path.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tempdir");
    dir
}

/// Creates an empty file every user may write (mode 0666): a ledger that
/// tasks, which run as the task user when the tests run as root, append
/// to.
pub fn task_writable_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "").expect("create ledger");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod ledger");
}

/// `--task-user` for a standalone helper started by a root test.
pub fn helper_task_user_args() -> Vec<&'static str> {
    if is_root() {
        vec!["--task-user", "nobody"]
    } else {
        Vec::new()
    }
}

/// A free loopback port (bound and released; the small race is acceptable).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

/// A running `execgo-runtime serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stderr_path: PathBuf,
}

pub struct ServerBuilder {
    args: Vec<String>,
    listen_ip: String,
    data_dir: Option<PathBuf>,
    envs: Vec<(String, String)>,
    port: Option<u16>,
    hooks: Vec<CommandHook>,
}

/// A change to the runtime's `Command` before it is spawned.
type CommandHook = Box<dyn FnOnce(&mut Command)>;

impl ServerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, a: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn data_dir(mut self, d: &Path) -> Self {
        self.data_dir = Some(d.to_path_buf());
        self
    }

    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }

    /// The IP of `--listen-addr` (`127.0.0.1` unless set; `[::]` for
    /// IPv6, brackets included). Clients still use `127.0.0.1` for an
    /// unspecified address.
    pub fn listen_ip(mut self, ip: &str) -> Self {
        self.listen_ip = ip.to_string();
        self
    }

    /// Changes the runtime's `Command` just before it is spawned (to add
    /// a `pre_exec`, say); hooks run in the order they were added.
    pub fn configure(mut self, f: impl FnOnce(&mut Command) + 'static) -> Self {
        self.hooks.push(Box::new(f));
        self
    }

    pub fn start(self) -> Server {
        let (tmp, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempdir();
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let port = self.port.unwrap_or_else(free_port);
        let stderr_path = data_dir.with_extension(format!("stderr-{port}.log"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
        let mut cmd = Command::new(runtime_bin());
        cmd.arg("serve")
            .arg("--listen-addr")
            .arg(format!("{}:{port}", self.listen_ip))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        for hook in self.hooks {
            hook(&mut cmd);
        }
        let child = cmd.spawn().expect("spawn execgo-runtime");
        let client_ip = match self.listen_ip.as_str() {
            "0.0.0.0" | "[::]" => "127.0.0.1",
            ip => ip,
        };
        let mut s = Server {
            child,
            base: format!("http://{client_ip}:{port}"),
            port,
            data_dir,
            _tmp: tmp,
            stderr_path,
        };
        s.wait_healthy();
        s
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not json ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error envelope.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.text))
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// Sends one request; never panics on a non-2xx status.
pub fn request(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Resp {
    try_request(method, url, body, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`request`], but a transport failure (refused, reset) is an `Err`.
pub fn try_request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
        .collect();
    let mut text = String::new();
    resp.into_reader()
        .take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(Resp {
        status,
        headers,
        text,
    })
}

pub const TERMINAL: [&str; 3] = ["success", "failed", "cancelled"];

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            args: Vec::new(),
            listen_ip: "127.0.0.1".to_string(),
            data_dir: None,
            envs: Vec::new(),
            port: None,
            hooks: Vec::new(),
        }
    }

    pub fn start() -> Server {
        Self::builder().start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> Resp {
        request("GET", &self.url(path), None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("encode");
        request(
            "POST",
            &self.url(path),
            Some(&bytes),
            &[("content-type", "application/json")],
        )
    }

    /// Submits and asserts 200; returns the task id.
    pub fn submit(&self, body: &Value) -> String {
        let r = self.post("/api/v1/tasks", body);
        assert_eq!(r.status, 200, "submit failed: {}", r.text);
        r.json()["task_id"].as_str().expect("task_id").to_string()
    }

    pub fn status(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/v1/tasks/{id}"));
        assert_eq!(r.status, 200, "status failed: {}", r.text);
        r.json()
    }

    pub fn events(&self, id: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/v1/tasks/{id}/events"));
        assert_eq!(r.status, 200, "events failed: {}", r.text);
        r.json().as_array().expect("array").clone()
    }

    pub fn event_types(&self, id: &str) -> Vec<String> {
        self.events(id)
            .iter()
            .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn kill(&self, id: &str, owner: Option<&str>) -> Resp {
        let mut headers = vec![];
        if let Some(o) = owner {
            headers.push(("x-execgo-owner", o));
        }
        request(
            "POST",
            &self.url(&format!("/api/v1/tasks/{id}/kill")),
            Some(b""),
            &headers,
        )
    }

    /// Polls until `id` is terminal (10 ms steps) and returns its status.
    pub fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |v| {
            TERMINAL.contains(&v["status"].as_str().unwrap_or(""))
        })
    }

    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |v| v["status"] == status)
    }

    pub fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.status(id);
            if done(&v) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "task {id} not done after {timeout:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("execgo-runtime exited early ({st}): {}", self.stderr());
            }
            if let Ok(r) = agent().get(&self.url("/healthz")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "execgo-runtime did not become healthy: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Pid of the embedded helper (the runtime's child named after it).
    pub fn helper_pid(&self) -> Option<i32> {
        children_of(self.pid()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim().starts_with("execgo-runtime-"))
                .unwrap_or(false)
        })
    }

    /// `kill -9` of the runtime process only.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("tasks").join(id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parent pid of `pid`, from `/proc/<pid>/stat`.
pub fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .map(|state| state != "Z" && state != "X")
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A command task body.
pub fn command(program: &str, args: &[&str]) -> Value {
    json!({"execution": {"kind": "command", "program": program, "args": args}})
}

/// `/bin/sh -c script` as a command task.
pub fn sh(script: &str) -> Value {
    command("/bin/sh", &["-c", script])
}

/// Direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let f = t.path().join("children");
            if let Ok(s) = std::fs::read_to_string(f) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// Pids whose command line mentions `needle` (e.g. a test's data dir).
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = vec![];
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// The uid of the unprivileged runtime of the separated layout in the
/// tests (no passwd entry needed).
pub const SEPARATED_RUNTIME_UID: u32 = 65533;

/// The separated layout's helper: root, on a socket `dir/helper.sock`,
/// allowing [`SEPARATED_RUNTIME_UID`], on the data dir `dir/data`, with
/// `extra` flags; its log in `dir/helper.log`. Returns once the socket is
/// there.
pub fn start_root_helper(dir: &Path, extra: &[&str]) -> Child {
    let socket = dir.join("helper.sock");
    let child = Command::new(helper_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["--allowed-uid", &SEPARATED_RUNTIME_UID.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("helper.log")).expect("helper log"))
        .spawn()
        .expect("spawn helper");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "helper socket never appeared: {}",
            std::fs::read_to_string(dir.join("helper.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// The separated layout's runtime: [`SEPARATED_RUNTIME_UID`] (uid and
/// gid) on the data dir `data`, made its own.
pub fn unprivileged_runtime(data: &Path) -> ServerBuilder {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(data).expect("data dir");
    std::os::unix::fs::chown(
        data,
        Some(SEPARATED_RUNTIME_UID),
        Some(SEPARATED_RUNTIME_UID),
    )
    .expect("chown data dir");
    Server::builder().data_dir(data).configure(|cmd| {
        cmd.uid(SEPARATED_RUNTIME_UID).gid(SEPARATED_RUNTIME_UID);
    })
}
