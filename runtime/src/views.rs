//! Read-only runtime views: `/api/v1/runtime/info`, `/capabilities`,
//! `/config` and `/resources`.

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::engine::Engine;
use crate::store;

pub const SNAPSHOT_VERSION: &str = "v1";

pub fn info(e: &Engine) -> Value {
    json!({
        "runtime_id": e.cfg.runtime_id,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": e.started_at,
        "snapshot_version": SNAPSHOT_VERSION,
        "platform": e.platform,
    })
}

pub fn config(e: &Engine) -> Value {
    let a = &e.cfg.args;
    let mut v = json!({
        "runtime_id": e.cfg.runtime_id,
        "listen_addr": a.listen_addr.to_string(),
        "data_dir": e.cfg.data_dir.to_string_lossy(),
        "max_running_tasks": a.max_running_tasks,
        "max_queued_tasks": a.max_queued_tasks,
        "termination_grace_ms": a.termination_grace_ms,
        "result_retention_secs": a.result_retention_secs,
        "gc_interval_ms": a.gc_interval_ms,
        "dispatch_poll_interval_ms": a.dispatch_poll_interval_ms,
        "cgroup_root": a.cgroup_root.to_string_lossy(),
        "default_capability_mode": crate::model::CapabilityMode::from(a.default_capability_mode),
        "cgroup_enabled": !a.disable_cgroup,
        "opensandbox_tenant": a.opensandbox_tenant,
    });
    if let Some(addr) = a.opensandbox_listen_addr {
        v["opensandbox_listen_addr"] = json!(addr.to_string());
    }
    v
}

pub async fn resources(e: &Engine) -> Result<Value, ApiError> {
    let (active, waiting) = e
        .store
        .call(|conn| -> Result<_, ApiError> {
            Ok((
                store::active_reservations(conn)?,
                store::count_waiting(conn)?,
            ))
        })
        .await?;
    let (capacity, reserved, available, tenants) =
        e.with_ledger(|l| (l.capacity, l.reserved(), l.available(), l.tenants()));
    let active: Vec<Value> = active
        .into_iter()
        .map(|a| {
            let mut v = json!({
                "task_id": a.task_id,
                "status": a.status,
                "reservation": a.reservation,
            });
            if let Some(at) = a.reserved_at {
                v["reserved_at"] = json!(at);
            }
            v
        })
        .collect();
    Ok(json!({
        "runtime_id": e.cfg.runtime_id,
        "capacity": capacity,
        "reserved": reserved,
        "available": available,
        "active_reservations": active,
        "accepted_waiting_tasks": waiting,
        "tenants": tenants,
    }))
}

/// `GET /api/v1/runtime/capabilities`: the helper's probe of the host (every
/// flag tried, not inferred), what tasks are offered on top of it, and the
/// operator's overrides.
pub fn capabilities(e: &Engine) -> Value {
    let probed = e.helper.latest_probe();
    let reached = probed.is_some();
    let (probe, collected_at) =
        probed.unwrap_or_else(|| (crate::helper_link::unreached_probe(), e.started_at.clone()));
    let p = &probe;
    let a = &e.cfg.args;
    let caps = &e.host_caps();
    let cgroup_on = !a.disable_cgroup;
    let mut warnings: Vec<String> = p.warnings.clone();
    if !reached {
        warnings.push(
            "helper: not reached yet; nothing is probed and tasks wait until it answers"
                .to_string(),
        );
    } else if !p.seccomp {
        warnings.push(
            "seccomp: not available; process tasks run without their seccomp filter".to_string(),
        );
    }
    let mut overrides = serde_json::Map::new();
    if a.disable_linux_sandbox {
        overrides.insert("linux_sandbox".into(), json!("disabled"));
    }
    if a.disable_cgroup {
        overrides.insert("cgroup".into(), json!("disabled"));
        warnings.push("cgroup: disabled by --disable-cgroup".to_string());
    }
    if let Some(m) = a.capacity_memory_bytes {
        overrides.insert("capacity_memory_bytes".into(), json!(m.to_string()));
    }
    if let Some(n) = a.capacity_pids {
        overrides.insert("capacity_pids".into(), json!(n.to_string()));
    }
    let capacity = e.with_ledger(|l| l.capacity);
    let mut enhanced = vec!["resource_ledger"];
    if caps.linux_sandbox {
        enhanced.extend(["linux_sandbox", "namespaces"]);
        if !p.rootfs_dirs.is_empty() {
            enhanced.push("chroot");
        }
    }
    if caps.cgroup_memory {
        enhanced.push("cgroup_memory");
    }
    if caps.cgroup_pids {
        enhanced.push("cgroup_pids");
    }
    if caps.oom_detection {
        enhanced.push("oom_detection");
    }
    if caps.task_cgroups {
        enhanced.push("task_cgroups");
    }
    let mut v = json!({
        "runtime_id": e.cfg.runtime_id,
        "snapshot_version": SNAPSHOT_VERSION,
        "collected_at": collected_at,
        "platform": e.platform,
        "execution": {
            "command": true,
            "script": true,
            "process_group": p.process_group,
        },
        "sandbox": {
            "process": true,
            "linux_sandbox": caps.linux_sandbox,
            "chroot": p.chroot,
            "pivot_root": p.pivot_root,
            "seccomp": p.seccomp,
            "task_uid": p.task_uid,
            "task_uid_range": p.task_uid_range.map(|(first, last)| format!("{first}-{last}")),
            "namespaces": {
                "mount": p.namespaces.mount,
                "pid": p.namespaces.pid,
                "uts": p.namespaces.uts,
                "ipc": p.namespaces.ipc,
                "net": p.namespaces.net,
                "user": p.namespaces.user,
            },
        },
        "storage": { "data_dir_writable": p.data_dir_writable },
        "resources": {
            "rlimit_cpu": p.rlimit_cpu,
            "rlimit_memory": p.rlimit_memory,
            "cgroup_version": if cgroup_on { p.cgroup_version.as_str() } else { "none" },
            "cgroup_v2": cgroup_on && p.cgroup_v2,
            "cgroup_v1": cgroup_on && p.cgroup_v1,
            "cgroup_writable": cgroup_on && p.cgroup_writable,
            "memory_limit": cgroup_on && p.memory_limit,
            "pids_limit": cgroup_on && p.pids_limit,
            "oom_detection": cgroup_on && p.oom_detection,
            "cpu_quota": cgroup_on && p.cpu_quota,
            "task_cgroups": caps.task_cgroups,
            "ledger": true,
            "capacity": capacity,
        },
        "stable_semantics": [
            "submit", "status", "events", "stdout_stderr", "timeout", "kill",
            "artifacts", "result_persistence", "recovery"
        ],
        "enhanced_semantics": enhanced,
        "degraded": !warnings.is_empty(),
    });
    if !warnings.is_empty() {
        v["warnings"] = json!(warnings);
    }
    if !overrides.is_empty() {
        v["overrides"] = Value::Object(overrides);
    }
    v
}
