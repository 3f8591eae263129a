//! The task engine: submit, status, kill and events on top of the store,
//! the dispatcher that hands tasks to the helper, the exit watcher, restart
//! recovery and retention GC.

pub mod arrivals;
pub mod dispatch;
pub mod files;
pub mod gc;
pub mod log_cache;
pub mod recovery;
pub mod view;

use std::sync::{Arc, Mutex};

use execgo_runtime_protocol::{TaskError, TaskErrorCode, TaskStatus};
use tokio::sync::Notify;

use crate::api::error::{ApiError, ApiErrorCode};
use crate::api::model::{
    EventRecord, ExecutionKind, SubmitTaskRequest, SubmitTaskResponse, TaskStatusResponse,
};
use crate::api::validate;
use crate::config::Config;
use crate::helper_link::HelperLink;
use crate::ledger::{Amounts, Ledger};
use crate::plan::{self, HostCaps};
use crate::store::{self, NewEvent, Store, StoreError, TaskRow};
use files::TaskDir;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_storage_unavailable() {
            tracing::error!(error = %error_chain(&e), "storage unavailable");
            ApiError::new(ApiErrorCode::StorageUnavailable, error_chain(&e))
        } else {
            tracing::error!(error = %error_chain(&e), "store failure");
            ApiError::internal(error_chain(&e))
        }
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub use execgo_runtime_protocol::taskdir::{now_rfc3339 as now, unix_ms};

/// Environment variables passed from the runtime to every task.
const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "TMPDIR", "USER"];

pub struct Engine {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub helper: Arc<HelperLink>,
    pub caps: HostCaps,
    /// The helper's probe of the host, and when it was taken.
    pub probe: execgo_runtime_protocol::HelperCapabilities,
    pub started_at: String,
    pub platform: crate::platform::Platform,
    pub metrics: crate::metrics::Metrics,
    logs: Arc<log_cache::LogCache>,
    /// Results seen as the shims rename them in; `None` when inotify is
    /// unavailable, and then a shim's exit alone ends its task.
    arrivals: Option<arrivals::Arrivals>,
    wake: Notify,
    /// Capacity, reservations of tasks handed to the helper, tenant quotas.
    pub ledger: Mutex<Ledger>,
    base_env: Vec<(String, String)>,
}

impl Engine {
    pub fn new(
        cfg: Config,
        store: Arc<Store>,
        helper: Arc<HelperLink>,
        caps: HostCaps,
        probe: execgo_runtime_protocol::HelperCapabilities,
    ) -> Self {
        let capacity = Amounts {
            task_slots: cfg.args.max_running_tasks,
            memory_bytes: cfg.args.capacity_memory_bytes.or_else(physical_memory),
            pids: cfg.args.capacity_pids.or_else(pid_max),
        };
        let ledger = Mutex::new(Ledger::new(capacity, &cfg.args.tenant_quota));
        let base_env = INHERITED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        Engine {
            cfg,
            store,
            helper,
            caps,
            probe,
            started_at: now(),
            platform: crate::platform::Platform::detect(),
            metrics: crate::metrics::Metrics::new(),
            logs: Arc::default(),
            arrivals: arrivals::Arrivals::start()
                .inspect_err(
                    |e| tracing::warn!(error = %e, "no inotify: tasks end when their shims exit"),
                )
                .ok(),
            wake: Notify::new(),
            ledger,
            base_env,
        }
    }

    pub fn task_dir(&self, task_id: &str) -> TaskDir {
        TaskDir::new(&self.cfg.tasks_dir(), task_id).with_cache(Arc::clone(&self.logs))
    }

