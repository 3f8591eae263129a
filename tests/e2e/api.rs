//! Every route's happy path and every error code a client can reach,
//! through the real runtime and helper.

use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn health_and_readiness() {
    let s = Server::start();
    let h = s.get("/healthz");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert!(h.json()["version"].is_string());
    let r = s.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "ready");
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

#[test]
fn submit_status_events_happy_path() {
    let s = Server::start();
    let r = s.post(
        "/api/v1/tasks",
        &json!({"task_id": "hello-1", "execution": {"kind": "command", "program": "/bin/echo",
                "args": ["hi"]}, "metadata": {"k": "v"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    assert_eq!(
        body,
        json!({"task_id": "hello-1", "handle_id": "hello-1", "status": "accepted"})
    );
    let st = s.wait_terminal("hello-1", T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "hi\n");
    assert_eq!(st["exit_code"], 0);
    assert_eq!(st["handle_id"], "hello-1");
    assert_eq!(st["metadata"], json!({"k": "v"}));
    assert!(st.get("error").is_none());
    assert!(st["duration_ms"].is_u64(), "{st}");
    assert!(st["started_at"].is_string() && st["finished_at"].is_string());
    assert!(st["usage"]["duration_ms"].is_u64());
    assert_eq!(st["reservation"], json!({"task_slots": 1}));
    let plan = &st["execution_plan"];
    assert_eq!(plan["capability_mode"], "adaptive");
    assert_eq!(plan["degraded"], false);
    assert_eq!(plan["effective_sandbox"]["profile"], "process");
    assert!(plan.get("fallback_reasons").is_none());
    let a = &st["artifacts"];
    let dir = s.task_dir("hello-1");
    assert_eq!(a["task_dir"], dir.to_string_lossy().as_ref());
    assert!(a.get("script_path").is_none());
    for key in ["request_path", "result_path", "stdout_path", "stderr_path"] {
        assert!(
            std::path::Path::new(a[key].as_str().unwrap()).exists(),
            "{key}"
        );
    }
    // result.json holds the terminal status body.
    let result: Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "success");
    assert_eq!(result["task_id"], "hello-1");
    assert_eq!(result["stdout"], "hi\n");
    // Events: contract order, both vocabularies.
    let ev = s.events("hello-1");
    let types: Vec<&str> = ev
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "submitted",
            "accepted",
            "planned",
            "resource_reserved",
            "started",
            "resource_released",
            "finished"
        ]
    );
    let client: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        client,
        [
            "task_submitted",
            "task_accepted",
            "task_progressed",
            "task_progressed",
            "task_started",
            "task_progressed",
            "task_succeeded"
        ]
    );
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"], (i + 1) as u64);
        assert_eq!(e["task_id"], "hello-1");
        assert_eq!(e["handle_id"], "hello-1");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn generated_ids_are_uuids() {
    let s = Server::start();
    let id = s.submit(&command("/bin/true", &[]));
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(s.wait_terminal(&id, T)["status"], "success");
}

#[test]
fn invalid_input_cases() {
    let s = Server::start();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "execution"),
        (
            json!({"execution": {"kind": "command"}}),
            "execution.program must not be blank",
        ),
        (
            json!({"execution": {"kind": "shell", "program": "x"}}),
            "unknown variant",
        ),
        (
            json!({"execution": {"kind": "command", "program": 5}}),
            "invalid type",
        ),
        (
            json!({"execution": {"kind": "script", "script": " "}}),
            "script must not be blank",
        ),
        (
            json!({"task_id": "a/b", "execution": {"kind": "command", "program": "x"}}),
            "task_id",
        ),
        (
            json!({"task_id": "..", "execution": {"kind": "command", "program": "x"}}),
            "task_id",
        ),
        (
            json!({"task_id": "x".repeat(129), "execution": {"kind": "command", "program": "x"}}),
            "task_id",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": 0}}),
            "wall_time_ms",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": -1}}),
            "invalid value",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": 1.5}}),
            "invalid type",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x", "env": {"A=B": "1"}}}),
            "'='",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "sandbox": {"workspace_subdir": "/abs"}}),
            "workspace_subdir",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "sandbox": {"profile": "vm"}}),
            "unknown variant",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "control_context": {"tenant": ""}}),
            "control_context.tenant",
        ),
        (
            json!({"execution": {"kind": "command", "program": "x"}, "policy": {"capability_mode": "lenient"}}),
            "unknown variant",
        ),
    ];
    for (body, needle) in cases {
        let r = s.post("/api/v1/tasks", &body);
        assert_eq!(r.status, 400, "{body} -> {}", r.text);
        assert_eq!(r.code(), "invalid_input", "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with("invalid input: "), "{msg}");
        assert!(msg.contains(needle), "{body}: {msg} lacks {needle}");
    }
    // Malformed JSON and no content type.
    let r = request("POST", &s.url("/api/v1/tasks"), Some(b"{nope"), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "invalid_input");
    // Nothing was stored for any of them.
    let tasks = std::fs::read_dir(s.data_dir.join("tasks")).unwrap().count();
    assert_eq!(tasks, 0, "a rejected submit left a task directory");
}

