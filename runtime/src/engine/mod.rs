//! The task engine: carries out the lifecycle (`crate::task`) on the
//! store, the ledger and the helper. Submit, status, kill and events here;
//! admission, launch, following a shim, restart recovery and retention GC
//! in their own modules.

mod admission;
pub mod arrivals;
mod changes;
pub mod error;
pub mod files;
mod follow;
pub mod gc;
mod launch;
pub mod log_cache;
pub mod recovery;
pub mod streams;
mod transition;
pub mod view;

use std::sync::{Arc, Mutex};

use execgo_runtime_protocol::TaskStatus;
use tokio::sync::Notify;

use crate::config::Config;
use crate::helper_link::HelperLink;
use crate::ledger::{Amounts, Ledger};
use crate::model::{
    EventRecord, ExecutionKind, SubmitTaskRequest, SubmitTaskResponse, TaskList, TaskStatusResponse,
};
use crate::plan::{self, HostCaps};
use crate::store::{self, Store, TaskRow};
use crate::task::{self, Input, Phase, Unchanged};
pub use error::{error_chain, EngineError};
use files::TaskDir;

pub use execgo_runtime_protocol::taskdir::{now_rfc3339 as now, unix_ms};

/// Environment variables passed from the runtime to every task.
const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "TMPDIR", "USER"];

pub struct Engine {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub helper: Arc<HelperLink>,
    pub started_at: String,
    pub platform: crate::platform::Platform,
    pub metrics: crate::metrics::Metrics,
    logs: Arc<log_cache::LogCache>,
    /// Results seen as the shims rename them in; `None` when inotify is
    /// unavailable, and then a shim's exit alone ends its task.
    arrivals: Option<arrivals::Arrivals>,
    /// Followers of tasks, woken by each committed change.
    changes: Arc<changes::Changes>,
    /// Places for open streams (`--max-streams`).
    streams: Arc<tokio::sync::Semaphore>,
    /// Set when the server stops: every stream ends.
    stopping: tokio::sync::watch::Sender<bool>,
    wake: Notify,
    /// Capacity, reservations of tasks handed to the helper, tenant quotas.
    pub ledger: Mutex<Ledger>,
    base_env: Vec<(String, String)>,
    /// The runtime's whole environment as it started, the base of tasks
    /// launched with `LaunchOptions::full_env`.
    full_env: Vec<(String, String)>,
}

