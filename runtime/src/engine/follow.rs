//! Following a launched task to its end: finding its shim again (from the
//! row, or from the claim in its task directory, as `task::reconcile`
//! decides), watching for its result or its exit, and finishing it from
//! what it left on disk.

use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::taskdir;
use execgo_runtime_protocol::Outcome;

use super::{now, Engine};
use crate::api::error::ApiError;
use crate::store::{self, TaskRow};
use crate::sys;
use crate::task::reconcile::{reconcile, Action};
use crate::task::{outcome, DecidedBy, Input, Start, StartedBy};

impl Engine {
    /// Applies `input`, logging a store failure (the callers have no one
    /// to answer).
    pub(super) async fn record(self: &Arc<Self>, task_id: &str, input: Input) {
        if let Err(e) = self.transition(task_id, input).await {
            tracing::error!(task_id, error = %e.message, "recording a task's change failed");
        }
    }

    /// Finds the task's shim and carries out what [`reconcile`] decides,
    /// recording a `recovered` event that says how. The row is handed back
    /// when no shim ever claimed the task: the caller launches it again.
    pub(super) async fn find_shim(self: &Arc<Self>, task_id: &str) -> Option<TaskRow> {
        let id = task_id.to_string();
        let row = match self
            .store
            .call(move |conn| store::get(conn, &id).map_err(ApiError::from))
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(task_id, error = %e.message, "reading a task to reconcile failed");
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
            Action::Follow {
                shim,
                start,
                resend_kill,
            } => {
                if start {
                    let s = Start {
                        shim_pid: shim.shim_pid,
                        shim_start_ticks: shim.shim_start_ticks,
                        pid: None,
                        pgid: None,
                        started_at: None,
                        by: StartedBy::ClaimAtRecovery,
                    };
                    self.record(task_id, Input::Start(s)).await;
                }
                if resend_kill {
                    // The kill may have been recorded but never reached the
                    // shim before a crash; a repeat is harmless.
                    let _ = self.task_dir(task_id).send_kill();
                }
                let me = Arc::clone(self);
                let id = task_id.to_string();
                tokio::spawn(
                    async move { me.watch(id, shim.shim_pid, shim.shim_start_ticks).await },
                );
            }
            Action::FinishFromDisk => self.finish_from_disk(task_id).await,
            Action::Unclaimed => return Some(row),
            Action::Nothing => {}
        }
        None
    }

    /// Finishes the task from its shim's `result.json`, or as a lost
    /// monitor when there is none.
    pub(super) async fn finish_from_disk(self: &Arc<Self>, task_id: &str) {
        let input = match read_outcome(&self.task_dir(task_id)) {
            Some(o) => Input::Finish(o, DecidedBy::Shim),
            None => Input::Finish(outcome::lost_monitor(&now()), DecidedBy::Runtime),
        };
        self.record(task_id, input).await;
    }

    /// Waits for the task's end, then finishes it. The end is whichever
    /// comes first: `result.json` renamed into the task dir (the shim's last
    /// act), or the shim's exit (a shim that dies without a result is a
    /// lost monitor).
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
        self.finish_from_disk(&task_id).await;
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

fn read_outcome(td: &super::files::TaskDir) -> Option<Outcome> {
    let bytes = td.read_result().ok()??;
    serde_json::from_slice(&bytes).ok()
}
