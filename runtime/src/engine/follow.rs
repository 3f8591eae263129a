//! Following a launched task to its end: watching its shim's task
//! directory for `started` and `result.json` and the shim for its exit,
//! finding the shim again (from the row, or from the claim, as
//! `task::reconcile` decides), and finishing the task from what its shim
//! left on disk.

use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::taskdir::{self, ClaimRecord};
use execgo_runtime_protocol::{Outcome, TaskErrorCode};

use super::files::TaskDir;

use super::EngineError;
use super::{now, Engine};
use crate::store::{self, TaskRow};
use crate::sys;
use crate::task::reconcile::{reconcile, Action};

/// How long the end of a task whose shim is gone waits for the helper.
const REAP_PATIENCE: Duration = Duration::from_secs(10);
/// The first and the longest wait between tries to record a change the
/// data dir refused.
const RECORD_RETRY_MIN: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
use crate::task::{outcome, DecidedBy, Input, Start, StartedBy};

impl Engine {
    /// Applies `input`, logging a store failure (the callers have no one
    /// to answer). A data dir that refuses the write (full, say: a task
    /// filled it) is retried until it takes it, so that a task's end is
    /// recorded once space is freed, not only at the next start.
    pub(super) async fn record(self: &Arc<Self>, task_id: &str, input: Input) {
        let mut backoff = RECORD_RETRY_MIN;
        loop {
            match self.transition(task_id, input.clone()).await {
                Ok(_) => return,
                Err(e) if e.is_storage_unavailable() => {
                    if backoff == RECORD_RETRY_MIN {
                        tracing::error!(
                            task_id,
                            error = %super::error_chain(&e),
                            "recording a task's change failed; retrying until storage takes it"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(task_id, error = %super::error_chain(&e), "recording a task's change failed");
                    return;
                }
            }
        }
    }

    /// Finds the task's shim and carries out what [`reconcile`] decides,
    /// recording a `recovered` event that says how. The row is handed back
    /// when no shim ever claimed the task: the caller launches it again.
    pub(super) async fn find_shim(self: &Arc<Self>, task_id: &str) -> Option<TaskRow> {
        let id = task_id.to_string();
        let row = match self
            .store
            .call(move |conn| store::get(conn, &id).map_err(EngineError::from))
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(task_id, error = %super::error_chain(&e), "reading a task to reconcile failed");
                return None;
            }
        };
        let claim = self.task_dir(task_id).read_claim().ok().flatten();
        let (action, message) = reconcile(&row, claim, taskdir::is_alive);
        if action == Action::Nothing {
            return None;
        }
        tracing::info!(task_id, message, "recovered");
        self.record(task_id, Input::Recovered(message)).await;
        match action {
            Action::Follow { shim, resend_kill } => {
                if resend_kill {
                    // The kill may have been recorded but never reached the
                    // shim before a crash; a repeat is harmless.
                    let _ = self.task_dir(task_id).send_kill();
                }
                let me = Arc::clone(self);
                let id = task_id.to_string();
                tokio::spawn(
                    async move { me.watch(id, shim, StartedBy::ClaimAtRecovery, None).await },
                );
            }
            Action::FinishFromDisk => self.finish_from_disk(task_id).await,
            Action::Unclaimed => return Some(row),
            Action::Nothing => {}
        }
        None
    }

    /// Finishes the task from its shim's `result.json`, or as a lost
    /// monitor when there is none: then its shim is gone without having
    /// ended it, and the helper ends what is left of it first.
    pub(super) async fn finish_from_disk(self: &Arc<Self>, task_id: &str) {
        let input = match read_outcome(&self.task_dir(task_id)) {
            Some(o) => Input::Finish(o, DecidedBy::Shim),
            None => {
                self.reap(task_id).await;
                // The shim may have written its result after all.
                match read_outcome(&self.task_dir(task_id)) {
                    Some(o) => Input::Finish(o, DecidedBy::Shim),
                    None => Input::Finish(outcome::lost_monitor(&now()), DecidedBy::Runtime),
                }
            }
        };
        self.record(task_id, input).await;
    }