impl Engine {
    pub fn new(cfg: Config, store: Arc<Store>, helper: Arc<HelperLink>) -> Self {
        let capacity = Amounts {
            task_slots: cfg.args.max_running_tasks,
            memory_bytes: cfg.args.capacity_memory_bytes.or_else(physical_memory),
            pids: cfg.args.capacity_pids.or_else(pid_max),
        };
        let ledger = Mutex::new(Ledger::new(capacity, &cfg.args.tenant_quota));
        let streams = Arc::new(tokio::sync::Semaphore::new(cfg.args.max_streams as usize));
        let base_env = INHERITED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        let logs = Arc::new(log_cache::LogCache::with_cap(cfg.args.max_log_bytes));
        Engine {
            cfg,
            store,
            helper,
            started_at: now(),
            platform: crate::platform::Platform::detect(),
            metrics: crate::metrics::Metrics::new(),
            logs,
            arrivals: arrivals::Arrivals::start()
                .inspect_err(
                    |e| tracing::warn!(error = %e, "no inotify: tasks end when their shims exit"),
                )
                .ok(),
            changes: Arc::default(),
            streams,
            stopping: tokio::sync::watch::channel(false).0,
            wake: Notify::new(),
            ledger,
            base_env,
            full_env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn task_dir(&self, task_id: &str) -> TaskDir {
        TaskDir::new(&self.cfg.tasks_dir(), task_id).with_cache(Arc::clone(&self.logs))
    }

    /// Wakes the followers of `task_id`: a change of it was committed
    /// outside the lifecycle's transitions (an event of another API).
    pub fn changed(&self, task_id: &str) {
        self.changes.changed(task_id);
    }

    /// Wakes the dispatcher now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What tasks can be given on this host: from the helper's latest
    /// probe (taken at each connect), or the process profile's minimum
    /// while the helper has not been reached.
    pub fn host_caps(&self) -> HostCaps {
        self.helper
            .with_probe(|p| HostCaps::from_probe(p, &self.cfg.args))
    }

    /// `POST /api/v1/tasks`, for a request the API layer parsed and
    /// validated.
    pub async fn submit(
        self: &Arc<Self>,
        req: SubmitTaskRequest,
    ) -> Result<SubmitTaskResponse, EngineError> {
        self.submit_with(req, SubmitExtras::default()).await
    }

    /// A submit with what another API adds beyond the public request: its
    /// launch options, and a write of its own in the submit's transaction
    /// (so the task and that record are accepted, or refused, together).
    pub async fn submit_with(
        self: &Arc<Self>,
        mut req: SubmitTaskRequest,
        extras: SubmitExtras,
    ) -> Result<SubmitTaskResponse, EngineError> {
        let rootfs_dirs = self.helper.with_probe(|p| p.rootfs_dirs.clone());
        let caps = match extras.launch.sidecar {
            // No task cgroup (below): no limit of one either.
            true => self.host_caps().without_task_cgroups(),
            false => self.host_caps(),
        };
        let mut plan = plan::resolve(
            &req,
            self.cfg.args.default_capability_mode.into(),
            &caps,
            &rootfs_dirs,
        )?;
        if extras.launch.sidecar && plan.resource_enforcement.cgroup_enforced {
            // Its shim joins another container's namespaces, where the
            // task's cgroups are not made (see engine/launch.rs).
            plan.resource_enforcement.cgroup_enforced = false;
            plan.capability_warnings.push(
                "a sidecar task gets no task cgroup: a kill or the wall time reaches its \
                 process group and what its shim finds of it"
                    .to_string(),
            );
        }
        self.check_capacity(&req)?;

        let task_id = req
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        req.task_id = Some(task_id.clone());
        let script = match req.execution.kind {
            ExecutionKind::Script => req.execution.script.clone(),
            ExecutionKind::Command => None,
        };
        let request_json = serde_json::to_vec_pretty(&req)
            .map_err(|e| EngineError::Internal(format!("encoding request.json: {e}")))?;
        let ts = now();
        let mut created = task::create(task_id.clone(), req, plan, &ts);
        created.row.launch = extras.launch;
        let also = extras.also;
        let td = self.task_dir(&task_id);
        let max_queued = self.cfg.args.max_queued_tasks;
        let me = Arc::clone(self);
        let admitted = self
            .store
            .durable(
                move |tx| -> Result<store::Committed<Option<task::Change>>, EngineError> {
                    if store::count_status(tx, TaskStatus::Accepted)? >= max_queued {
                        return Err(EngineError::QueueFull);
                    }
                    let row = &created.row;
                    if store::exists(tx, &row.task_id)? {
                        return Err(EngineError::Conflict(row.task_id.clone()));
                    }
                    let nothing_older = store::waiting(tx, 1)?.is_empty();
                    store::insert(tx, row)?;
                    for ev in &created.events {
                        store::append_event(tx, &row.task_id, &ts, ev)?;
                    }
                    if let Some(also) = also {
                        also(tx)?;
                    }
                    if let Err(e) = td.create(&request_json, script.as_deref()) {
                        let _ = td.remove();
                        return Err(EngineError::storage("writing the task directory", e));
                    }
                    // Nothing older waits: admission joins this transaction,
                    // and the launch follows the commit without a dispatch
                    // pass.
                    let admitted = if nothing_older {
                        me.admit(tx, vec![candidate(row)])?.pop()
                    } else {
                        None
                    };
                    let engine = Arc::clone(&me);
                    let given = admitted.clone();
                    // Accepted once the group's commit is on disk; if it fails,
                    // the directory (and any reservation) goes too.
                    Ok(store::Committed {
                        value: admitted,
                        undo: Some(Box::new(move || {
                            let _ = td.remove();
                            engine.give_back(given.as_slice());
                        })),
                    })
                },
            )
            .await?;
        tracing::info!(task_id = %task_id, "task accepted");
        self.metrics.status(TaskStatus::Accepted);
        match admitted {
            Some(change) => {
                self.after_commit(&change);
                // The launch it spawned writes its request to the helper
                // before our answer is written: the task starts a little
                // sooner, the client hears a little later.
                tokio::task::yield_now().await;
            }
            None => self.wake(),
        }
        Ok(SubmitTaskResponse {
            handle_id: task_id.clone(),
            task_id,
            status: TaskStatus::Accepted,
        })
    }

    /// One task's reservation can never fit this runtime or its tenant.
    fn check_capacity(&self, req: &SubmitTaskRequest) -> Result<(), EngineError> {
        let reservation =
            crate::ledger::Reservation::for_limits(req.limits.memory_bytes, req.limits.pids_max);
        let tenant = req
            .control_context
            .as_ref()
            .and_then(|c| c.tenant.as_deref());
        self.with_ledger(|l| l.could_ever_fit(tenant, &reservation))
            .map_err(|pool| {
                EngineError::InsufficientResources(format!(
                    "the task's reservation (task_slots 1{}{}) exceeds {pool}",
                    reservation
                        .memory_bytes
                        .map(|m| format!(", memory_bytes {m}"))
                        .unwrap_or_default(),
                    reservation
                        .pids
                        .map(|p| format!(", pids {p}"))
                        .unwrap_or_default(),
                ))
            })
    }

    async fn row(&self, task_id: &str) -> Result<TaskRow, EngineError> {
        let id = task_id.to_string();
        self.store
            .read(move |conn| store::get(conn, &id))
            .await?
            .ok_or_else(|| EngineError::NotFound(task_id.to_string()))
    }

    /// `GET /api/v1/tasks/:id`: the row and the logs' heads in one trip
    /// to the blocking pool (the reads never block, but a slow disk may).
    pub async fn status(&self, task_id: &str) -> Result<TaskStatusResponse, EngineError> {
        let id = task_id.to_string();
        let td = self.task_dir(task_id);
        self.store
            .read(move |conn| -> Result<_, EngineError> {
                let row = store::get(conn, &id)?.ok_or(EngineError::NotFound(id))?;
                Ok(view::status_body(&td, &row))
            })
            .await
    }

    /// `GET /api/v1/tasks/:id/events`.
    pub async fn events(&self, task_id: &str) -> Result<Vec<EventRecord>, EngineError> {
        let id = task_id.to_string();
        let rows = self
            .store
            .read(move |conn| -> Result<_, EngineError> {
                if !store::exists(conn, &id)? {
                    return Err(EngineError::NotFound(id));
                }
                Ok(store::events(conn, &id)?)
            })
            .await?;
        Ok(rows.into_iter().map(view::event_record).collect())
    }

    /// `GET /api/v1/tasks`: one page of stored tasks, newest first.
    pub async fn list(&self, filter: store::TaskFilter) -> Result<TaskList, EngineError> {
        let tasks_dir = self.cfg.tasks_dir();
        self.store
            .read(move |conn| -> Result<_, EngineError> {
                let page = store::list::list(conn, &filter)?;
                Ok(TaskList {
                    tasks: page
                        .tasks
                        .iter()
                        .map(|row| view::summary(&TaskDir::new(&tasks_dir, &row.task_id), row))
                        .collect(),
                    next_cursor: page.next.map(|c| c.encode()),
                })
            })
            .await
    }

    /// `POST /api/v1/tasks/:id/kill`.
    pub async fn kill(
        self: &Arc<Self>,
        task_id: &str,
        owner: Option<&str>,
    ) -> Result<TaskStatusResponse, EngineError> {
        let row = self.row(task_id).await?;
        if let Some(required) = &row.owner {
            if owner != Some(required.as_str()) {
                return Err(EngineError::NotOwner(required.clone()));
            }
        }
        let recorded = match self.transition(task_id, Input::Kill).await {
            // A full data dir cannot record the kill first; a running
            // task's shim still takes it, and its result says so
            // (`kill_requested`). Only a restart before the shim read the
            // byte would lose it.
            Err(e) if e.is_storage_unavailable() && row.status == TaskStatus::Running => {
                match self.task_dir(task_id).send_kill() {
                    Ok(true) => {
                        tracing::warn!(
                            task_id,
                            error = %error_chain(&e),
                            "the kill could not be recorded; sent to the shim all the same"
                        );
                        return self.status(task_id).await;
                    }
                    _ => return Err(e),
                }
            }
            r => r?,
        };
        match recorded {
            Ok(change) => tracing::info!(task_id, cancelled = change.finished, "kill recorded"),
            // A repeat for a running task: the shim may have missed the
            // first (a repeat is harmless).
            Err(Unchanged::KillAlreadyRecorded(Phase::Running)) => {
                let _ = self.task_dir(task_id).send_kill();
            }
            Err(_) => {}
        }
        self.status(task_id).await
    }

    /// Readiness: storage answers and the helper answers.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.store
            .call(|conn| store::ping(conn).map_err(EngineError::from))
            .await
            .map_err(|e| EngineError::NotReady(format!("storage: {}", error_chain(&e))))?;
        let pong = self
            .helper
            .call(execgo_runtime_protocol::Request::Ping)
            .await;
        match pong {
            Ok(execgo_runtime_protocol::Response::Pong) => Ok(()),
            Ok(_) => Err(EngineError::NotReady(
                "helper answered a ping out of protocol".into(),
            )),
            Err(e) => Err(EngineError::NotReady(format!(
                "helper: {}",
                error_chain(&e)
            ))),
        }
    }

    /// Runs `f` on the ledger (a poisoned lock is recovered: the ledger's
    /// state is plain numbers, consistent after any single call).
    pub fn with_ledger<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut guard = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `GET /metrics`: refreshes the gauges from the store, then renders.
    pub async fn metrics_text(&self) -> Result<String, EngineError> {
        let (running, queued) = self
            .store
            .call(|conn| -> Result<(u64, u64), EngineError> {
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

/// A write another API adds to a submit's transaction, after the task's row.
pub type AlsoInSubmit =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(), EngineError> + Send + 'static>;

/// What a submit carries beyond the public request.
#[derive(Default)]
pub struct SubmitExtras {
    pub launch: store::LaunchOptions,
    pub also: Option<AlsoInSubmit>,
}

/// A submitted row as the ledger sees it.
fn candidate(row: &store::TaskRow) -> crate::ledger::Candidate {
    let limits = &row.request.limits;
    crate::ledger::Candidate {
        task_id: row.task_id.clone(),
        tenant: row.tenant.clone(),
        reservation: crate::ledger::Reservation::for_limits(limits.memory_bytes, limits.pids_max),
    }
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
