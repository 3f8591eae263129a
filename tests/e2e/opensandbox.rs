//! The OpenSandbox task-executor API on its second listener, against the
//! real binaries: every route in both input shapes, the state mapping
//! (waiting → running → terminated, TaskTimeout/137), setTasks, deletion
//! (the process is gone, an audit trail stays), the bootstrap pattern (a
//! backgrounded daemon outlives its task and dies with its deletion), a
//! restart mid-task, the peer's error envelope, an absolute `workingDir`
//! under `--opensandbox-workdir-root`, and retention GC sparing a task
//! whose shim still keeps its daemons.

use std::time::{Duration, Instant};

use execgo_runtime_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// A runtime with the OpenSandbox listener on.
struct Osbx {
    server: Server,
    base: String,
}

impl Osbx {
    fn start(extra: &[&str]) -> Osbx {
        Self::start_with(Server::builder(), extra)
    }

    fn start_with(builder: ServerBuilder, extra: &[&str]) -> Osbx {
        let port = free_port();
        let server = builder
            .arg("--opensandbox-listen-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra.iter().copied())
            .start();
        Osbx {
            server,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("encode"));
        request(
            method,
            &format!("{}{path}", self.base),
            bytes.as_deref(),
            &[("content-type", "application/json")],
        )
    }

    fn raw(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        request(method, &format!("{}{path}", self.base), Some(body), &[])
    }

    fn create(&self, body: Value) -> Value {
        let r = self.call("POST", "/tasks", Some(&body));
        assert_eq!(r.status, 201, "create failed: {}", r.text);
        r.json()
    }

    /// `GET /tasks/{name}`; `None` on 404.
    fn get(&self, name: &str) -> Option<Value> {
        let r = self.call("GET", &format!("/tasks/{name}"), None);
        match r.status {
            200 => Some(r.json()),
            404 => None,
            s => panic!("GET /tasks/{name}: {s} {}", r.text),
        }
    }

    fn delete(&self, name: &str) {
        let r = self.call("DELETE", &format!("/tasks/{name}"), None);
        assert_eq!(r.status, 204, "delete failed: {}", r.text);
        assert_eq!(r.text, "");
    }

    fn wait(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.get(name).unwrap_or(Value::Null);
            if done(&v) {
                return v;
            }
            assert!(start.elapsed() < T, "{name}: not {what} after {T:?}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait(name, state, |v| !v["processStatus"][state].is_null())
    }

    fn wait_gone(&self, name: &str) {
        self.wait(name, "removed", Value::is_null);
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn flat(name: &str, command: &[&str]) -> Value {
    json!({"name": name, "process": {"command": command}})
}

fn wait_dead(pid: i32) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < T, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The envelope `{"code": "<status text>", "message"}`.
fn envelope(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["code"], code, "{v}");
    let message = v["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty());
    message
}

/// RFC 3339 at second precision, as Kubernetes writes it.
fn is_k8s_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 20 && s.ends_with('Z') && chrono_like(s) && !s.contains('.'))
}

fn chrono_like(s: &str) -> bool {
    let b = s.as_bytes();
    b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':'
}

#[test]
fn health_and_route_errors_use_the_peers_shapes() {
    let o = Osbx::start(&[]);
    let r = o.call("GET", "/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "healthy"}));
    envelope(&o.call("GET", "/nope", None), 404, "Not Found");
    let r = o.call("PUT", "/tasks", None);
    envelope(&r, 405, "Method Not Allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = o.call("POST", "/tasks/x", None);
    envelope(&r, 405, "Method Not Allowed");
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    envelope(
        &o.call("POST", "/getTasks", None),
        405,
        "Method Not Allowed",
    );
    let big = format!(
        r#"{{"name":"big","process":{{"command":["true"]}},"pad":"{}"}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    envelope(
        &o.raw("POST", "/tasks", big.as_bytes()),
        413,
        "Payload Too Large",
    );
    // The ordinary API is unchanged on its own port, and off this one.
    assert_eq!(o.server.get("/healthz").status, 200);
    envelope(&o.call("GET", "/healthz", None), 404, "Not Found");
    let cfg = o.server.get("/api/v1/runtime/config").json();
    assert_eq!(cfg["opensandbox_tenant"], "opensandbox");
    assert!(cfg["opensandbox_listen_addr"].is_string(), "{cfg}");
}

#[test]
fn the_listener_is_off_by_default() {
    let s = Server::start();
    let cfg = s.get("/api/v1/runtime/config").json();
    assert!(cfg.get("opensandbox_listen_addr").is_none(), "{cfg}");
}

#[test]
fn flat_shape_waiting_running_terminated() {
    // One slot: the second task waits behind the first.
    let o = Osbx::start(&["--max-running-tasks", "1"]);
    let first = o.create(flat("first", &["/bin/sh", "-c", "sleep 1; echo one"]));
    assert_eq!(first["name"], "first");
    assert_eq!(
        first["process"],
        json!({"command": ["/bin/sh", "-c", "sleep 1; echo one"]})
    );
    assert!(first["processStatus"].is_object(), "{first}");
    let second = o.create(flat("second", &["/bin/sh", "-c", "exit 0"]));
    assert_eq!(
        second["processStatus"],
        json!({"waiting": {"reason": "Pending"}})
    );
    assert!(second.get("deletionTimestamp").is_none());

    let running = o.wait_state("first", "running");
    assert!(
        is_k8s_time(&running["processStatus"]["running"]["startedAt"]),
        "{running}"
    );
    let done = o.wait_state("first", "terminated");
    let t = &done["processStatus"]["terminated"];
    assert_eq!(t["exitCode"], 0, "{done}");
    assert_eq!(t["reason"], "Succeeded");
    assert!(
        is_k8s_time(&t["startedAt"]) && is_k8s_time(&t["finishedAt"]),
        "{t}"
    );
    assert!(t.get("signal").is_none(), "{t}");
    let t2 = o.wait_state("second", "terminated");
    assert_eq!(t2["processStatus"]["terminated"]["reason"], "Succeeded");

    // An ordinary task of the store, in the configured tenant.
    let st = o.server.status("first");
    assert_eq!(st["status"], "success");
    assert_eq!(st["stdout"], "one\n");
    let res = o.server.get("/api/v1/runtime/resources").json();
    assert!(
        res["tenants"]
            .as_array()
            .is_some_and(|ts| ts.is_empty() || ts.iter().any(|t| t["tenant"] == "opensandbox")),
        "{res}"
    );
    let list = o.call("GET", "/getTasks", None);
    assert_eq!(list.status, 200);
    assert_eq!(Osbx::names(&list.json()), vec!["first", "second"]);
}

#[test]
fn nested_readme_shape_is_accepted_and_answered_flat() {
    let o = Osbx::start(&[]);
    let body = json!({"name": "nested", "spec": {"process": {
        "command": ["sh", "-c"], "args": ["echo \"$GREETING\"; exit 3"],
        "env": [{"name": "GREETING", "value": "hello"}]}}});
    let t = o.create(body);
    assert!(t.get("spec").is_none() && t.get("status").is_none(), "{t}");
    assert_eq!(t["process"]["args"], json!(["echo \"$GREETING\"; exit 3"]));
    let done = o.wait_state("nested", "terminated");
    let term = &done["processStatus"]["terminated"];
    assert_eq!(
        (term["exitCode"].as_i64(), term["reason"].as_str()),
        (Some(3), Some("Failed"))
    );
    assert_eq!(term["message"], "task exited with code 3");
    assert_eq!(o.server.status("nested")["stdout"], "hello\n");

    // setTasks takes the nested shape too.
    let r = o.call(
        "POST",
        "/setTasks",
        Some(&json!([{"name": "nested"}, {"name": "n2", "spec": {"process": {"command": ["true"]}}}])),
    );
    // "nested" without a process is refused before anything changes.
    envelope(&r, 400, "Bad Request");
    assert!(o.get("n2").is_none());
    let r = o.call(
        "POST",
        "/setTasks",
        Some(
            &json!([{"name": "nested", "spec": {"process": {"command": ["true"]}}},
                     {"name": "n2", "spec": {"process": {"command": ["true"]}}}]),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(Osbx::names(&r.json()), vec!["nested", "n2"]);
}

#[test]
fn env_working_dir_and_the_runtimes_environment() {
    let o = Osbx::start_with(Server::builder().env("OSBX_FROM_RUNTIME", "inherited"), &[]);
    o.create(json!({"name": "envy", "process": {
        "command": ["/bin/sh", "-c", "echo \"$OSBX_FROM_RUNTIME $MINE\"; pwd"],
        "env": [{"name": "MINE", "value": "mine"}], "workingDir": "sub/dir"}}));
    o.wait_state("envy", "terminated");
    let st = o.server.status("envy");
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("inherited mine"), "{out}");
    assert!(
        lines.next().unwrap().ends_with("/workspace/sub/dir"),
        "{out}"
    );
}

#[test]
fn a_timeout_is_task_timeout_137() {
    let o = Osbx::start(&["--termination-grace-ms", "200"]);
    o.create(json!({"name": "slow", "process": {"command": ["sleep", "30"], "timeoutSeconds": 1}}));
    let done = o.wait_state("slow", "terminated");
    let t = &done["processStatus"]["terminated"];
    assert_eq!(t["exitCode"], 137, "{done}");
    assert_eq!(t["reason"], "TaskTimeout");
    assert_eq!(o.server.status("slow")["error"]["code"], "timeout");
}

#[test]
fn bad_input_gets_the_envelope_and_changes_nothing() {
    let o = Osbx::start(&[]);
    o.create(flat("dup", &["true"]));
    let m = envelope(
        &o.call("POST", "/tasks", Some(&flat("dup", &["false"]))),
        409,
        "Conflict",
    );
    assert!(m.contains("dup"), "{m}");
    assert_eq!(o.get("dup").unwrap()["process"]["command"], json!(["true"]));

    let m = envelope(
        &o.call(
            "POST",
            "/tasks",
            Some(&json!({"name": "pod", "podTemplateSpec": {"spec": {"containers": []}}})),
        ),
        400,
        "Bad Request",
    );
    assert!(m.contains("podTemplateSpec is not supported"), "{m}");
    for (body, needle) in [
        (&b"{not json"[..], "malformed"),
        (
            &b"{\"process\":{\"command\":[\"true\"]}}"[..],
            "name is required",
        ),
        (
            &b"{\"name\":\"a b\",\"process\":{\"command\":[\"true\"]}}"[..],
            "name 'a b'",
        ),
        (
            &b"{\"name\":\"nocmd\",\"process\":{\"command\":[]}}"[..],
            "process.command",
        ),
        (
            &b"{\"name\":\"abs\",\"process\":{\"command\":[\"true\"],\"workingDir\":\"/etc\"}}"[..],
            "absolute",
        ),
        (
            &b"{\"name\":\"t0\",\"process\":{\"command\":[\"true\"],\"timeoutSeconds\":0}}"[..],
            "timeoutSeconds",
        ),
        (
            &b"{\"name\":\"nul\",\"process\":{\"command\":[\"tr\\u0000ue\"]}}"[..],
            "NUL",
        ),
    ] {
        let m = envelope(&o.raw("POST", "/tasks", body), 400, "Bad Request");
        assert!(m.contains(needle), "{}: {m}", String::from_utf8_lossy(body));
    }
    envelope(&o.raw("POST", "/setTasks", b"{}"), 400, "Bad Request");
    // Nothing of the refused bodies reached the store.
    for name in ["pod", "abs", "t0", "nul", "nocmd"] {
        assert!(o.get(name).is_none(), "{name}");
        assert_eq!(o.server.get(&format!("/api/v1/tasks/{name}")).status, 404);
    }
    let m = envelope(&o.call("GET", "/tasks/unknown", None), 404, "Not Found");
    assert!(m.contains("unknown"));
    envelope(&o.call("GET", "/tasks/bad%20name", None), 404, "Not Found");
    // Deleting an unknown name succeeds, as the peer answers.
    o.delete("unknown");
    let list = o.call("GET", "/getTasks", None).json();
    assert_eq!(Osbx::names(&list), vec!["dup"]);
}

#[test]
fn delete_stops_the_whole_task_then_removes_it_leaving_an_audit_trail() {
    let o = Osbx::start(&["--termination-grace-ms", "1500"]);
    // The task and its child ignore SIGTERM: the grace runs out, SIGKILL.
    o.create(flat(
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; sleep 300 & echo $! > child.pid; wait",
        ],
    ));
    o.wait_state("stubborn", "running");
    let pid = o.server.status("stubborn")["pid"].as_i64().unwrap() as i32;
    let pid_file = o.server.task_dir("stubborn").join("workspace/child.pid");
    let start = Instant::now();
    while !pid_file.exists()
        || std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .is_empty()
    {
        assert!(start.elapsed() < T, "no child.pid");
        std::thread::sleep(Duration::from_millis(20));
    }
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(child));

    o.delete("stubborn");
    // While it stops it answers with its deletionTimestamp.
    let stopping = o.get("stubborn").expect("gone before its grace ran out");
    assert!(is_k8s_time(&stopping["deletionTimestamp"]), "{stopping}");
    o.delete("stubborn");
    o.wait_gone("stubborn");
    wait_dead(pid);
    wait_dead(child);
    assert!(!Osbx::names(&o.call("GET", "/getTasks", None).json()).contains(&"stubborn".into()));

    // The audit trail: the task and its events stay in the store.
    let st = o.server.status("stubborn");
    assert_eq!(st["status"], "cancelled", "{st}");
    let types = o.server.event_types("stubborn");
    for t in [
        "deletion_requested",
        "kill_requested",
        "cancelled",
        "removed",
    ] {
        assert!(types.contains(&t.to_string()), "{t} missing from {types:?}");
    }
    // The name is free again.
    let again = o.create(flat("stubborn", &["true"]));
    assert_eq!(again["process"]["command"], json!(["true"]));
    o.wait_state("stubborn", "terminated");
}

#[test]
fn set_tasks_creates_keeps_and_removes() {
    let o = Osbx::start(&["--termination-grace-ms", "500"]);
    let r = o.call(
        "POST",
        "/setTasks",
        Some(&json!([
            flat("a", &["sleep", "300"]),
            flat("b", &["sleep", "300"])
        ])),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(Osbx::names(&r.json()), vec!["a", "b"]);
    o.wait_state("a", "running");
    o.wait_state("b", "running");
    let a_pid = o.server.status("a")["pid"].as_i64().unwrap() as i32;
    let b_pid = o.server.status("b")["pid"].as_i64().unwrap() as i32;

    // b stays as it is (its spec is not updated), a goes, c comes.
    let r = o.call(
        "POST",
        "/setTasks",
        Some(&json!([
            flat("b", &["echo", "changed"]),
            flat("c", &["true"])
        ])),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let names = Osbx::names(&r.json());
    assert!(
        names.contains(&"b".into()) && names.contains(&"c".into()),
        "{names:?}"
    );
    o.wait_gone("a");
    wait_dead(a_pid);
    let b = o.get("b").unwrap();
    assert_eq!(b["process"]["command"], json!(["sleep", "300"]));
    assert!(!b["processStatus"]["running"].is_null(), "{b}");
    assert!(alive(b_pid));
    o.wait_state("c", "terminated");

    // The empty set removes everything.
    let r = o.call("POST", "/setTasks", Some(&json!([])));
    assert_eq!(r.status, 200);
    o.wait_gone("b");
    o.wait_gone("c");
    wait_dead(b_pid);
    assert_eq!(o.call("GET", "/getTasks", None).json(), json!([]));
}

#[test]
fn a_restart_mid_task_keeps_the_task_and_its_state() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut o = Osbx::start_with(Server::builder().data_dir(&dir), &[]);
    o.create(flat("survivor", &["/bin/sh", "-c", "sleep 2; echo done"]));
    let running = o.wait_state("survivor", "running");
    o.server.kill9();
    drop(o);
    let o = Osbx::start_with(Server::builder().data_dir(&dir), &[]);
    let again = o.get("survivor").expect("lost across the restart");
    assert_eq!(again["process"], running["process"]);
    if let Some(started) = again["processStatus"]["running"]["startedAt"].as_str() {
        assert_eq!(started, running["processStatus"]["running"]["startedAt"]);
    }
    let done = o.wait_state("survivor", "terminated");
    assert_eq!(
        done["processStatus"]["terminated"]["reason"], "Succeeded",
        "{done}"
    );
    assert_eq!(
        done["processStatus"]["terminated"]["startedAt"],
        running["processStatus"]["running"]["startedAt"]
    );
    assert_eq!(o.server.status("survivor")["stdout"], "done\n");
}

/// Waits for a pid file the task writes in its workspace.
fn read_pid(o: &Osbx, task: &str, file: &str) -> i32 {
    let path = o.server.task_dir(task).join("workspace").join(file);
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < T, "no {file}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// OpenSandbox's server starts `sh -c '/opt/opensandbox/bootstrap.sh ... &'`:
/// the shell exits 0 at once, its daemon keeps running.
const BOOTSTRAP: &str =
    "sleep 300 & echo $! > daemon.pid; setsid sleep 301 & echo $! > detached.pid; exit 0";

#[test]
fn the_bootstrap_pattern_keeps_the_daemon_until_the_task_is_deleted() {
    bootstrap(&["--termination-grace-ms", "500"]);
}

/// Without task cgroups the shim finds the daemons as its own children
/// (orphans come to the subreaper) and by the main process's group.
#[test]
fn the_bootstrap_pattern_without_cgroups() {
    bootstrap(&["--termination-grace-ms", "500", "--disable-cgroup"]);
}

fn bootstrap(args: &[&str]) {
    let o = Osbx::start(args);
    o.create(flat("boot", &["/bin/sh", "-c", BOOTSTRAP]));
    let done = o.wait_state("boot", "terminated");
    let t = &done["processStatus"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(0), Some("Succeeded")),
        "{done}"
    );
    let daemon = read_pid(&o, "boot", "daemon.pid");
    let detached = read_pid(&o, "boot", "detached.pid");
    // The task is over, its daemons are not (one left its session too).
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(daemon), "the daemon died with its task");
    assert!(alive(detached), "the detached daemon died with its task");
    assert_eq!(o.server.status("boot")["status"], "success");

    o.delete("boot");
    o.wait_gone("boot");
    wait_dead(daemon);
    wait_dead(detached);
    // It ended by itself: the delete does not rewrite its outcome.
    assert_eq!(o.server.status("boot")["status"], "success");
    let types = o.server.event_types("boot");
    assert!(types.contains(&"removed".to_string()), "{types:?}");
}

#[test]
fn the_ordinary_api_still_kills_what_a_task_leaves_behind() {
    let s = Server::start();
    let id = s.submit(&sh("sleep 300 & echo $! > daemon.pid"));
    assert_eq!(s.wait_terminal(&id, T)["status"], "success");
    let pid: i32 = std::fs::read_to_string(s.task_dir(&id).join("workspace/daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_dead(pid);
}

#[test]
fn a_kept_daemon_survives_a_runtime_restart_and_dies_on_delete() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut o = Osbx::start_with(Server::builder().data_dir(&dir), &[]);
    o.create(flat(
        "boot",
        &["/bin/sh", "-c", "sleep 300 & echo $! > daemon.pid"],
    ));
    o.wait_state("boot", "terminated");
    let daemon = read_pid(&o, "boot", "daemon.pid");
    o.server.kill9();
    drop(o);
    assert!(alive(daemon));
    let o = Osbx::start_with(Server::builder().data_dir(&dir), &[]);
    let t = o.get("boot").expect("lost across the restart");
    assert_eq!(
        t["processStatus"]["terminated"]["reason"], "Succeeded",
        "{t}"
    );
    assert!(alive(daemon));
    o.delete("boot");
    o.wait_gone("boot");
    wait_dead(daemon);
}

#[test]
fn a_delete_during_a_restart_resumes_and_completes() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut o = Osbx::start_with(
        Server::builder().data_dir(&dir),
        &["--termination-grace-ms", "3000"],
    );
    o.create(flat(
        "slowstop",
        &["/bin/sh", "-c", "trap '' TERM; sleep 300"],
    ));
    o.wait_state("slowstop", "running");
    let pid = o.server.status("slowstop")["pid"].as_i64().unwrap() as i32;
    o.delete("slowstop");
    // The runtime dies while the shim waits out the grace.
    o.server.kill9();
    drop(o);
    let o = Osbx::start_with(Server::builder().data_dir(&dir), &[]);
    if let Some(t) = o.get("slowstop") {
        assert!(is_k8s_time(&t["deletionTimestamp"]), "{t}");
    }
    o.wait_gone("slowstop");
    wait_dead(pid);
}

/// A stand-in main container: a process in its own pid, mount, uts, ipc
/// and net namespaces whose environment (alone: `unshare` itself does not
/// carry the marker) holds `SANDBOX_MAIN_CONTAINER=<name>`; it is the
/// namespace's init, and reaps orphans as a pod's pause process does.
struct MainContainer {
    child: std::process::Child,
    pid: i32,
}

impl MainContainer {
    fn start(name: &str) -> MainContainer {
        let marker = format!("SANDBOX_MAIN_CONTAINER={name}");
        let child = std::process::Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--fork",
                "--kill-child",
                "--mount-proc",
            ])
            .args(["env", &marker, "OSBX_MAIN_ONLY=from-main", "/bin/sh", "-c"])
            // The namespace's init reaps orphans, as a pod's pause does.
            .arg("echo standin > /proc/sys/kernel/hostname && exec /bin/sh -c 'while :; do sleep 1 & wait; done'")
            .env_remove("SANDBOX_MAIN_CONTAINER")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("unshare");
        // Dropped (killed and waited for) on every way out.
        let mut main = MainContainer { child, pid: 0 };
        // The process inside: the one whose environment has the marker.
        let start = Instant::now();
        loop {
            let found = std::fs::read_dir("/proc").ok().and_then(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .find(|p| {
                        std::fs::read(format!("/proc/{p}/environ"))
                            .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == marker.as_bytes()))
                            && std::fs::read_to_string(format!("/proc/{p}/comm"))
                                .is_ok_and(|c| c.trim() == "sh")
                    })
            });
            if let Some(pid) = found {
                main.pid = pid;
                return main;
            }
            assert!(
                start.elapsed() < T,
                "the stand-in main container did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ns(&self, kind: &str) -> String {
        std::fs::read_link(format!("/proc/{}/ns/{kind}", self.pid))
            .expect("readlink")
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for MainContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sidecar_tasks_run_in_the_main_containers_namespaces() {
    if !is_root() {
        println!("skipped: sidecar mode joins another process's namespaces, which needs root");
        return;
    }
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: no unshare(1) to start a stand-in main container");
        return;
    }
    let name = format!("main-{}", std::process::id());
    let main = MainContainer::start(&name);
    let o = Osbx::start(&["--enable-sidecar-mode", "--main-container-name", &name]);
    let script = "for n in mnt uts ipc net pid; do readlink /proc/self/ns/$n; done; \
                  cat /proc/sys/kernel/hostname; echo \"$OSBX_MAIN_ONLY $MINE\"; pwd";
    o.create(json!({"name": "side", "process": {
        "command": ["/bin/sh", "-c", script], "env": [{"name": "MINE", "value": "mine"}]}}));
    let done = o.wait_state("side", "terminated");
    let st = o.server.status("side");
    assert_eq!(
        done["processStatus"]["terminated"]["reason"], "Succeeded",
        "{done} {st}"
    );
    let out = st["stdout"].as_str().unwrap().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    for (i, n) in ["mnt", "uts", "ipc", "net", "pid"].iter().enumerate() {
        assert_eq!(lines[i], main.ns(n), "{n}: {out}");
    }
    assert_eq!(lines[5], "standin", "{out}");
    assert_eq!(
        lines[6], "from-main mine",
        "the main container's environment, then the task's"
    );
    assert_eq!(lines[7], "/", "{out}");
    // The output stayed in the runtime's data dir.
    assert!(o.server.task_dir("side").join("stdout.log").exists());
    // It had no cgroup of its own, and its plan says so.
    let plan = &st["execution_plan"];
    assert_eq!(
        plan["resource_enforcement"]["cgroup_enforced"], false,
        "{st}"
    );
    assert!(
        plan["capability_warnings"].to_string().contains("sidecar"),
        "{st}"
    );

    // The bootstrap pattern in the main container: its daemon is kept
    // until the delete (the shim found it from outside the namespaces).
    let unique = format!("{}.5", 4000 + std::process::id() % 1000);
    o.create(flat(
        "sideboot",
        &["/bin/sh", "-c", &format!("sleep {unique} & exit 0")],
    ));
    let done = o.wait_state("sideboot", "terminated");
    assert_eq!(
        done["processStatus"]["terminated"]["reason"], "Succeeded",
        "{done}"
    );
    let daemons = pids_mentioning(&format!("sleep {unique}"));
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(daemons[0]));
    o.delete("sideboot");
    o.wait_gone("sideboot");
    wait_dead(daemons[0]);

