//! The dispatcher hands `accepted` tasks to the helper, FIFO, up to
//! `--max-running-tasks` at once; a submit or an exit wakes it, the poll
//! interval is only a safety net. Each launched task gets an exit watcher: a
//! pidfd on its shim, so the end of a task is an event, not a poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    taskdir::{self, ClaimRecord},
    LaunchLimits, LaunchProfile, LaunchSpec, Launched, Outcome, Request, Response, TaskError,
    TaskErrorCode, TaskStatus,
};

use super::files::{self, TaskDir};
use super::{error_chain, now, unix_ms, view, Engine};
use crate::api::error::ApiError;
use crate::api::model::ExecutionKind;
use crate::ledger::Reservation;
use crate::store::{self, NewEvent, TaskRow};
use crate::sys;

impl Engine {
    /// Runs forever: launch what fits, then sleep until woken.
    pub async fn dispatch_loop(self: Arc<Self>) {
        let poll = Duration::from_millis(self.cfg.args.dispatch_poll_interval_ms);
        loop {
            if let Err(e) = self.dispatch_once().await {
                tracing::error!(error = %e, "dispatch pass failed");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn dispatch_once(self: &Arc<Self>) -> Result<(), ApiError> {
        if self.with_ledger(|l| l.slots_free()) == 0 {
            return Ok(());
        }
        let me = Arc::clone(self);
        // Scan, admission and the launch records in one visit to the
        // database thread.
        let claimed = self
            .store
            .call(move |conn| -> Result<Vec<TaskRow>, ApiError> {
                let scan = me.with_ledger(|l| l.scan_limit(me.cfg.args.max_queued_tasks));
                let candidates = store::waiting(conn, scan)?;
                if candidates.is_empty() {
                    return Ok(Vec::new());
                }
                let chosen = me.with_ledger(|l| l.admit(&candidates, Instant::now()));
                if chosen.is_empty() {
                    return Ok(Vec::new());
                }
                let claimed = claim(conn, &chosen);
                // What was not claimed (killed meanwhile, or all of it on
                // error) gives its reservation back.
                me.with_ledger(|l| {
                    for c in &chosen {
                        let kept = claimed
                            .as_ref()
                            .is_ok_and(|rows| rows.iter().any(|r| r.task_id == c.task_id));
                        if !kept {
                            l.release(&c.task_id);
                        }
                    }
                });
                claimed
            })
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        for row in claimed {
            tracing::debug!(task_id = %row.task_id, "launch claimed");
            let me = Arc::clone(self);
            tokio::spawn(async move { me.launch(row).await });
        }
        // More may fit (another pass finds out); wake ourselves once.
        self.wake();
        Ok(())
    }

    fn launch_spec(&self, row: &TaskRow) -> Result<LaunchSpec, ApiError> {
        let req = &row.request;
        let td = self.task_dir(&row.task_id);
        let e = &req.execution;
        let argv = match e.kind {
            ExecutionKind::Command => {
                let mut v = vec![e.program.clone().unwrap_or_default()];
                v.extend(e.args.iter().cloned());
                v
            }
            ExecutionKind::Script => match &e.interpreter {
                Some(interp) => {
                    let mut v = interp.clone();
                    v.push(td.path(files::SCRIPT).to_string_lossy().into_owned());
                    v
                }
                None => vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    e.script.clone().unwrap_or_default(),
                ],
            },
        };
        let mut env: std::collections::BTreeMap<String, String> =
            self.base_env.iter().cloned().collect();
        env.extend(e.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let template = view::status_body(&td, row)?;
        let result_template = serde_json::to_string(&template)
            .map_err(|e| ApiError::internal(format!("encoding the result template: {e}")))?;
        let l = &req.limits;
        Ok(LaunchSpec {
            task_id: row.task_id.clone(),
            argv,
            env: env.into_iter().collect(),
            workspace_subdir: row.plan.effective_sandbox.workspace_subdir.clone(),
            profile: LaunchProfile::Process,
            limits: LaunchLimits {
                wall_time_ms: l.wall_time_ms,
                cpu_time_sec: l
                    .cpu_time_sec
                    .filter(|_| row.plan.resource_enforcement.cpu_time_enforced),
                memory_bytes: l
                    .memory_bytes
                    .filter(|_| row.plan.resource_enforcement.memory_enforced),
                pids_max: l
                    .pids_max
                    .filter(|_| row.plan.resource_enforcement.pids_enforced),
                stdout_max_bytes: l.stdout_max_bytes,
                stderr_max_bytes: l.stderr_max_bytes,
            },
            termination_grace_ms: self.cfg.args.termination_grace_ms,
            result_template,
        })
    }

    /// Hands one claimed task to the helper and follows it to the end. While
    /// the helper is unreachable the task keeps its reservation and the
    /// launch is retried with backoff; the shim's claim makes a repeated
    /// launch harmless.
    pub(super) async fn launch(self: Arc<Self>, row: TaskRow) {
        let task_id = row.task_id.clone();
        let spec = match self.launch_spec(&row) {
            Ok(s) => s,
            Err(e) => {
                self.fail_launch(&task_id, TaskErrorCode::Internal, e.message)
                    .await;
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let reply = self.helper.call(Request::Launch(spec.clone())).await;
            tracing::debug!(task_id, "helper replied to the launch");
            let transport_error = match reply {
                Ok(Response::Launched(l)) => return self.launched(&row, l).await,
                Ok(Response::Error(err)) => {
                    use execgo_runtime_protocol::HelperErrorKind as K;
                    let code = match err.kind {
                        K::SandboxSetupFailed => TaskErrorCode::SandboxSetupFailed,
                        K::LaunchFailed | K::InvalidRequest => TaskErrorCode::LaunchFailed,
                        K::Internal => TaskErrorCode::Internal,
                    };
                    // The shim may have claimed the task before failing.
                    if self.task_dir(&task_id).has_result() {
                        self.finalize(&task_id, None).await;
                    } else {
                        self.fail_launch(&task_id, code, err.message).await;
                    }
                    return;
                }
                Ok(other) => format!("helper answered a launch out of protocol: {other:?}"),
                Err(e) => error_chain(&e),
            };
            tracing::warn!(task_id, error = %transport_error, "helper unavailable for launch; retrying");
            // Whatever reached the helper may have claimed the task already.
            if let Ok(Some(claim)) = self.task_dir(&task_id).read_claim() {
                self.follow_claim(&task_id, claim).await;
                return;
            }
            if self.kill_requested(&task_id).await {
                self.finalize(&task_id, Some(cancelled_before_start()))
                    .await;
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn kill_requested(&self, task_id: &str) -> bool {
        let id = task_id.to_string();
        self.store
            .call(move |conn| store::get(conn, &id).map_err(ApiError::from))
            .await
            .ok()
            .flatten()
            .map(|r| r.kill_requested)
            .unwrap_or(false)
    }

    async fn launched(self: &Arc<Self>, row: &TaskRow, l: Launched) {
        let task_id = row.task_id.clone();
        if l.already_claimed {
            // An earlier launch's shim owns the task (this one ran nothing):
            // follow that shim as its claim names it.
            let claim = self.task_dir(&task_id).read_claim().ok().flatten();
            self.follow_claim(&task_id, claim.unwrap_or(ClaimRecord::UNKNOWN))
                .await;
            return;
        }
        if l.pid.is_none() {
            // Exec failed: the shim already wrote result.json saying why.
            self.finalize(&task_id, None).await;
            return;
        }
        let id = task_id.clone();
        let l2 = l.clone();
        let marked = self
            .store
            .relaxed(move |tx| -> Result<store::Committed<bool>, ApiError> {
                let done = |kill| store::Committed {
                    value: kill,
                    undo: None,
                };
                let Some(mut row) = store::get(tx, &id)? else {
                    return Ok(done(false));
                };
                if row.status != TaskStatus::Accepted {
                    return Ok(done(row.kill_requested));
                }
                let ts = now();
                row.status = TaskStatus::Running;
                row.updated_at = ts.clone();
                row.started_at = l2.started_at.clone().or(Some(ts.clone()));
                row.shim_pid = Some(l2.shim_pid);
                row.shim_start_ticks = Some(l2.shim_start_ticks);
                row.pid = l2.pid;
                row.pgid = l2.pgid;
                let mut started = NewEvent::new("started").message("task process started");
                if let Some(pid) = l2.pid {
                    started = started.data(serde_json::json!({
                        "pid": pid, "pgid": l2.pgid, "shim_pid": l2.shim_pid
                    }));
                }
                store::append_event(tx, &id, &ts, &started)?;
                store::update(tx, &row, None)?;
                Ok(done(row.kill_requested))
            })
            .await;
        match marked {
            Ok(true) => {
                let _ = self.task_dir(&task_id).send_kill();
            }
            Ok(false) => {}
            Err(e) => tracing::error!(task_id, error = %e.message, "recording the start failed"),
        }
        tracing::info!(task_id, shim_pid = l.shim_pid, pid = ?l.pid, "task started");
        self.metrics.status(TaskStatus::Running);
        if let Ok(created) = chrono::DateTime::parse_from_rfc3339(&row.created_at) {
            let waited = chrono::Utc::now() - created.with_timezone(&chrono::Utc);
            self.metrics
                .dispatch_latency_seconds
                .observe(waited.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
        self.watch(task_id, l.shim_pid, l.shim_start_ticks).await;
    }

    /// Waits for the task's end, then finalizes from its result. The end
    /// is whichever comes first: `result.json` renamed into the task dir
    /// (the shim's last act), or the shim's exit (a shim that dies without
    /// a result is finalized as a lost monitor).
    pub async fn watch(self: &Arc<Self>, task_id: String, shim_pid: i32, start_ticks: u64) {
        let td = self.task_dir(&task_id);
        let arrival = self.arrivals.as_ref().map(|a| a.watch(&td.dir));
        let exit = self.shim_exit(&task_id, shim_pid, start_ticks);
        tokio::pin!(exit);
        let mut exited = false;
        match arrival {
            _ if td.result_in_place() => {}
            Some(Ok(mut arrival)) => {
                tokio::select! {
                    r = arrival.arrived() => {
                        if let Err(e) = r {
                            tracing::warn!(task_id, error = %e, "waiting for the shim's exit instead");
                        }
                    }
                    () = &mut exit => exited = true,
                }
            }
            Some(Err(e)) => {
                // Out of watches affects every task alike: say it once.
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(task_id, error = %e, "watching for the result failed");
                } else {
                    tracing::warn!(
                        task_id,
                        error = %e,
                        "watching for the result failed; tasks end when their shims exit"
                    );
                }
            }
            None => {}
        }
        // Woken without a result (lost events, a failed watch): the exit
        // decides.
        if !exited && !td.result_in_place() {
            exit.await;
        }
        self.finalize(&task_id, None).await;
    }

    /// Returns once the shim has exited.
    async fn shim_exit(&self, task_id: &str, shim_pid: i32, start_ticks: u64) {
        match sys::pidfd_open(shim_pid) {
            Ok(fd) => {
                // The pidfd pins the pid: if the start time still matches
                // now, this is our shim and the readiness below is its exit.
                if taskdir::is_alive(shim_pid, start_ticks) {
                    match sys::pidfd_exited(fd).await {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::error!(task_id, error = %e, "registering the pidfd failed");
                            self.poll_exit(shim_pid, start_ticks).await;
                        }
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                tracing::warn!(task_id, error = %e, "pidfd_open failed; polling the shim");
                self.poll_exit(shim_pid, start_ticks).await;
            }
        }
    }

    /// Fallback for kernels without pidfd: poll /proc.
    async fn poll_exit(&self, pid: i32, ticks: u64) {
        let every = Duration::from_millis(self.cfg.args.dispatch_poll_interval_ms);
        while taskdir::is_alive(pid, ticks) {
            tokio::time::sleep(every).await;
        }
    }

    /// Launch failed before any shim claimed the task: failed, no start.
    async fn fail_launch(self: &Arc<Self>, task_id: &str, code: TaskErrorCode, message: String) {
        tracing::warn!(task_id, message, "launch failed");
        let outcome = decided(TaskStatus::Failed, TaskError::new(code, message));
        self.finalize(task_id, Some(outcome)).await;
    }

    /// Makes a task terminal: from `outcome`, or else from the shim's
    /// `result.json` (a missing result means the monitor was lost).
    pub async fn finalize(self: &Arc<Self>, task_id: &str, outcome: Option<Outcome>) {
        let td = self.task_dir(task_id);
        let (outcome, write_result) = match outcome {
            Some(o) => (o, true),
            None => match read_outcome(&td) {
                Some(o) => (o, false),
                None => (lost_monitor(), true),
            },
        };
        let id = task_id.to_string();
        type Recorded = Result<store::Committed<Option<TaskRow>>, ApiError>;
        let record = move |tx: &rusqlite::Transaction<'_>| -> Recorded {
            let done = |row| store::Committed {
                value: row,
                undo: None,
            };
            let Some(mut row) = store::get(tx, &id)? else {
                return Ok(done(None));
            };
            if row.status.is_terminal() {
                return Ok(done(None));
            }
            apply_outcome(&mut row, &outcome);
            if write_result {
                let body = view::status_body(&td, &row)?;
                let bytes = serde_json::to_vec_pretty(&body)
                    .map_err(|e| ApiError::internal(format!("encoding result.json: {e}")))?;
                td.write_result(&bytes)
                    .map_err(|e| ApiError::internal(format!("writing result.json: {e}")))?;
            }
            // Events carry when the runtime recorded them; the outcome keeps
            // the shim's own finish time.
            let ts = now();
            if outcome.timed_out {
                store::append_event(
                    tx,
                    &id,
                    &ts,
                    &NewEvent::new("timeout_triggered").message(format!(
                        "wall time limit of {} ms reached",
                        row.request.limits.wall_time_ms
                    )),
                )?;
            }
            if let (Some(r), false) = (&row.reservation, row.released) {
                store::append_event(
                    tx,
                    &id,
                    &ts,
                    &NewEvent::new("resource_released")
                        .message("resources released")
                        .data(serde_json::to_value(r).unwrap_or_default()),
                )?;
                row.released = true;
            }
            let (kind, msg) = match row.status {
                TaskStatus::Success => ("finished", "task finished successfully".to_string()),
                TaskStatus::Cancelled => ("cancelled", "task cancelled".to_string()),
                _ => (
                    "failed",
                    row.error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_else(|| "task failed".to_string()),
                ),
            };
            let mut ev = NewEvent::new(kind).message(msg);
            if let Some(e) = &row.error {
                ev = ev.data(serde_json::json!({ "code": e.code }));
            }
            store::append_event(tx, &id, &ts, &ev)?;
            store::update(tx, &row, unix_ms(&ts))?;
            Ok(done(Some(row)))
        };
        // A finish the shim recorded can be rebuilt from its result.json
        // (relaxed commit); one the runtime decided cannot (fsynced).
        let res = if write_result {
            self.store.durable(record).await
        } else {
            self.store.relaxed(record).await
        };
        match res {
            Ok(Some(row)) => {
                self.with_ledger(|l| l.release(task_id));
                let m = &self.metrics;
                m.status(row.status);
                if let Some(e) = &row.error {
                    m.task_errors_total
                        .with_label_values(&[e.code.as_str()])
                        .inc();
                }
                if let Some(d) = row.duration_ms {
                    m.task_duration_seconds.observe(d as f64 / 1000.0);
                }
                tracing::info!(task_id, status = row.status.as_str(), "task finished");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(task_id, error = %e.message, "finalizing failed"),
        }
        self.wake();
    }
}

/// The reservation a task takes at dispatch.
pub fn reservation_of(row: &TaskRow) -> Reservation {
    Reservation::for_limits(row.request.limits.memory_bytes, row.request.limits.pids_max)
}

/// Records the launch and the reservation of each chosen task that is still
/// waiting: from here on a restart looks for the shim's claim first.
fn claim(
    conn: &mut rusqlite::Connection,
    chosen: &[crate::ledger::Candidate],
) -> Result<Vec<TaskRow>, ApiError> {
    let tx = store::begin_relaxed(conn)?;
    let mut rows = Vec::new();
    let ts = now();
    for c in chosen {
        let Some(mut row) = store::get(&tx, &c.task_id)? else {
            continue;
        };
        if row.status != TaskStatus::Accepted || row.launch_attempted || row.kill_requested {
            continue;
        }
        record_launch(&tx, &mut row, &c.reservation, &ts)?;
        rows.push(row);
    }
    store::commit(tx)?;
    Ok(rows)
}

/// The launch record: `launch_attempted`, the reservation and its time, and
/// a `resource_reserved` event, written in `tx`.
pub(super) fn record_launch(
    tx: &rusqlite::Transaction<'_>,
    row: &mut TaskRow,
    reservation: &Reservation,
    ts: &str,
) -> Result<(), crate::store::StoreError> {
    row.launch_attempted = true;
    row.reservation = Some(reservation.clone());
    row.reserved_at = Some(ts.to_string());
    store::append_event(
        tx,
        &row.task_id,
        ts,
        &NewEvent::new("resource_reserved")
            .message("resources reserved")
            .data(serde_json::to_value(reservation).unwrap_or_default()),
    )?;
    store::update(tx, row, None)
}

fn read_outcome(td: &TaskDir) -> Option<Outcome> {
    let bytes = td.read_result().ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// An outcome the runtime decided itself (no shim recorded one).
fn decided(status: TaskStatus, error: TaskError) -> Outcome {
    Outcome {
        status,
        started_at: None,
        finished_at: now(),
        duration_ms: None,
        shim_pid: None,
        pid: None,
        pgid: None,
        exit_code: None,
        exit_signal: None,
        error: Some(error),
        usage: None,
        kill_requested: false,
        timed_out: false,
    }
}

fn cancelled_before_start() -> Outcome {
    decided(
        TaskStatus::Cancelled,
        TaskError::new(
            TaskErrorCode::Cancelled,
            "task was cancelled before it started",
        ),
    )
}

fn lost_monitor() -> Outcome {
    decided(
        TaskStatus::Failed,
        TaskError::new(
            TaskErrorCode::Internal,
            "task monitor (shim) was lost before it recorded a result",
        ),
    )
}

fn apply_outcome(row: &mut TaskRow, o: &Outcome) {
    row.status = o.status;
    row.updated_at = o.finished_at.clone();
    row.finished_at = Some(o.finished_at.clone());
    if o.started_at.is_some() {
        row.started_at = o.started_at.clone();
    }
    row.duration_ms = o.duration_ms.or(row.duration_ms);
    row.shim_pid = o.shim_pid.or(row.shim_pid);
    row.pid = o.pid.or(row.pid);
    row.pgid = o.pgid.or(row.pgid);
    row.exit_code = o.exit_code;
    row.exit_signal = o.exit_signal;
    row.error = o.error.clone();
    row.usage = o.usage.clone();
}