    /// Wakes the dispatcher now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// `POST /api/v1/tasks`.
    pub async fn submit(self: &Arc<Self>, body: &[u8]) -> Result<SubmitTaskResponse, ApiError> {
        let mut req: SubmitTaskRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
        validate::submit(&req)?;
        let plan = plan::resolve(
            &req,
            self.cfg.args.default_capability_mode.into(),
            &self.caps,
        )?;
        self.check_capacity(&req)?;

        let task_id = req
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        req.task_id = Some(task_id.clone());
        let ts = now();
        let cc = req.control_context.clone().unwrap_or_default();
        let mut events = vec![
            NewEvent::new("submitted").message("task submitted"),
            NewEvent::new("accepted").message("task accepted and persisted"),
            NewEvent::new("planned")
                .message("execution plan resolved")
                .data(serde_json::to_value(&plan).unwrap_or_default()),
        ];
        if plan.degraded {
            events.push(
                NewEvent::new("degraded")
                    .message(plan.fallback_reasons.join("; "))
                    .data(serde_json::json!({ "fallback_reasons": plan.fallback_reasons })),
            );
        }
        let script = match req.execution.kind {
            ExecutionKind::Script => req.execution.script.clone(),
            ExecutionKind::Command => None,
        };
        let request_json = serde_json::to_vec_pretty(&req)
            .map_err(|e| ApiError::internal(format!("encoding request.json: {e}")))?;
        let row = TaskRow {
            task_id: task_id.clone(),
            status: TaskStatus::Accepted,
            created_at: ts.clone(),
            updated_at: ts.clone(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            shim_pid: None,
            shim_start_ticks: None,
            pid: None,
            pgid: None,
            exit_code: None,
            exit_signal: None,
            error: None,
            usage: None,
            request: req,
            plan,
            reservation: None,
            reserved_at: None,
            released: false,
            tenant: cc.tenant,
            owner: cc.owner,
            kill_requested: false,
            launch_attempted: false,
        };
        let td = self.task_dir(&task_id);
        let max_queued = self.cfg.args.max_queued_tasks;
        let me = Arc::clone(self);
        let launch_now = self
            .store
            .durable(
                move |tx| -> Result<store::Committed<Option<TaskRow>>, ApiError> {
                    if store::count_status(tx, TaskStatus::Accepted)? >= max_queued {
                        return Err(ApiError::verbatim(
                            ApiErrorCode::ResourceLimitExceeded,
                            "queue is full",
                        ));
                    }
                    if store::exists(tx, &row.task_id)? {
                        return Err(ApiError::verbatim(
                            ApiErrorCode::Conflict,
                            format!("task already exists: {}", row.task_id),
                        ));
                    }
                    let nothing_older = store::waiting(tx, 1)?.is_empty();
                    store::insert(tx, &row)?;
                    for ev in &events {
                        store::append_event(tx, &row.task_id, &ts, ev)?;
                    }
                    if let Err(e) = td.create(&request_json, script.as_deref()) {
                        let _ = td.remove();
                        return Err(io_unavailable("writing the task directory", &e));
                    }
                    // Nothing older waits and the ledger admits it now: the
                    // launch record joins this transaction, and the launch
                    // follows the commit without a dispatch pass.
                    let mut row = row;
                    let admitted = nothing_older && me.admit_at_submit(tx, &mut row, &ts)?;
                    let id = row.task_id.clone();
                    let engine = Arc::clone(&me);
                    // Accepted once the group's commit is on disk; if it fails,
                    // the directory (and any reservation) goes too.
                    Ok(store::Committed {
                        value: admitted.then_some(row),
                        undo: Some(Box::new(move || {
                            let _ = td.remove();
                            if admitted {
                                engine.with_ledger(|l| l.release(&id));
                            }
                        })),
                    })
                },
            )
            .await?;
        tracing::info!(task_id = %task_id, "task accepted");
        self.metrics.status(TaskStatus::Accepted);
        match launch_now {
            Some(row) => {
                tracing::debug!(task_id = %row.task_id, "launch claimed at submit");
                let me = Arc::clone(self);
                tokio::spawn(async move { me.launch(row).await });
            }
            None => self.wake(),
        }
        Ok(SubmitTaskResponse {
            handle_id: task_id.clone(),
            task_id,
            status: TaskStatus::Accepted,
        })
    }

    /// Reserves for a task being submitted and records its launch in the
    /// submit's transaction, if the ledger admits it now; `false` (and
    /// nothing changed) when it does not.
    fn admit_at_submit(
        &self,
        tx: &rusqlite::Transaction<'_>,
        row: &mut TaskRow,
        ts: &str,
    ) -> Result<bool, ApiError> {
        let candidate = crate::ledger::Candidate {
            task_id: row.task_id.clone(),
            tenant: row.tenant.clone(),
            reservation: dispatch::reservation_of(row),
        };
        let admitted = self.with_ledger(|l| {
            !l.admit(std::slice::from_ref(&candidate), std::time::Instant::now())
                .is_empty()
        });
        if !admitted {
            return Ok(false);
        }
        if let Err(e) = dispatch::record_launch(tx, row, &candidate.reservation, ts) {
            self.with_ledger(|l| l.release(&row.task_id));
            return Err(e.into());
        }
        Ok(true)
    }

    /// One task's reservation can never fit this runtime or its tenant.
    fn check_capacity(&self, req: &SubmitTaskRequest) -> Result<(), ApiError> {
        let reservation =
            crate::ledger::Reservation::for_limits(req.limits.memory_bytes, req.limits.pids_max);
        let tenant = req
            .control_context
            .as_ref()
            .and_then(|c| c.tenant.as_deref());
        self.with_ledger(|l| l.could_ever_fit(tenant, &reservation))
            .map_err(|pool| {
                ApiError::new(
                    ApiErrorCode::InsufficientResources,
                    format!(
                        "the task's reservation (task_slots 1{}{}) exceeds {pool}",
                        reservation
                            .memory_bytes
                            .map(|m| format!(", memory_bytes {m}"))
                            .unwrap_or_default(),
                        reservation
                            .pids
                            .map(|p| format!(", pids {p}"))
                            .unwrap_or_default(),
                    ),
                )
            })
    }

    async fn row(&self, task_id: &str) -> Result<TaskRow, ApiError> {
        validate::task_id(task_id).map_err(|_| ApiError::not_found(task_id))?;
        let id = task_id.to_string();
        self.store
            .call(move |conn| store::get(conn, &id))
            .await?
            .ok_or_else(|| ApiError::not_found(task_id))
    }

    /// `GET /api/v1/tasks/:id`.
    pub async fn status(&self, task_id: &str) -> Result<TaskStatusResponse, ApiError> {
        let row = self.row(task_id).await?;
        view::status_body(&self.task_dir(task_id), &row)
    }

    /// `GET /api/v1/tasks/:id/events`.
    pub async fn events(&self, task_id: &str) -> Result<Vec<EventRecord>, ApiError> {
        let _ = self.row(task_id).await?;
        let id = task_id.to_string();
        let rows = self
            .store
            .call(move |conn| store::events(conn, &id))
            .await?;
        Ok(rows.into_iter().map(view::event_record).collect())
    }

    /// `POST /api/v1/tasks/:id/kill`.
    pub async fn kill(
        self: &Arc<Self>,
        task_id: &str,
        owner: Option<&str>,
    ) -> Result<TaskStatusResponse, ApiError> {
        let row = self.row(task_id).await?;
        if let Some(required) = &row.owner {
            if owner != Some(required.as_str()) {
                return Err(ApiError::verbatim(
                    ApiErrorCode::PermissionDenied,
                    format!("permission denied: kill requires owner '{required}'"),
                ));
            }
        }
        if row.status.is_terminal() {
            return view::status_body(&self.task_dir(task_id), &row);
        }
        let td = self.task_dir(task_id);
        let shim_dir = td.clone();
        let id = task_id.to_string();
        let outcome = self
            .store
            .call(move |conn| -> Result<KillOutcome, ApiError> {
                let tx = store::begin(conn)?;
                let Some(mut row) = store::get(&tx, &id)? else {
                    return Err(ApiError::not_found(&id));
                };
                if row.status.is_terminal() {
                    return Ok(KillOutcome::AlreadyOver);
                }
                let ts = now();
                let first_request = !row.kill_requested;
                row.kill_requested = true;
                row.updated_at = ts.clone();
                if first_request {
                    store::append_event(
                        &tx,
                        &id,
                        &ts,
                        &NewEvent::new("kill_requested").message("kill requested"),
                    )?;
                }
                if row.status == TaskStatus::Accepted && !row.launch_attempted {
                    // Never launched: cancelled at once, result first.
                    row.status = TaskStatus::Cancelled;
                    row.finished_at = Some(ts.clone());
                    row.error = Some(TaskError::new(
                        TaskErrorCode::Cancelled,
                        "task was cancelled before it started",
                    ));
                    let body = view::status_body(&td, &row)?;
                    let bytes = serde_json::to_vec_pretty(&body)
                        .map_err(|e| ApiError::internal(format!("encoding result.json: {e}")))?;
                    td.write_result(&bytes)
                        .map_err(|e| io_unavailable("writing result.json", &e))?;
                    store::append_event(
                        &tx,
                        &id,
                        &ts,
                        &NewEvent::new("cancelled").message("task cancelled before launch"),
                    )?;
                    store::update(&tx, &row, unix_ms(&ts))?;
                    store::commit(tx)?;
                    return Ok(KillOutcome::CancelledBeforeLaunch);
                }
                store::update(&tx, &row, None)?;
                store::commit(tx)?;
                Ok(if row.status == TaskStatus::Running {
                    KillOutcome::SignalShim
                } else {
                    KillOutcome::Pending
                })
            })
            .await?;
        if outcome == KillOutcome::CancelledBeforeLaunch {
            self.with_ledger(|l| l.forget_waiting(task_id));
            self.metrics.status(TaskStatus::Cancelled);
            self.metrics
                .task_errors_total
                .with_label_values(&[TaskErrorCode::Cancelled.as_str()])
                .inc();
        }
        if outcome == KillOutcome::SignalShim {
            match shim_dir.send_kill() {
                Ok(true) => tracing::info!(task_id, "kill sent to shim"),
                Ok(false) => tracing::warn!(task_id, "no shim listening for the kill"),
                Err(e) => tracing::error!(task_id, error = %e, "sending kill to shim failed"),
            }
        }
        self.status(task_id).await
    }

    /// Readiness: storage answers and the helper answers.
    pub async fn ready(&self) -> Result<(), ApiError> {
        self.store
            .call(|conn| store::ping(conn).map_err(ApiError::from))
            .await
            .map_err(|e| {
                ApiError::new(ApiErrorCode::NotReady, format!("storage: {}", e.message))
            })?;
        let pong = self
            .helper
            .call(execgo_runtime_protocol::Request::Ping)
            .await;
        match pong {
            Ok(execgo_runtime_protocol::Response::Pong) => Ok(()),
            Ok(_) => Err(ApiError::new(
                ApiErrorCode::NotReady,
                "helper answered a ping out of protocol",
            )),
            Err(e) => Err(ApiError::new(
                ApiErrorCode::NotReady,
                format!("helper: {}", error_chain(&e)),
            )),
        }
    }

    /// Runs `f` on the ledger (a poisoned lock is recovered: the ledger's
    /// state is plain numbers, consistent after any single call).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `GET /metrics`: refreshes the gauges from the store, then renders.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let (running, queued) = self
            .store
            .call(|conn| -> Result<(u64, u64), ApiError> {
                Ok((
                    store::count_status(conn, TaskStatus::Running)?,
                    store::count_status(conn, TaskStatus::Accepted)?,
                ))
            })
            .await?;
        let m = &self.metrics;
        m.tasks_running.set(running as i64);
        m.tasks_queued.set(queued as i64);
        m.helper_up.set(self.helper.is_up() as i64);
        let (capacity, reserved) = self.with_ledger(|l| (l.capacity, l.reserved()));
        m.ledger(&capacity, &reserved);
        let reconnects = self.helper.connects().saturating_sub(1);
        let seen = m.helper_reconnects_total.get();
        if reconnects > seen {
            m.helper_reconnects_total.inc_by(reconnects - seen);
        }
        Ok(m.render())
    }
}

/// What a kill did, decided inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillOutcome {
    AlreadyOver,
    CancelledBeforeLaunch,
    SignalShim,
    /// Handed to the helper but not yet running: the launch path sends it.
    Pending,
}

/// An environment failure on the data dir (disk full, read-only) is a 503
/// the client can retry, never a 500.
fn io_unavailable(what: &str, e: &std::io::Error) -> ApiError {
    tracing::error!(error = %e, "{what} failed");
    ApiError::new(ApiErrorCode::StorageUnavailable, format!("{what}: {e}"))
}

fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn pid_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}
