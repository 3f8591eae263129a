//! Read-only runtime views: `/api/v1/runtime/info`, `/config` and
//! `/resources`.

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
    json!({
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
        "default_capability_mode": crate::api::model::CapabilityMode::from(a.default_capability_mode),
        "cgroup_enabled": !a.disable_cgroup,
    })
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