    /// Asks the helper to kill whatever of a task outlived its shim, before
    /// the task is reported terminal. Retried while the helper cannot be
    /// reached, for [`REAP_PATIENCE`]; after that (or a refusal) the task
    /// is finished anyway, with the reason logged.
    async fn reap(self: &Arc<Self>, task_id: &str) {
        use execgo_runtime_protocol::{Request, Response};
        let deadline = tokio::time::Instant::now() + REAP_PATIENCE;
        let mut backoff = Duration::from_millis(50);
        loop {
            let answer = self
                .helper
                .call(Request::Reap {
                    task_id: task_id.to_string(),
                })
                .await;
            let failure = match answer {
                Ok(Response::Reaped) => return,
                Ok(Response::Error(e)) => {
                    tracing::warn!(task_id, error = %e, "the helper could not end what the task left");
                    return;
                }
                Ok(other) => format!("an answer out of protocol: {other:?}"),
                Err(e) => super::error_chain(&e),
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(
                    task_id,
                    error = failure,
                    "the helper was not reached to end what the task left; finishing it anyway"
                );
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Follows a launched task to its end. Its start is recorded when its
    /// shim's `started` appears (`by` says how the shim was found); the
    /// end is whichever comes first: `result.json` renamed in (the shim's
    /// last act) or the shim's exit. A shim that exits without starting
    /// the task found it claimed by another (followed in turn), or failed
    /// before claiming it (the launch failed). `task_uid` is the uid the
    /// launch reply named, when the task was launched by this runtime.
    pub async fn watch(
        self: &Arc<Self>,
        task_id: String,
        shim: ClaimRecord,
        by: StartedBy,
        task_uid: Option<u32>,
    ) {
        let (mut shim, mut by, mut task_uid) = (shim, by, task_uid);
        loop {
            if self.watch_shim(&task_id, shim, by, task_uid).await {
                return self.finish_from_disk(&task_id).await;
            }
            match self.task_dir(&task_id).read_claim() {
                Ok(Some(c)) if c != shim && taskdir::is_alive(c.shim_pid, c.shim_start_ticks) => {
                    let message = "re-attached to the shim that claimed the task";
                    tracing::info!(task_id, message, "recovered");
                    self.record(&task_id, Input::Recovered(message)).await;
                    // Another shim's task: its uid is not the one our
                    // launch was told; its result will say.
                    (shim, by, task_uid) = (c, StartedBy::ClaimAtRecovery, None);
                }
                Ok(Some(_)) => return self.finish_from_disk(&task_id).await,
                Ok(None) => {
                    let o = outcome::launch_refused(
                        TaskErrorCode::LaunchFailed,
                        "the task's shim exited before it claimed the task (see shim.log)".into(),
                        &now(),
                    );
                    return self
                        .record(&task_id, Input::Finish(o, DecidedBy::Runtime))
                        .await;
                }
                Err(e) => {
                    tracing::error!(task_id, error = %e, "reading the task's claim failed");
                    return self.finish_from_disk(&task_id).await;
                }
            }
        }
    }

    /// Waits until the task's result is in or its shim has exited, recording
    /// the start on the way; whether the shim started the task or left a
    /// result.
    async fn watch_shim(
        self: &Arc<Self>,
        task_id: &str,
        shim: ClaimRecord,
        by: StartedBy,
        task_uid: Option<u32>,
    ) -> bool {
        let td = self.task_dir(task_id);
        let mut arrival = match self.arrivals.as_ref().map(|a| a.watch(&td.dir)) {
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                watch_failed(task_id, &e);
                None
            }
            None => None,
        };
        let exit = self.shim_exit(task_id, shim.shim_pid, shim.shim_start_ticks);
        tokio::pin!(exit);
        let poll = Duration::from_millis(self.cfg.args.dispatch_poll_interval_ms);
        let mut started = false;
        let mut exited = false;
        loop {
            if !started {
                started = self.note_start(&td, task_id, shim, by, task_uid).await;
            }
            if exited || td.result_in_place() {
                break;
            }
            match arrival.as_mut() {
                Some(a) => tokio::select! {
                    r = a.arrived() => if let Err(e) = r {
                        tracing::warn!(task_id, error = %e, "waiting for the shim's exit instead");
                        arrival = None;
                    },
                    () = &mut exit => exited = true,
                },
                // Without a watch, the start and the result are looked for
                // now and then (a shim that keeps what its task left
                // running outlives its result); the shim's exit wakes at
                // once.
                None => tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = &mut exit => exited = true,
                },
            }
        }
        started || td.has_result()
    }

    /// Records the start if the shim's `started` is there; whether it is.
    async fn note_start(
        self: &Arc<Self>,
        td: &TaskDir,
        task_id: &str,
        shim: ClaimRecord,
        by: StartedBy,
        task_uid: Option<u32>,
    ) -> bool {
        let Some(rec) = td.read_started() else {
            return false;
        };
        let start = Start {
            shim_pid: shim.shim_pid,
            shim_start_ticks: shim.shim_start_ticks,
            pid: Some(rec.pid),
            pgid: Some(rec.pid),
            started_at: Some(rec.started_at),
            task_uid,
            by,
        };
        self.record(task_id, Input::Start(start)).await;
        true
    }

    /// Returns once the shim has exited.
    async fn shim_exit(&self, task_id: &str, shim_pid: i32, start_ticks: u64) {
        match sys::pidfd_open(shim_pid) {
            Ok(fd) => {
                // The pidfd pins the pid: if the start time still matches
                // now, this is our shim and the readiness below is its exit.
                if taskdir::is_alive(shim_pid, start_ticks) {
                    if let Err(e) = sys::pidfd_exited(fd).await {
                        tracing::error!(task_id, error = %e, "registering the pidfd failed");
                        self.poll_exit(shim_pid, start_ticks).await;
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
}

/// Out of watches affects every task alike: said once.
fn watch_failed(task_id: &str, e: &std::io::Error) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(task_id, error = %e, "watching the task dir failed");
    } else {
        tracing::warn!(
            task_id,
            error = %e,
            "watching the task dir failed; starts are polled and tasks end when their shims exit"
        );
    }
}

fn read_outcome(td: &TaskDir) -> Option<Outcome> {
    let bytes = td.read_result().ok()??;
    serde_json::from_slice(&bytes).ok()
}
