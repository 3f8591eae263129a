//! `GET /api/v1/runtime/capabilities` agrees with the host: every contract
//! field is there, probed values match what root can do on this machine,
//! and operator overrides are reported and enforced.

use execgo_runtime_tests::*;

fn caps(s: &Server) -> Value {
    let r = s.get("/api/v1/runtime/capabilities");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

#[test]
fn every_contract_field_is_present() {
    let s = Server::start();
    let v = caps(&s);
    for key in [
        "runtime_id",
        "snapshot_version",
        "collected_at",
        "platform",
        "execution",
        "sandbox",
        "storage",
        "resources",
        "stable_semantics",
        "enhanced_semantics",
        "degraded",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["snapshot_version"], "v1");
    for key in ["command", "script", "process_group"] {
        assert!(v["execution"][key].is_boolean(), "execution.{key}");
    }
    for key in ["process", "linux_sandbox", "chroot", "namespaces"] {
        assert!(v["sandbox"].get(key).is_some(), "sandbox.{key}");
    }
    for ns in ["mount", "pid", "uts", "ipc", "net"] {
        assert!(
            v["sandbox"]["namespaces"][ns].is_boolean(),
            "namespaces.{ns}"
        );
    }
    assert_eq!(v["storage"]["data_dir_writable"], true);
    for key in [
        "rlimit_cpu",
        "rlimit_memory",
        "cgroup_v2",
        "cgroup_writable",
        "memory_limit",
        "pids_limit",
        "oom_detection",
        "cpu_quota",
        "ledger",
    ] {
        assert!(v["resources"][key].is_boolean(), "resources.{key}: {v}");
    }
    assert_eq!(v["resources"]["capacity"]["task_slots"], 4);
    assert_eq!(v["resources"]["rlimit_cpu"], true);
    assert_eq!(v["resources"]["rlimit_memory"], true);
    let stable: Vec<&str> = v["stable_semantics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(
        stable,
        [
            "submit",
            "status",
            "events",
            "stdout_stderr",
            "timeout",
            "kill",
            "artifacts",
            "result_persistence",
            "recovery"
        ]
    );
    assert!(v["enhanced_semantics"]
        .as_array()
        .unwrap()
        .contains(&json!("resource_ledger")));
    let warnings = v
        .get("warnings")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    assert_eq!(v["degraded"], warnings > 0);
    assert!(v.get("overrides").is_none(), "no overrides were given: {v}");
}

#[test]
fn probe_agrees_with_this_host_as_root() {
    if !is_root() {
        println!("skipped: the namespace and cgroup expectations are for root");
        return;
    }
    let s = Server::start();
    let v = caps(&s);
    for ns in ["mount", "pid", "uts", "ipc", "net", "user"] {
        assert_eq!(v["sandbox"]["namespaces"][ns], true, "namespace {ns}: {v}");
    }
    assert_eq!(v["sandbox"]["chroot"], true);
    assert_eq!(v["sandbox"]["pivot_root"], true);
    assert_eq!(v["sandbox"]["seccomp"], true);
    // Whatever the layout, a writable hierarchy with a memory controller
    // must be found when one is mounted.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let has_memory_v1 = mountinfo.lines().any(|l| {
        l.contains(" - cgroup ") && l.split(' ').next_back().unwrap_or("").contains("memory")
    });
    let r = &v["resources"];
    if has_memory_v1 {
        assert_eq!(r["cgroup_v1"], true, "{v}");
        assert_eq!(r["cgroup_writable"], true, "{v}");
        assert_eq!(r["memory_limit"], true, "{v}");
        assert_eq!(r["oom_detection"], true, "{v}");
    }
    // The probe cleaned up after itself.
    for ctrl in ["memory", "pids", "cpu"] {
        let root = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("execgo-runtime");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                assert!(
                    !e.file_name().to_string_lossy().starts_with("probe-"),
                    "probe cgroup left behind in {}",
                    root.display()
                );
            }
        }
    }
}

#[test]
fn overrides_are_reported_and_enforced() {
    let s = Server::builder()
        .args([
            "--disable-cgroup",
            "--disable-linux-sandbox",
            "--capacity-memory-bytes",
            "134217728",
            "--capacity-pids",
            "77",
        ])
        .start();
    let v = caps(&s);
    assert_eq!(
        v["overrides"],
        json!({"linux_sandbox": "disabled", "cgroup": "disabled",
            "capacity_memory_bytes": "134217728", "capacity_pids": "77"})
    );
    for key in [
        "cgroup_v2",
        "cgroup_writable",
        "memory_limit",
        "pids_limit",
        "oom_detection",
        "cpu_quota",
    ] {
        assert_eq!(v["resources"][key], false, "{key} with --disable-cgroup");
    }
    assert_eq!(v["sandbox"]["linux_sandbox"], false);
    assert_eq!(v["degraded"], true);
    assert_eq!(v["resources"]["capacity"]["memory_bytes"], 134217728);
    assert_eq!(v["resources"]["capacity"]["pids"], 77);
    let e = v["enhanced_semantics"].as_array().unwrap();
    assert!(!e.contains(&json!("cgroup_memory")) && !e.contains(&json!("linux_sandbox")));
    // Enforced: a strict linux_sandbox task is refused, an adaptive one
    // degrades with the reason.
    let r = s.post(
        "/api/v1/tasks",
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
            "sandbox": {"profile": "linux_sandbox"}, "policy": {"capability_mode": "strict"}}),
    );
    assert_eq!(r.code(), "unsupported_capability");
    let id = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/true"},
        "sandbox": {"profile": "linux_sandbox"}, "limits": {"memory_bytes": 1048576}}),
    );
    let st = s.wait_terminal(&id, std::time::Duration::from_secs(20));
    let plan = &st["execution_plan"];
    assert_eq!(plan["degraded"], true);
    assert_eq!(plan["resource_enforcement"]["cgroup_enforced"], false);
    assert_eq!(
        plan["resource_enforcement"]["memory_enforced"], true,
        "RLIMIT_AS: {plan}"
    );
}
