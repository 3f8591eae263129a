//! The resource ledger through the API: capacity, reservations taken at
//! dispatch and released at every terminal state, tenant quotas, and the
//! `/api/v1/runtime/resources` view.

use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

fn tenant_task(tenant: &str, program: &str, args: &[&str]) -> Value {
    json!({"execution": {"kind": "command", "program": program, "args": args},
        "control_context": {"tenant": tenant}})
}

#[test]
fn resources_view_defaults_and_overrides() {
    let s = Server::builder()
        .args([
            "--max-running-tasks",
            "3",
            "--tenant-quota",
            "alice=slots:2,memory:2048,pids:64",
        ])
        .start();
    let v = s.get("/api/v1/runtime/resources").json();
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(v["capacity"]["task_slots"], 3);
    assert_eq!(v["capacity"]["pids"], pid_max);
    assert!(v["capacity"]["memory_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(
        v["reserved"],
        json!({"task_slots": 0, "memory_bytes": 0, "pids": 0})
    );
    assert_eq!(v["available"], v["capacity"]);
    assert_eq!(v["active_reservations"], json!([]));
    assert_eq!(v["accepted_waiting_tasks"], 0);
    assert_eq!(
        v["tenants"],
        json!([{"tenant": "alice",
            "quota": {"task_slots": 2, "memory_bytes": 2048, "pids": 64},
            "reserved": {"task_slots": 0},
            "available": {"task_slots": 2, "memory_bytes": 2048, "pids": 64}}])
    );
    let s2 = Server::builder()
        .env("EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES", "134217728")
        .args(["--capacity-pids", "500"])
        .start();
    let v = s2.get("/api/v1/runtime/resources").json();
    assert_eq!(v["capacity"]["memory_bytes"], 134217728);
    assert_eq!(v["capacity"]["pids"], 500);
}

#[test]
fn reservation_is_held_while_running_and_released_at_the_end() {
    let s = Server::start();
    let id = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/sleep",
        "args": ["30"]}, "limits": {"memory_bytes": 268435456, "pids_max": 32},
        "control_context": {"tenant": "t1"}}),
    );
    s.wait_status(&id, "running", T);
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["reserved"]["task_slots"], 1);
    assert_eq!(v["reserved"]["memory_bytes"], 268435456);
    assert_eq!(v["reserved"]["pids"], 32);
    let active = v["active_reservations"].as_array().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["task_id"], id.as_str());
    assert_eq!(active[0]["status"], "running");
    assert_eq!(
        active[0]["reservation"],
        json!({"task_slots": 1, "memory_bytes": 268435456, "pids": 32})
    );
    assert!(active[0]["reserved_at"].is_string());
    // An unconfigured tenant with a reservation is listed too.
    let t = &v["tenants"][0];
    assert_eq!(t["tenant"], "t1");
    assert_eq!(
        t["reserved"],
        json!({"task_slots": 1, "memory_bytes": 268435456, "pids": 32})
    );
    assert!(t.get("quota").is_none());
    s.kill(&id, None);
    let st = s.wait_terminal(&id, T);
    assert_eq!(
        st["reservation"]["memory_bytes"], 268435456,
        "kept for audit"
    );
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["reserved"]["task_slots"], 0);
    assert_eq!(v["active_reservations"], json!([]));
    assert_eq!(v["tenants"], json!([]));
}

#[test]
fn every_terminal_path_releases() {
    let s = Server::builder()
        .args(["--termination-grace-ms", "200"])
        .start();
    let ok = s.submit(&command("/bin/true", &[]));
    let bad = s.submit(&command("/bin/false", &[]));
    let missing = s.submit(&command("/nonexistent", &[]));
    let timeout = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/sleep",
        "args": ["10"]}, "limits": {"wall_time_ms": 100}}),
    );
    let killed = s.submit(&command("/bin/sleep", &["10"]));
    s.wait_status(&killed, "running", T);
    s.kill(&killed, None);
    for id in [&ok, &bad, &missing, &timeout, &killed] {
        s.wait_terminal(id, T);
        let types = s.event_types(id);
        let reserved = types.iter().position(|t| t == "resource_reserved");
        let released = types.iter().position(|t| t == "resource_released");
        assert!(reserved.is_some() && released > reserved, "{id}: {types:?}");
        assert_eq!(
            types.iter().filter(|t| *t == "resource_released").count(),
            1
        );
    }
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["reserved"]["task_slots"], 0, "{v}");
    assert_eq!(v["active_reservations"], json!([]));
}

#[test]
fn tenant_quota_holds_back_only_that_tenant() {
    let s = Server::builder()
        .args(["--max-running-tasks", "4", "--tenant-quota", "a=slots:1"])
        .start();
    let a1 = s.submit(&tenant_task("a", "/bin/sleep", &["30"]));
    s.wait_status(&a1, "running", T);
    let a2 = s.submit(&tenant_task("a", "/bin/true", &[]));
    let b1 = s.submit(&tenant_task("b", "/bin/true", &[]));
    assert_eq!(s.wait_terminal(&b1, T)["status"], "success");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.status(&a2)["status"],
        "accepted",
        "a2 ran past its tenant's quota"
    );
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["accepted_waiting_tasks"], 1);
    let a = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "a")
        .unwrap();
    assert_eq!(a["reserved"]["task_slots"], 1);
    assert_eq!(a["available"]["task_slots"], 0);
    s.kill(&a1, None);
    assert_eq!(s.wait_terminal(&a2, T)["status"], "success");
}

#[test]
fn never_fitting_reservations_are_insufficient_resources() {
    let s = Server::builder()
        .args([
            "--tenant-quota",
            "a=slots:1,memory:1000,pids:5",
            "--capacity-pids",
            "100",
        ])
        .start();
    for body in [
        json!({"execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"memory_bytes": 1001}, "control_context": {"tenant": "a"}}),
        json!({"execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"pids_max": 6}, "control_context": {"tenant": "a"}}),
        json!({"execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"pids_max": 101}}),
    ] {
        let r = s.post("/api/v1/tasks", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.code(), "insufficient_resources");
    }
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("tasks")).unwrap().count(),
        0
    );
    // The same limits fit another tenant.
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"memory_bytes": 1001}, "control_context": {"tenant": "b"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}