#[test]
fn unknown_fields_are_ignored_and_no_content_type_is_json() {
    let s = Server::start();
    let body = br#"{"execution":{"kind":"command","program":"/bin/true","extra":1},"future_field":{"x":1}}"#;
    let r = request("POST", &s.url("/api/v1/tasks"), Some(body), &[]);
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn capability_errors() {
    // linux_sandbox switched off, so that it is missing on every host.
    let s = Server::builder()
        .args([
            "--capacity-memory-bytes",
            "1048576",
            "--disable-linux-sandbox",
        ])
        .start();
    let strict = json!({"execution": {"kind": "command", "program": "/bin/true"},
        "sandbox": {"profile": "linux_sandbox"}, "policy": {"capability_mode": "strict"}});
    let r = s.post("/api/v1/tasks", &strict);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "unsupported_capability");
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "sandbox": {"profile": "linux_sandbox"},
            "control_context": {"requires_strict_sandbox": true}}),
    );
    assert_eq!(r.code(), "unsupported_capability");
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"memory_bytes": 2097152}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "insufficient_resources");
    // Adaptive linux_sandbox runs degraded, and says why.
    let id = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
        "sandbox": {"profile": "linux_sandbox", "workspace_subdir": "w"}}),
    );
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let plan = &st["execution_plan"];
    assert_eq!(plan["degraded"], true);
    assert_eq!(plan["requested_sandbox"]["profile"], "linux_sandbox");
    assert_eq!(plan["effective_sandbox"]["profile"], "process");
    assert!(!plan["fallback_reasons"].as_array().unwrap().is_empty());
    assert!(s.event_types(&id).contains(&"degraded".to_string()));
}

