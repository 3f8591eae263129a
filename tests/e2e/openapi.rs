//! The OpenAPI document (`docs/openapi.json`) against the real runtime:
//! it is what `GET /api/v1/openapi.json` serves, its paths and methods are
//! the ones the router answers, and every answer to every operation, good
//! and bad input alike, has a status the document lists for it and a body
//! its schema accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn document_text() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The document, and which (method, path, status) answers were checked.
struct Spec {
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl Spec {
    fn load() -> Spec {
        Spec {
            doc: serde_json::from_str(&document_text()).expect("docs/openapi.json is JSON"),
            seen: BTreeSet::new(),
        }
    }

    fn paths(&self) -> Vec<String> {
        self.doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect()
    }

    /// Methods the document gives `path`, upper case.
    fn methods(&self, path: &str) -> BTreeSet<String> {
        self.doc["paths"][path]
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| *k != "parameters")
            .map(|k| k.to_uppercase())
            .collect()
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => {
                let ptr = r.strip_prefix('#').expect("local $ref");
                self.doc
                    .pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling {r}"))
            }
            None => v,
        }
    }

    /// `instance` against `schema`, whose `$ref`s point into the document.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let mut wrapped = schema.clone();
        wrapped["components"] = self.doc["components"].clone();
        wrapped["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        let v = jsonschema::draft202012::new(&wrapped)
            .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"));
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer violates the document:\n{}\nbody: {instance}",
            errors.join("\n")
        );
    }

    /// Checks one answer of operation `method path` (a template) against
    /// the document: a documented status, its headers, its content type,
    /// and a body its schema accepts.
    fn check(&mut self, method: &str, path: &str, r: &Resp) {
        let what = format!("{method} {path} -> {}", r.status);
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{what}: no such operation in the document");
        let resp = self.resolve(&op["responses"][r.status.to_string()]);
        assert!(
            resp.is_object(),
            "{what}: status not in the document: {}",
            r.text
        );
        if let Some(headers) = resp["headers"].as_object() {
            for (name, h) in headers {
                if h["required"] == true {
                    assert!(r.header(name).is_some(), "{what}: no {name} header");
                }
            }
        }
        let content = resp["content"].as_object().expect("content");
        let ctype = r.header("content-type").unwrap_or("");
        let media = content
            .get(ctype)
            .unwrap_or_else(|| panic!("{what}: content type {ctype:?} not documented"));
        if ctype == "application/json" {
            let body: Value = serde_json::from_str(&r.text)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.text));
            let schema = media["schema"].clone();
            self.validate(&schema, &body, &what);
        } else {
            assert!(!r.text.is_empty(), "{what}: empty body");
        }
        self.seen
            .insert((method.to_string(), path.to_string(), r.status));
    }

    /// A wrong method on a documented path: 405, `Allow` naming exactly
    /// the documented methods, the error envelope.
    fn check_wrong_method(&self, path: &str, r: &Resp) {
        let allowed = self.methods(path);
        assert_eq!(r.status, 405, "{path}: {}", r.text);
        let allow: BTreeSet<String> = r
            .header("allow")
            .unwrap_or("")
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        assert_eq!(allow, allowed, "{path}: Allow header");
        let schema = self.doc["components"]["responses"]["MethodNotAllowed"]["content"]
            ["application/json"]["schema"]
            .clone();
        self.validate(&schema, &r.json(), &format!("405 on {path}"));
    }
}

fn call(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Resp {
    request(method, &s.url(path), body, headers)
}

fn submit_raw(s: &Server, body: &[u8], headers: &[(&str, &str)]) -> Resp {
    call(s, "POST", "/api/v1/tasks", Some(body), headers)
}

/// One HTTP/1.1 exchange over a fresh connection, for requests the HTTP
/// client will not send.
fn raw_request(port: u16, req: &[u8]) -> Resp {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(T)).expect("timeout");
    c.write_all(req).expect("send");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete answer");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        text: body.to_string(),
    }
}

const JSON_CT: (&str, &str) = ("content-type", "application/json");

#[test]
fn the_served_document_is_docs_openapi_json() {
    let s = Server::start();
    let r = s.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text,
        document_text(),
        "served document differs from docs/openapi.json"
    );
    let mut spec = Spec::load();
    spec.check("GET", "/api/v1/openapi.json", &r);
    assert_eq!(spec.doc["openapi"], "3.1.0");
}