    // Local runs in the executor's own namespaces.
    o.create(json!({"name": "local", "process": {
        "command": ["readlink", "/proc/self/ns/uts"], "execMode": "Local"}}));
    o.wait_state("local", "terminated");
    let out = o.server.status("local")["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(out.trim(), main.ns("uts"));
}

#[test]
fn a_missing_main_container_fails_the_task_with_sandbox_setup_failed() {
    let name = format!("absent-{}", std::process::id());
    let o = Osbx::start(&["--enable-sidecar-mode", "--main-container-name", &name]);
    o.create(flat("orphan", &["true"]));
    let done = o.wait_state("orphan", "terminated");
    let t = &done["processStatus"]["terminated"];
    assert_eq!(t["reason"], "Failed", "{done}");
    assert!(t["message"].as_str().unwrap().contains(&name), "{done}");
    let st = o.server.status("orphan");
    assert_eq!(st["error"]["code"], "sandbox_setup_failed", "{st}");
    assert!(st.get("started_at").is_none());
}

#[test]
fn remote_exec_mode_needs_sidecar_mode() {
    let o = Osbx::start(&[]);
    let r = o.call(
        "POST",
        "/tasks",
        Some(&json!({"name": "r", "process": {"command": ["true"], "execMode": "Remote"}})),
    );
    let m = envelope(&r, 400, "Bad Request");
    assert!(m.contains("sidecar mode"), "{m}");
    assert!(o.get("r").is_none());
}

/// A directory tasks may enter whoever they run as (0755), canonical.
fn open_dir(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[test]
fn an_absolute_working_dir_under_a_configured_root() {
    let tmp = tempdir();
    let root = open_dir(&tmp.path().join("apps"));
    let app = open_dir(&tmp.path().join("apps/app"));
    let outside = open_dir(&tmp.path().join("elsewhere"));
    std::os::unix::fs::symlink(&outside, tmp.path().join("apps/link")).unwrap();
    let o = Osbx::start(&["--opensandbox-workdir-root", &root]);
    for (name, dir) in [("abs", app.as_str()), ("root", root.as_str())] {
        o.create(json!({"name": name, "process": {
            "command": ["/bin/pwd"], "workingDir": format!("{dir}/")}}));
        let done = o.wait_state(name, "terminated");
        assert_eq!(
            done["processStatus"]["terminated"]["reason"], "Succeeded",
            "{done}"
        );
        // Echoed as given, normalised.
        assert_eq!(done["process"]["workingDir"], dir, "{done}");
        assert_eq!(o.server.status(name)["stdout"], format!("{dir}\n"));
    }

    // Outside every root, or not normalised: refused, nothing stored.
    for (name, dir) in [
        ("out", outside.clone()),
        ("prefix", format!("{root}x")),
        ("dots", format!("{root}/app/../../elsewhere")),
    ] {
        let m = envelope(
            &o.call(
                "POST",
                "/tasks",
                Some(
                    &json!({"name": name, "process": {"command": ["/bin/pwd"], "workingDir": dir}}),
                ),
            ),
            400,
            "Bad Request",
        );
        assert!(m.contains("workingDir"), "{m}");
        assert!(o.get(name).is_none(), "{name}");
        assert_eq!(o.server.get(&format!("/api/v1/tasks/{name}")).status, 404);
    }
    let m = envelope(
        &o.call(
            "POST",
            "/tasks",
            Some(&json!({"name": "out", "process": {"command": ["/bin/pwd"], "workingDir": outside}})),
        ),
        400,
        "Bad Request",
    );
    assert!(m.contains(&root), "the allowed roots are named: {m}");
    // setTasks validates the whole array first.
    envelope(
        &o.call(
            "POST",
            "/setTasks",
            Some(&json!([
                {"name": "fine", "process": {"command": ["true"]}},
                {"name": "out", "process": {"command": ["true"], "workingDir": outside}}
            ])),
        ),
        400,
        "Bad Request",
    );
    assert!(o.get("fine").is_none());

    // Missing, or reached through a symlink: the launch fails, clearly.
    for (name, dir, needle) in [
        ("missing", format!("{root}/nope"), "working directory"),
        ("link", format!("{root}/link"), "without following symlinks"),
    ] {
        o.create(json!({"name": name, "process": {"command": ["/bin/pwd"], "workingDir": dir}}));
        let done = o.wait_state(name, "terminated");
        let t = &done["processStatus"]["terminated"];
        assert_eq!(
            (t["exitCode"].as_i64(), t["reason"].as_str()),
            (Some(127), Some("Failed")),
            "{done}"
        );
        let st = o.server.status(name);
        assert_eq!(st["error"]["code"], "launch_failed", "{st}");
        let msg = st["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle) && msg.contains(&dir), "{msg}");
    }
}

#[test]
fn bad_workdir_roots_are_usage_errors() {
    for bad in ["relative", "/", "/a/../b", "/a/", "/a//b", ""] {
        let out = std::process::Command::new(runtime_bin())
            .args(["serve", "--opensandbox-workdir-root", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--opensandbox-workdir-root"), "{bad:?}: {err}");
    }
    let out = std::process::Command::new(runtime_bin())
        .arg("serve")
        .env("EXECGO_RUNTIME_OPENSANDBOX_WORKDIR_ROOT", "/srv:rel")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn retention_gc_spares_a_task_whose_shim_keeps_daemons() {
    let o = Osbx::start(&[
        "--result-retention-secs",
        "1",
        "--gc-interval-ms",
        "100",
        "--termination-grace-ms",
        "200",
    ]);
    let boot = &["/bin/sh", "-c", "sleep 300 & echo $! > daemon.pid"];
    o.create(flat("kept", boot));
    o.create(flat("deleted", boot));
    o.create(flat("plain", &["true"]));
    for name in ["kept", "deleted", "plain"] {
        o.wait_state(name, "terminated");
    }
    let daemon = read_pid(&o, "kept", "daemon.pid");
    let other = read_pid(&o, "deleted", "daemon.pid");
    let gone = |name: &str| o.server.get(&format!("/api/v1/tasks/{name}")).status == 404;
    let wait_collected = |name: &str| {
        let start = Instant::now();
        while !gone(name) {
            assert!(start.elapsed() < T, "{name} never collected");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Reads see the 404 at the row's commit; the directory goes right
        // after it.
        let start = Instant::now();
        while o.server.task_dir(name).exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "{name}: dir left");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // A task with nothing left running goes once expired...
    wait_collected("plain");
    // ...one whose shim keeps a daemon stays, over many passes.
    std::thread::sleep(Duration::from_millis(1500));
    for name in ["kept", "deleted"] {
        assert!(!gone(name), "{name} collected while its shim lives");
        assert!(o.server.task_dir(name).join("stdout.log").exists());
        assert!(o.get(name).is_some());
    }
    assert!(alive(daemon) && alive(other));

    // The daemon ends: its shim exits, and the task goes.
    let killed = std::process::Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_collected("kept");
    // Deleted through the API: stopped, removed, then collected.
    o.delete("deleted");
    wait_dead(other);
    wait_collected("deleted");
}