#[test]
fn strict_default_mode_from_env() {
    let s = Server::builder()
        .env("EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE", "strict")
        .arg("--disable-linux-sandbox")
        .start();
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "sandbox": {"profile": "linux_sandbox"}}),
    );
    assert_eq!(r.code(), "unsupported_capability");
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "sandbox": {"profile": "linux_sandbox"}, "policy": {"capability_mode": "adaptive"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

#[test]
fn not_found_conflict_and_method_errors() {
    let s = Server::start();
    let r = s.get("/api/v1/tasks/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
    assert_eq!(r.json()["error"]["message"], "task not found: nope");
    assert_eq!(s.get("/api/v1/tasks/nope/events").status, 404);
    assert_eq!(s.kill("nope", None).status, 404);
    let r = s.get("/api/v2/whatever");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
    let r = request("DELETE", &s.url("/api/v1/tasks/x"), None, &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert!(r.json()["error"]["code"].is_string());
    let r = request("GET", &s.url("/api/v1/tasks/x/kill"), None, &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    // GET lists tasks (issue "Beyond the contract"); other methods are 405.
    let r = request("PUT", &s.url("/api/v1/tasks"), None, &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let body = json!({"task_id": "dup", "execution": {"kind": "command", "program": "/bin/true"}});
    assert_eq!(s.post("/api/v1/tasks", &body).status, 200);
    let r = s.post("/api/v1/tasks", &body);
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "conflict");
    // The duplicate did not run twice.
    s.wait_terminal("dup", T);
    let starts = s
        .event_types("dup")
        .iter()
        .filter(|t| *t == "started")
        .count();
    assert_eq!(starts, 1);
}

#[test]
fn oversized_body_is_413() {
    let s = Server::start();
    let big = format!(
        r#"{{"execution":{{"kind":"command","program":"/bin/true"}},"metadata":{{"pad":"{}"}}}}"#,
        "x".repeat(1024 * 1024 + 10)
    );
    let r = request(
        "POST",
        &s.url("/api/v1/tasks"),
        Some(big.as_bytes()),
        &[("content-type", "application/json")],
    );
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.code(), "invalid_input");
}

#[test]
fn queue_full_is_429_even_for_a_duplicate_id() {
    let s = Server::builder()
        .args(["--max-running-tasks", "1", "--max-queued-tasks", "2"])
        .start();
    let runner = s.submit(
        &json!({"task_id": "runner", "execution": {"kind": "command",
        "program": "/bin/sleep", "args": ["30"]}}),
    );
    s.wait_status(&runner, "running", T);
    s.submit(&json!({"task_id": "q1", "execution": {"kind": "command", "program": "/bin/true"}}));
    s.submit(&json!({"task_id": "q2", "execution": {"kind": "command", "program": "/bin/true"}}));
    let r = s.post("/api/v1/tasks", &command("/bin/true", &[]));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.code(), "resource_limit_exceeded");
    assert_eq!(r.json()["error"]["message"], "queue is full");
    let r = s.post(
        "/api/v1/tasks",
        &json!({"task_id": "q1", "execution": {"kind": "command", "program": "/bin/true"}}),
    );
    assert_eq!(
        r.status, 429,
        "duplicate on a full queue must be 429: {}",
        r.text
    );
    assert_eq!(s.status("q1")["status"], "accepted");
    assert_eq!(s.kill(&runner, None).status, 200);
    assert_eq!(s.wait_terminal("q2", T)["status"], "success");
}

#[test]
fn owner_gated_kill() {
    let s = Server::start();
    let id = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/sleep",
        "args": ["30"]}, "control_context": {"owner": "alice", "tenant": "t"}}),
    );
    s.wait_status(&id, "running", T);
    let r = s.kill(&id, None);
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "permission_denied");
    assert_eq!(
        r.json()["error"]["message"],
        "permission denied: kill requires owner 'alice'"
    );
    assert_eq!(s.kill(&id, Some("bob")).status, 403);
    assert_eq!(s.status(&id)["status"], "running");
    let r = s.kill(&id, Some("alice"));
    assert_eq!(r.status, 200, "{}", r.text);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "cancelled");
    assert_eq!(st["error"]["code"], "cancelled");
}

