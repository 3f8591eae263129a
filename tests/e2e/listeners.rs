//! Tasks may not use the runtime's listeners, through the real binaries: a
//! task that shares the host's network and calls the API on the runtime's
//! own port — over 127.0.0.1, ::1, the host's other addresses, from a
//! socket bound to a device or to another source address, closing at once
//! — gets 403 `permission_denied` on every request, and changes nothing;
//! the test's own clients are served. The OpenSandbox listener answers in
//! its own envelope, the separated layout (unprivileged runtime, root
//! helper) refuses as well, and a runtime whose tasks run as its own uid
//! cannot tell them apart and serves them.

use std::net::{IpAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);

/// Prints its own uid (`{"via": "whoami", "uid"}`), then runs the attempts
/// in `PLAN` (a JSON list) against the runtime and prints one JSON line per
/// attempt: `{"via", "statuses", "body"}`, or `{"via", "error"}` when the
/// connection failed. Raw sockets, so an
/// attempt can bind a device or a source address, pipeline two requests
/// on one connection, or close right after sending.
const ATTACKER: &str = r#"
import json, os, re, socket

def attempt(a):
    host = a["host"]
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(10)
    if a.get("dev"):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a["dev"].encode())
    if a.get("source"):
        s.bind((a["source"], 0))
    s.connect((host, a["port"]))
    body = a.get("body", "").encode()
    reqs = []
    for i in range(a.get("repeat", 1)):
        last = i == a.get("repeat", 1) - 1
        reqs.append(("%s %s HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n%s\r\n" % (a["method"], a["path"], len(body),
                     "Connection: close\r\n" if last else "")).encode() + body)
    s.sendall(b"".join(reqs))
    if a.get("close_at_once"):
        s.close()
        return {"sent": True}
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    return {"statuses": statuses, "body": data.rpartition(b"\r\n\r\n")[2].decode()}

print(json.dumps({"via": "whoami", "uid": os.getuid()}), flush=True)
for a in json.loads(os.environ["PLAN"]):
    try:
        out = attempt(a)
    except OSError as e:
        out = {"error": str(e)}
    out["via"] = a["via"]
    print(json.dumps(out), flush=True)
"#;

/// A python3 the task user may run (the harness's `PATH` may hold one in
/// root's home).
fn python3() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// One attempt of the attacker script.
fn attempt(via: &str, host: &str, port: u16, method: &str, path: &str) -> Value {
    json!({"via": via, "host": host, "port": port, "method": method, "path": path})
}

/// Runs the attacker as a `process` task of `s` and returns its lines and
/// its uid, after checking the task itself succeeded.
fn run_attacker(s: &Server, python: &str, plan: &[Value]) -> (Vec<Value>, u32) {
    let id = s.submit(&json!({
        "execution": {"kind": "script", "interpreter": [python], "script": ATTACKER,
                      "env": {"PLAN": Value::Array(plan.to_vec()).to_string()}},
        "limits": {"wall_time_ms": 60000},
    }));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "the attacker task failed: {st}");
    let lines: Vec<Value> = st["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let uid = line(&lines, "whoami")["uid"].as_u64().expect("uid") as u32;
    (lines, uid)
}

/// The line of `via`.
fn line<'a>(lines: &'a [Value], via: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["via"] == via)
        .unwrap_or_else(|| panic!("no line for {via}: {lines:?}"))
}

/// Every request of the attempt got 403 `permission_denied`, naming the
/// task's uid.
fn assert_refused_as_task(l: &Value, uid: u32) {
    let statuses: Vec<u64> = l["statuses"]
        .as_array()
        .unwrap_or_else(|| panic!("no answer: {l}"))
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 403),
        "{l}"
    );
    let body: Value = serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "permission_denied", "{l}");
    assert_eq!(
        body["error"]["message"],
        format!(
            "permission denied: this connection comes from a task (uid {uid}); \
             tasks may not use the runtime's API"
        ),
        "{l}"
    );
}