/// Both directions: every documented (method, path) is routed, and every
/// other method on a documented path answers 405 naming the documented
/// ones; a path outside the document answers 404.
#[test]
fn the_router_answers_exactly_the_documented_routes() {
    let s = Server::start();
    let id = s.submit(&json!({"execution": {"kind": "command", "program": "/bin/true"}}));
    s.wait_terminal(&id, T);
    let spec = Spec::load();
    for path in spec.paths() {
        let concrete = path.replace("{id}", &id).replace("{name}", "stdout");
        let documented = spec.methods(&path);
        for m in METHODS {
            let r = call(&s, m, &concrete, Some(b"{}"), &[JSON_CT]);
            if documented.contains(m) {
                assert_ne!(r.status, 405, "{m} {path}: {}", r.text);
                let unrouted = r.status == 404
                    && r.json()["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("not found: no route for"));
                assert!(
                    !unrouted,
                    "{m} {path} is documented but not routed: {}",
                    r.text
                );
            } else {
                spec.check_wrong_method(&path, &r);
            }
        }
    }
    for p in [
        "/api/v1/nope",
        "/api/v2/tasks",
        "/api/v1/tasks/x/y/z",
        "/openapi.json",
    ] {
        let r = s.get(p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.code(), "not_found");
        spec.validate(&json!({"$ref": "#/components/schemas/Error"}), &r.json(), p);
    }
}

/// Every operation driven with good and bad input; every answer is
/// checked against the document, and every documented operation must
/// have been seen answering 200.
#[test]
fn every_answer_matches_the_document() {
    let s = Server::builder()
        .args([
            "--max-running-tasks",
            "2",
            "--max-queued-tasks",
            "4",
            "--capacity-memory-bytes",
            "1073741824",
            "--tenant-quota",
            "team=slots:2,memory:536870912",
            "--termination-grace-ms",
            "500",
        ])
        .start();
    let mut spec = Spec::load();
    let c = |spec: &mut Spec,
             m: &str,
             tpl: &str,
             path: &str,
             body: Option<&[u8]>,
             h: &[(&str, &str)]| {
        let r = call(&s, m, path, body, h);
        spec.check(m, tpl, &r);
        r
    };

    // Views, before any task.
    for p in [
        "/healthz",
        "/readyz",
        "/api/v1/runtime/info",
        "/api/v1/runtime/capabilities",
        "/api/v1/runtime/config",
        "/api/v1/runtime/resources",
        "/api/v1/openapi.json",
        "/metrics",
    ] {
        let r = c(&mut spec, "GET", p, p, None, &[]);
        assert_eq!(r.status, 200, "{p}: {}", r.text);
    }

    // Tasks that end every way.
    let tasks = [
        json!({"task_id": "ok", "execution": {"kind": "command", "program": "/bin/echo", "args": ["hi"]},
               "metadata": {"k": "v"}}),
        json!({"task_id": "script", "execution": {"kind": "script",
               "script": "echo out; echo err >&2; exit 3"}, "limits": {"stdout_max_bytes": 2}}),
        json!({"task_id": "interp", "execution": {"kind": "script", "interpreter": ["/bin/sh", "-e"],
               "script": "echo from a file", "env": {"A": "b"}},
               "sandbox": {"workspace_subdir": "w/x"}, "policy": {"capability_mode": "adaptive"}}),
        json!({"task_id": "nolaunch", "execution": {"kind": "command", "program": "/nonexistent/program"}}),
        json!({"task_id": "slow", "execution": {"kind": "command", "program": "/bin/sleep", "args": ["10"]},
               "limits": {"wall_time_ms": 200, "cpu_time_sec": 5}}),
        json!({"task_id": "warned", "execution": {"kind": "command", "program": "/bin/true"},
               "limits": {"pids_max": 50, "cpu_millis": 500, "memory_bytes": 268435456},
               "sandbox": {"profile": "linux_sandbox", "namespaces": {"net": true}, "rootfs": "/nope"},
               "control_context": {"tenant": "team", "labels": {"l": "1"}, "control_plane_mode": "m",
                                   "expected_runtime_profile": "p", "requires_resource_reservation": true}}),
    ];
    for t in &tasks {
        // One at a time, so the short queue does not fill up.
        let id = t["task_id"].as_str().unwrap();
        let r = c(
            &mut spec,
            "POST",
            "/api/v1/tasks",
            "/api/v1/tasks",
            Some(&serde_json::to_vec(t).unwrap()),
            &[JSON_CT],
        );
        assert_eq!(r.status, 200, "{t}: {}", r.text);
        s.wait_for(id, T, |v| v["status"] != "accepted");
    }
    for t in &tasks {
        let id = t["task_id"].as_str().unwrap();
        s.wait_terminal(id, T);
        let p = format!("/api/v1/tasks/{id}");
        c(&mut spec, "GET", "/api/v1/tasks/{id}", &p, None, &[]);
        c(
            &mut spec,
            "GET",
            "/api/v1/tasks/{id}/events",
            &format!("{p}/events"),
            None,
            &[],
        );
        // A kill of a terminal task answers its status.
        let r = c(
            &mut spec,
            "POST",
            "/api/v1/tasks/{id}/kill",
            &format!("{p}/kill"),
            Some(b""),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let st = s.status("slow");
    assert_eq!(st["error"]["code"], "timeout", "{st}");

    // A running task with an owner, a tenant and a reservation.
    let r = c(&mut spec, "POST", "/api/v1/tasks", "/api/v1/tasks", Some(&serde_json::to_vec(&json!({
        "task_id": "owned", "execution": {"kind": "command", "program": "/bin/sleep", "args": ["30"]},
        "limits": {"memory_bytes": 268435456},
        "control_context": {"owner": "alice", "tenant": "team"}})).unwrap()), &[JSON_CT]);
    assert_eq!(r.status, 200, "{}", r.text);
    s.wait_status("owned", "running", T);
    c(
        &mut spec,
        "GET",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/owned",
        None,
        &[],
    );
    let r = c(
        &mut spec,
        "GET",
        "/api/v1/runtime/resources",
        "/api/v1/runtime/resources",
        None,
        &[],
    );
    assert_eq!(
        r.json()["active_reservations"][0]["task_id"],
        "owned",
        "{}",
        r.text
    );
    c(&mut spec, "GET", "/metrics", "/metrics", None, &[]);
    let kill = "/api/v1/tasks/owned/kill";
    let r = c(
        &mut spec,
        "POST",
        "/api/v1/tasks/{id}/kill",
        kill,
        None,
        &[],
    );
    assert_eq!(r.status, 403);
    let r = c(
        &mut spec,
        "POST",
        "/api/v1/tasks/{id}/kill",
        kill,
        None,
        &[("x-execgo-owner", "bob")],
    );
    assert_eq!(r.status, 403);
    // A header value that is not visible ASCII (Latin-1 bytes, which the
    // HTTP client refuses to send): sent by hand.
    let r = raw_request(
        s.port,
        b"POST /api/v1/tasks/owned/kill HTTP/1.1\r\nhost: x\r\nx-execgo-owner: al\xe9\r\n\
          content-length: 0\r\nconnection: close\r\n\r\n",
    );
    spec.check("POST", "/api/v1/tasks/{id}/kill", &r);
    assert_eq!(r.status, 400, "{}", r.text);
    let r = c(
        &mut spec,
        "POST",
        "/api/v1/tasks/{id}/kill",
        kill,
        None,
        &[("x-execgo-owner", "alice")],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    s.wait_terminal("owned", T);
    c(
        &mut spec,
        "GET",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/owned",
        None,
        &[],
    );
    c(
        &mut spec,
        "GET",
        "/api/v1/tasks/{id}/events",
        "/api/v1/tasks/owned/events",
        None,
        &[],
    );

    // Bad submits: each answers a documented error.
    let too_big = format!(
        r#"{{"execution":{{"kind":"command","program":"/bin/true"}},"metadata":{{"pad":"{}"}}}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    let bad: Vec<(Vec<u8>, u16)> = vec![
        (b"{".to_vec(), 400),
        (b"null".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (b"".to_vec(), 400),
        (br#"{"execution": {"kind": "command"}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "daemon", "program": "x"}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": 5}}"#.to_vec(), 400),
        (br#"{"task_id": "a/b", "execution": {"kind": "command", "program": "x"}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": -1}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": 1.5}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": 99999999999999999999999}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": "x\u0000"}}"#.to_vec(), 400),
        (br#"{"execution": {"kind": "command", "program": "\ud800"}}"#.to_vec(), 400),
        // strict, and a sandbox no host here gives: a rootfs outside every
        // --rootfs-dir (invalid_input), or no linux_sandbox at all
        // (unsupported_capability)
        (br#"{"execution": {"kind": "command", "program": "x"}, "sandbox": {"profile": "linux_sandbox", "rootfs": "/nope", "chroot": true}, "policy": {"capability_mode": "strict"}}"#.to_vec(), 400),
        // more memory than the runtime has
        (br#"{"execution": {"kind": "command", "program": "x"}, "limits": {"memory_bytes": 2147483648}}"#.to_vec(), 400),
        // more than the tenant's quota
        (br#"{"execution": {"kind": "command", "program": "x"}, "limits": {"memory_bytes": 805306368}, "control_context": {"tenant": "team"}}"#.to_vec(), 400),
        (br#"{"task_id": "ok", "execution": {"kind": "command", "program": "/bin/true"}}"#.to_vec(), 409),
        (too_big.into_bytes(), 413),
    ];
    for (body, want) in &bad {
        for h in [&[JSON_CT][..], &[][..]] {
            let r = submit_raw(&s, body, h);
            spec.check("POST", "/api/v1/tasks", &r);
            assert_eq!(
                r.status,
                *want,
                "{}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]),
                r.text
            );
        }
    }

    // Unknown ids, including ones no task can have.
    for id in ["nope", "a%20b", "..%2F..", "%00", &"x".repeat(200)] {
        for (m, tpl, suffix) in [
            ("GET", "/api/v1/tasks/{id}", ""),
            ("GET", "/api/v1/tasks/{id}/events", "/events"),
            ("POST", "/api/v1/tasks/{id}/kill", "/kill"),
        ] {
            let r = c(
                &mut spec,
                m,
                tpl,
                &format!("/api/v1/tasks/{id}{suffix}"),
                None,
                &[],
            );
            assert_eq!(r.status, 404, "{m} {id}{suffix}: {}", r.text);
        }
    }

    // A full queue: two running, four waiting, the next is refused.
    for i in 0..2 {
        s.submit(
            &json!({"task_id": format!("run{i}"), "execution": {"kind": "command",
            "program": "/bin/sleep", "args": ["30"]}}),
        );
        s.wait_status(&format!("run{i}"), "running", T);
    }
    for i in 0..4 {
        s.submit(
            &json!({"task_id": format!("wait{i}"), "execution": {"kind": "command",
            "program": "/bin/true"}}),
        );
    }
    let r = c(
        &mut spec,
        "POST",
        "/api/v1/tasks",
        "/api/v1/tasks",
        Some(br#"{"execution": {"kind": "command", "program": "/bin/true"}}"#),
        &[JSON_CT],
    );
    assert_eq!(r.status, 429, "{}", r.text);
    let r = c(
        &mut spec,
        "GET",
        "/api/v1/runtime/resources",
        "/api/v1/runtime/resources",
        None,
        &[],
    );
    assert_eq!(r.json()["accepted_waiting_tasks"], 4, "{}", r.text);
    c(
        &mut spec,
        "GET",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/wait0",
        None,
        &[],
    );
    // Killing an accepted task cancels it at once.
    c(
        &mut spec,
        "POST",
        "/api/v1/tasks/{id}/kill",
        "/api/v1/tasks/wait1/kill",
        None,
        &[],
    );
    for i in 0..2 {
        assert_eq!(s.kill(&format!("run{i}"), None).status, 200);
    }
    s.wait_terminal("wait0", T);
    c(
        &mut spec,
        "GET",
        "/api/v1/tasks/{id}/events",
        "/api/v1/tasks/wait1/events",
        None,
        &[],
    );
    c(
        &mut spec,
        "GET",
        "/api/v1/runtime/capabilities",
        "/api/v1/runtime/capabilities",
        None,
        &[],
    );

    // Listing, event streams and logs.
    for q in [
        "",
        "?status=success,failed&limit=2",
        "?tenant=team&label=l:1",
        "?created_after=2020-01-01T00:00:00Z&owner=nobody",
    ] {
        let r = c(
            &mut spec,
            "GET",
            "/api/v1/tasks",
            &format!("/api/v1/tasks{q}"),
            None,
            &[],
        );
        assert_eq!(r.status, 200, "{q}: {}", r.text);
    }
    let first = c(
        &mut spec,
        "GET",
        "/api/v1/tasks",
        "/api/v1/tasks?limit=1",
        None,
        &[],
    );
    let cursor = first.json()["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let next = format!("/api/v1/tasks?limit=1&cursor={cursor}");
    assert_eq!(
        c(&mut spec, "GET", "/api/v1/tasks", &next, None, &[]).status,
        200
    );
    for bad in ["?limit=0", "?status=done", "?cursor=zz", "?nope=1"] {
        let r = c(
            &mut spec,
            "GET",
            "/api/v1/tasks",
            &format!("/api/v1/tasks{bad}"),
            None,
            &[],
        );
        assert_eq!(r.status, 400, "{bad}");
    }
    let ev = "/api/v1/tasks/{id}/events";
    let r = c(
        &mut spec,
        "GET",
        ev,
        "/api/v1/tasks/ok/events?follow=true",
        None,
        &[],
    );
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let r = c(
        &mut spec,
        "GET",
        ev,
        "/api/v1/tasks/ok/events?follow=true",
        None,
        &[("last-event-id", "2")],
    );
    assert_eq!(r.status, 200);
    let r = c(
        &mut spec,
        "GET",
        ev,
        "/api/v1/tasks/ok/events?follow=true",
        None,
        &[("last-event-id", "x")],
    );
    assert_eq!(r.status, 400);
    let lg = "/api/v1/tasks/{id}/logs/{name}";
    let r = c(
        &mut spec,
        "GET",
        lg,
        "/api/v1/tasks/ok/logs/stdout",
        None,
        &[],
    );
    assert_eq!((r.status, r.text.as_str()), (200, "hi\n"));
    let r = c(
        &mut spec,
        "GET",
        lg,
        "/api/v1/tasks/ok/logs/stdout?follow=true&offset=1",
        None,
        &[],
    );
    assert_eq!((r.status, r.text.as_str()), (200, "i\n"));
    let r = c(
        &mut spec,
        "GET",
        lg,
        "/api/v1/tasks/ok/logs/stdout",
        None,
        &[("range", "bytes=0-0")],
    );
    assert_eq!((r.status, r.text.as_str()), (206, "h"));
    let r = c(
        &mut spec,
        "GET",
        lg,
        "/api/v1/tasks/ok/logs/stdout",
        None,
        &[("range", "bytes=9-")],
    );
    assert_eq!(r.status, 416);
    for (path, status) in [
        ("/api/v1/tasks/ok/logs/stdout?offset=-1", 400),
        ("/api/v1/tasks/ok/logs/journal", 404),
        ("/api/v1/tasks/gone/logs/stderr", 404),
    ] {
        assert_eq!(
            c(&mut spec, "GET", lg, path, None, &[]).status,
            status,
            "{path}"
        );
    }

    // Every documented operation was seen answering 200.
    let mut missing = BTreeMap::new();
    for path in spec.paths() {
        for m in spec.methods(&path) {
            if !spec.seen.contains(&(m.clone(), path.clone(), 200)) {
                missing.insert(path.clone(), m);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "operations never exercised: {missing:?}"
    );
}

/// A runtime whose helper cannot be reached: `/readyz` answers 503
/// `not_ready`, the capabilities say nothing was probed, and a submitted
/// task stays `accepted` (its launch in flight); each answer as the
/// document says.
#[test]
fn answers_without_a_helper_match_the_document() {
    let tmp = tempdir();
    let sock = tmp.path().join("no-helper.sock");
    let s = Server::builder()
        .arg("--helper-socket")
        .arg(sock.to_string_lossy().to_string())
        .start();
    let mut spec = Spec::load();
    let r = s.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.code(), "not_ready");
    spec.check("GET", "/readyz", &r);
    let r = s.get("/api/v1/runtime/capabilities");
    spec.check("GET", "/api/v1/runtime/capabilities", &r);
    assert!(r.text.contains("helper: not reached yet"), "{}", r.text);
    let id = s.submit(&json!({"execution": {"kind": "command", "program": "/bin/true"}}));
    for p in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/events"),
    ] {
        let tpl = p.replace(&id, "{id}");
        let r = s.get(&p);
        assert_eq!(r.status, 200, "{}", r.text);
        spec.check("GET", &tpl, &r);
    }
    let r = s.get("/api/v1/runtime/resources");
    spec.check("GET", "/api/v1/runtime/resources", &r);
    let r = s.get("/metrics");
    spec.check("GET", "/metrics", &r);
}