#[test]
fn runtime_info_and_config() {
    let s = Server::builder()
        .args(["--max-running-tasks", "3", "--disable-cgroup"])
        .env("HOSTNAME", "node-a")
        .start();
    let info = s.get("/api/v1/runtime/info");
    assert_eq!(info.status, 200);
    let info = info.json();
    let expected_id = format!("node-a-127.0.0.1-{}", s.port);
    assert_eq!(info["runtime_id"], expected_id.as_str());
    assert_eq!(info["snapshot_version"], "v1");
    assert_eq!(info["platform"]["os"], "linux");
    assert!(info["platform"]["containerized"].is_boolean());
    assert!(info["platform"]["kubernetes"].is_boolean());
    assert!(info["started_at"].as_str().unwrap().ends_with('Z'));
    let cfg = s.get("/api/v1/runtime/config").json();
    assert_eq!(cfg["runtime_id"], expected_id.as_str());
    assert_eq!(cfg["listen_addr"], format!("127.0.0.1:{}", s.port).as_str());
    assert_eq!(cfg["max_running_tasks"], 3);
    assert_eq!(cfg["max_queued_tasks"], 128);
    assert_eq!(cfg["termination_grace_ms"], 5000);
    assert_eq!(cfg["result_retention_secs"], 604800);
    assert_eq!(cfg["gc_interval_ms"], 1000);
    assert_eq!(cfg["dispatch_poll_interval_ms"], 250);
    assert_eq!(cfg["cgroup_root"], "/sys/fs/cgroup/execgo-runtime");
    assert_eq!(cfg["default_capability_mode"], "adaptive");
    assert_eq!(cfg["cgroup_enabled"], false);
    let id = Server::builder()
        .env("EXECGO_RUNTIME_ID", "custom-id")
        .start();
    assert_eq!(
        id.get("/api/v1/runtime/info").json()["runtime_id"],
        "custom-id"
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[test]
fn metrics_change_as_tasks_run() {
    let s = Server::start();
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert_eq!(
        metric(&r.text, "execgo_runtime_tasks_total{status=\"success\"}"),
        0.0
    );
    let ok = s.submit(&command("/bin/true", &[]));
    let bad = s.submit(&command("/bin/false", &[]));
    s.wait_terminal(&ok, T);
    s.wait_terminal(&bad, T);
    let long = s.submit(&command("/bin/sleep", &["30"]));
    s.wait_status(&long, "running", T);
    let text = s.get("/metrics").text;
    assert_eq!(
        metric(&text, "execgo_runtime_tasks_total{status=\"accepted\"}"),
        3.0
    );
    assert_eq!(
        metric(&text, "execgo_runtime_tasks_total{status=\"success\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "execgo_runtime_tasks_total{status=\"failed\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "execgo_runtime_task_errors_total{code=\"exit_nonzero\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "execgo_runtime_tasks_running"), 1.0);
    assert_eq!(
        metric(&text, "execgo_runtime_task_duration_seconds_count"),
        2.0
    );
    assert_eq!(metric(&text, "execgo_runtime_helper_up"), 1.0);
    assert_eq!(
        metric(&text, "execgo_runtime_reserved{resource=\"task_slots\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "execgo_runtime_capacity{resource=\"task_slots\"}"),
        4.0
    );
    s.kill(&long, None);
    s.wait_terminal(&long, T);
    let text = s.get("/metrics").text;
    assert_eq!(metric(&text, "execgo_runtime_tasks_running"), 0.0);
    assert_eq!(
        metric(&text, "execgo_runtime_tasks_total{status=\"cancelled\"}"),
        1.0
    );
}

#[test]
fn concurrent_submits_of_one_id_accept_exactly_one() {
    // Submits arriving together share a commit; each still sees the
    // others' rows, so one id is accepted once and runs once.
    let s = Server::start();
    let tmp = tempdir();
    let ledger = tmp.path().join("ran");
    task_writable_file(&ledger);
    let body = json!({"task_id": "same", "execution": {"kind": "command",
        "program": "/bin/sh", "args": ["-c", format!("echo x >> {}", ledger.display())]}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let url = s.url("/api/v1/tasks");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| try_request("POST", &url, Some(&bytes), &[]).unwrap().status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(s.wait_terminal("same", T)["status"], "success");
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "x\n");
    // Distinct ids arriving together are all accepted and all run.
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    s.submit(&json!({"task_id": format!("many-{i}"),
                        "execution": {"kind": "command", "program": "/bin/true"}}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        assert_eq!(s.wait_terminal(id, T)["status"], "success");
    }
}