/// The value of a Prometheus sample line `name{labels} value`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[test]
fn a_task_cannot_use_the_runtimes_api_nor_harm_another_task() {
    if !is_root() {
        println!("skipped: tasks run as a uid of their own only under a root runtime");
        return;
    }
    let Some(python) = python3() else {
        println!("skipped: no python3 for the attacker task");
        return;
    };
    let s = Server::start();
    let victim = s.submit(&sh("sleep 4; echo survived"));
    s.wait_status(&victim, "running", T);
    let p = s.port;
    let submit = json!({"execution": {"kind": "command", "program": "/bin/true"},
                        "task_id": "planted-by-a-task"});
    let mut plan = vec![
        attempt("list", "127.0.0.1", p, "GET", "/api/v1/tasks"),
        attempt(
            "status",
            "127.0.0.1",
            p,
            "GET",
            &format!("/api/v1/tasks/{victim}"),
        ),
        attempt(
            "logs",
            "127.0.0.1",
            p,
            "GET",
            &format!("/api/v1/tasks/{victim}/logs/stdout"),
        ),
        attempt(
            "kill",
            "127.0.0.1",
            p,
            "POST",
            &format!("/api/v1/tasks/{victim}/kill"),
        ),
        json!({"via": "submit", "host": "127.0.0.1", "port": p, "method": "POST",
               "path": "/api/v1/tasks", "body": submit.to_string()}),
        attempt("healthz", "127.0.0.1", p, "GET", "/healthz"),
        attempt("metrics", "127.0.0.1", p, "GET", "/metrics"),
        // Two requests on one connection: both refused.
        json!({"via": "keep-alive", "host": "127.0.0.1", "port": p, "method": "GET",
               "path": "/api/v1/runtime/info", "repeat": 2}),
    ];
    // Kills sent and closed at once, so the socket may be gone (or a
    // time-wait remnant without an owner) when the runtime looks it up.
    for i in 0..20 {
        plan.push(
            json!({"via": format!("kill-and-close-{i}"), "host": "127.0.0.1",
            "port": p, "method": "POST", "path": format!("/api/v1/tasks/{victim}/kill"),
            "close_at_once": true}),
        );
    }
    let (lines, uid) = run_attacker(&s, python, &plan);
    for via in [
        "list",
        "status",
        "logs",
        "kill",
        "submit",
        "healthz",
        "metrics",
        "keep-alive",
    ] {
        assert_refused_as_task(line(&lines, via), uid);
    }
    assert_eq!(line(&lines, "keep-alive")["statuses"], json!([403, 403]));

    // Nothing changed: the victim ran to its end, nothing was planted.
    let st = s.wait_terminal(&victim, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "survived\n");
    assert!(!s.event_types(&victim).iter().any(|e| e.contains("kill")));
    assert_eq!(s.get("/api/v1/tasks/planted-by-a-task").status, 404);
    // The test's own (root) client is served throughout.
    let list = s.get("/api/v1/tasks");
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json()["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(s.get("/healthz").status, 200);
    let metrics = s.get("/metrics").text;
    let refused = sample(
        &metrics,
        "execgo_runtime_connections_refused_total{reason=\"task\"}",
    ) + sample(
        &metrics,
        "execgo_runtime_connections_refused_total{reason=\"unknown_owner\"}",
    );
    assert!(refused >= 28.0, "{refused}: {metrics}");
    let log = s.stderr();
    assert!(
        log.contains("\"task_connections\":\"connections from task uids ")
            && log.contains(" are refused\""),
        "{log}"
    );
}

/// A non-loopback address of this host in `family` (4 or 6) and the
/// device it is on, if any: the source the kernel picks towards a
/// documentation address (no packet is sent).
fn host_address(v6: bool) -> Option<(IpAddr, String)> {
    let (bind, to) = if v6 {
        ("[::]:0", "[2001:db8::1]:9")
    } else {
        ("0.0.0.0:0", "198.51.100.1:9")
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(to).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    // The device of the default route.
    let dev = if v6 {
        std::fs::read_to_string("/proc/net/ipv6_route")
            .ok()?
            .lines()
            .find(|l| l.starts_with("00000000000000000000000000000000 00"))?
            .split_whitespace()
            .last()?
            .to_string()
    } else {
        std::fs::read_to_string("/proc/net/route")
            .ok()?
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("00000000"))?
            .split_whitespace()
            .next()?
            .to_string()
    };
    Some((ip, dev))
}

#[test]
fn every_local_address_and_socket_trick_is_refused() {
    if !is_root() {
        println!("skipped: tasks run as a uid of their own only under a root runtime");
        return;
    }
    let Some(python) = python3() else {
        println!("skipped: no python3 for the attacker task");
        return;
    };
    // A dual-stack listener on every address.
    let s = Server::builder().listen_ip("[::]").start();
    let p = s.port;
    let mut plan = vec![
        attempt("ipv4-loopback", "127.0.0.1", p, "GET", "/api/v1/tasks"),
        attempt(
            "ipv4-loopback-other",
            "127.0.0.2",
            p,
            "GET",
            "/api/v1/tasks",
        ),
        attempt("ipv6-loopback", "::1", p, "GET", "/api/v1/tasks"),
        // Bound to lo: the lookup names the device.
        json!({"via": "lo-bound", "host": "127.0.0.1", "port": p, "method": "GET",
               "path": "/api/v1/tasks", "dev": "lo"}),
    ];
    let mut host_vias = Vec::new();
    for v6 in [false, true] {
        let Some((ip, dev)) = host_address(v6) else {
            println!(
                "skipped: no non-loopback IPv{} address",
                if v6 { 6 } else { 4 }
            );
            continue;
        };
        let host = ip.to_string();
        let fam = if v6 { "v6" } else { "v4" };
        // Towards the host's own address: the peer's address is a host
        // address, not a loopback one.
        plan.push(attempt(
            &format!("host-{fam}"),
            &host,
            p,
            "GET",
            "/api/v1/tasks",
        ));
        // From a loopback source towards it.
        let source = if v6 { "::1" } else { "127.0.0.1" };
        plan.push(
            json!({"via": format!("host-{fam}-from-loopback"), "host": host,
            "port": p, "method": "GET", "path": "/api/v1/tasks", "source": source}),
        );
        // Bound to the host's device: the kernel's lookup cannot find the
        // socket, and a local peer without an owner is refused too.
        plan.push(
            json!({"via": format!("host-{fam}-device-bound"), "host": host,
            "port": p, "method": "GET", "path": "/api/v1/tasks", "dev": dev}),
        );
        host_vias.push((fam, host));
    }
    let (lines, uid) = run_attacker(&s, python, &plan);
    for via in [
        "ipv4-loopback",
        "ipv4-loopback-other",
        "ipv6-loopback",
        "lo-bound",
    ] {
        assert_refused_as_task(line(&lines, via), uid);
    }
    for (fam, host) in &host_vias {
        assert_refused_as_task(line(&lines, &format!("host-{fam}")), uid);
        assert_refused_as_task(line(&lines, &format!("host-{fam}-from-loopback")), uid);
        let l = line(&lines, &format!("host-{fam}-device-bound"));
        if l.get("error").is_some() {
            println!("skipped device binding ({l}): the kernel refused it");
            continue;
        }
        assert_eq!(l["statuses"], json!([403]), "{l}");
        let body: Value = serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "permission_denied", "{l}");
        // The socket is not found, so no uid is named.
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be established"),
            "{l}"
        );
        // The test's own client over the same address is served.
        let url = if host.contains(':') {
            format!("http://[{host}]:{p}/api/v1/tasks")
        } else {
            format!("http://{host}:{p}/api/v1/tasks")
        };
        assert_eq!(request("GET", &url, None, &[]).status, 200, "{url}");
    }
    for url in [
        format!("http://127.0.0.1:{p}/api/v1/tasks"),
        format!("http://[::1]:{p}/api/v1/tasks"),
    ] {
        assert_eq!(request("GET", &url, None, &[]).status, 200, "{url}");
    }
}

#[test]
fn the_opensandbox_listener_refuses_a_task_in_its_own_envelope() {
    if !is_root() {
        println!("skipped: tasks run as a uid of their own only under a root runtime");
        return;
    }
    let Some(python) = python3() else {
        println!("skipped: no python3 for the attacker task");
        return;
    };
    let osbx_port = free_port();
    let s = Server::builder()
        .arg("--opensandbox-listen-addr")
        .arg(format!("127.0.0.1:{osbx_port}"))
        .start();
    let create = json!({"name": "planted", "spec": {"process": {"command": ["/bin/true"]}}});
    let plan = vec![
        attempt("get-tasks", "127.0.0.1", osbx_port, "GET", "/getTasks"),
        attempt("health", "127.0.0.1", osbx_port, "GET", "/health"),
        json!({"via": "create", "host": "127.0.0.1", "port": osbx_port, "method": "POST",
               "path": "/tasks", "body": create.to_string()}),
    ];
    let (lines, uid) = run_attacker(&s, python, &plan);
    for via in ["get-tasks", "health", "create"] {
        let l = line(&lines, via);
        assert_eq!(l["statuses"], json!([403]), "{l}");
        let body: Value = serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"code": "Forbidden", "message": format!(
                "permission denied: this connection comes from a task (uid {uid}); \
                 tasks may not use the runtime's API")}),
            "{l}"
        );
    }
    let osbx = |path: &str| {
        request(
            "GET",
            &format!("http://127.0.0.1:{osbx_port}{path}"),
            None,
            &[],
        )
    };
    assert_eq!(osbx("/health").status, 200);
    assert_eq!(osbx("/tasks/planted").status, 404, "nothing was created");
    assert_eq!(osbx("/getTasks").json(), json!([]));
}

const RUNTIME_UID: u32 = SEPARATED_RUNTIME_UID;

#[test]
fn the_separated_layout_refuses_tasks_too() {
    if !is_root() {
        println!("skipped: the separated layout needs a root helper");
        return;
    }
    let Some(python) = python3() else {
        println!("skipped: no python3 for the attacker task");
        return;
    };
    let tmp = tempdir();
    let data: PathBuf = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut helper = start_root_helper(tmp.path(), &["--task-user", "nobody"]);
    let s = unprivileged_runtime(&data)
        .arg("--helper-socket")
        .arg(tmp.path().join("helper.sock").to_str().unwrap())
        .start();
    let (lines, uid) = run_attacker(
        &s,
        python,
        &[attempt("list", "127.0.0.1", s.port, "GET", "/api/v1/tasks")],
    );
    assert_refused_as_task(line(&lines, "list"), uid);
    // Root, and the runtime's own uid, are served.
    assert_eq!(s.get("/api/v1/tasks").status, 200);
    let own = Command::new(runtime_bin())
        .args(["list", "--server", &s.base])
        .uid(RUNTIME_UID)
        .gid(RUNTIME_UID)
        .output()
        .unwrap();
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    drop(s);
    let _ = helper.kill();
    let _ = helper.wait();
}

#[test]
fn tasks_running_as_the_runtime_cannot_be_told_apart_and_are_served() {
    if !is_root() {
        println!("skipped: running the runtime as another uid needs root");
        return;
    }
    let Some(python) = python3() else {
        println!("skipped: no python3 for the attacker task");
        return;
    };
    // The embedded helper of an unprivileged runtime runs tasks as the
    // runtime's own uid: the gate is off (docs/security.md).
    let tmp = tempdir();
    let s = unprivileged_runtime(&tmp.path().join("data")).start();
    let (lines, uid) = run_attacker(
        &s,
        python,
        &[attempt("list", "127.0.0.1", s.port, "GET", "/api/v1/tasks")],
    );
    assert_eq!(uid, RUNTIME_UID);
    assert_eq!(line(&lines, "list")["statuses"], json!([200]));
    assert!(
        s.stderr().contains("\"task_connections\":\"off:"),
        "{}",
        s.stderr()
    );
}
