//! Restart reconciliation: every task the database says was handed to a
//! shim is re-attached to that shim, finalized from its `result.json`, or
//! requeued when no shim ever claimed it. Each case appends `recovered`.

use std::sync::Arc;

use execgo_runtime_protocol::taskdir::{self, ClaimRecord};
use execgo_runtime_protocol::TaskStatus;

use super::dispatch::reservation_of;
use super::{now, Engine};
use crate::api::error::ApiError;
use crate::store::{self, NewEvent};

impl Engine {
    /// Reconciles the database with the shims on disk. Runs once at start,
    /// before the dispatcher.
    pub async fn recover(self: &Arc<Self>) -> Result<(), ApiError> {
        let running = self
            .store
            .call(|conn| store::list_status(conn, TaskStatus::Running).map_err(ApiError::from))
            .await?;
        let accepted = self
            .store
            .call(|conn| store::list_status(conn, TaskStatus::Accepted).map_err(ApiError::from))
            .await?;
        // The ledger is rebuilt exactly from the rows holding reservations.
        self.with_ledger(|l| {
            for row in running
                .iter()
                .chain(accepted.iter().filter(|r| r.launch_attempted))
            {
                let r = row
                    .reservation
                    .clone()
                    .unwrap_or_else(|| reservation_of(row));
                l.reserve(&row.task_id, row.tenant.clone(), r);
            }
        });
        for row in running {
            let alive = match (row.shim_pid, row.shim_start_ticks) {
                (Some(pid), Some(ticks)) if taskdir::is_alive(pid, ticks) => Some((pid, ticks)),
                _ => None,
            };
            let msg = if alive.is_some() {
                "runtime restarted; re-attached to the running shim"
            } else {
                "runtime restarted; the shim had exited, finalizing from its result"
            };
            self.note_recovered(&row.task_id, msg).await;
            let me = Arc::clone(self);
            let id = row.task_id.clone();
            match alive {
                Some((pid, ticks)) => {
                    if row.kill_requested {
                        // The kill may have been recorded but never reached
                        // the shim before the crash; a repeat is harmless.
                        let _ = me.task_dir(&id).send_kill();
                    }
                    tokio::spawn(async move { me.watch(id, pid, ticks).await });
                }
                None => me.finalize(&id, None).await,
            }
        }
        // In the background, so none holds up the start. The dispatcher
        // skips these rows (they carry a launch record).
        for row in accepted.into_iter().filter(|r| r.launch_attempted) {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.recover_one(&row.task_id).await });
        }
        Ok(())
    }

    /// A task handed to the helper whose launch reply never arrived: follow
    /// the shim that claimed it, or launch it again when none did (the
    /// claim makes that safe). The task holds its reservation throughout.
    pub(super) async fn recover_one(self: &Arc<Self>, task_id: &str) {
        let td = self.task_dir(task_id);
        let claim = td.read_claim().ok().flatten();
        let Some(claim) = claim else {
            self.note_recovered(
                task_id,
                "launch was interrupted before any shim claimed the task; launching again",
            )
            .await;
            let id = task_id.to_string();
            let row = self
                .store
                .call(move |conn| store::get(conn, &id).map_err(ApiError::from))
                .await;
            match row {
                Ok(Some(row)) if row.status == TaskStatus::Accepted => {
                    let me = Arc::clone(self);
                    tokio::spawn(async move { me.launch(row).await });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(task_id, error = %e.message, "reading a task to relaunch failed")
                }
            }
            return;
        };
        self.follow_claim(task_id, claim).await;
    }

    /// A shim claimed the task: re-attach to it while it lives, else
    /// finalize from its result.
    pub(super) async fn follow_claim(self: &Arc<Self>, task_id: &str, claim: ClaimRecord) {
        let alive = Some(claim).filter(|c| taskdir::is_alive(c.shim_pid, c.shim_start_ticks));
        match alive {
            Some(c) => {
                self.note_recovered(task_id, "re-attached to the shim that claimed the task")
                    .await;
                if self.mark_running_from_claim(task_id, &c).await {
                    let _ = self.task_dir(task_id).send_kill();
                }
                let me = Arc::clone(self);
                let id = task_id.to_string();
                tokio::spawn(async move { me.watch(id, c.shim_pid, c.shim_start_ticks).await });
            }
            None => {
                self.note_recovered(
                    task_id,
                    "the shim that claimed the task has exited; finalizing from its result",
                )
                .await;
                self.finalize(task_id, None).await;
            }
        }
    }

    /// Records the claimed shim as running; `true` when a kill was requested
    /// meanwhile and must be forwarded to it.
    async fn mark_running_from_claim(&self, task_id: &str, c: &ClaimRecord) -> bool {
        let id = task_id.to_string();
        let (pid, ticks) = (c.shim_pid, c.shim_start_ticks);
        let res = self
            .store
            .call(move |conn| -> Result<bool, ApiError> {
                let tx = store::begin_relaxed(conn)?;
                let mut kill = false;
                if let Some(mut row) = store::get(&tx, &id)? {
                    kill = row.kill_requested;
                    if row.status == TaskStatus::Accepted {
                        let ts = now();
                        row.status = TaskStatus::Running;
                        row.started_at = Some(ts.clone());
                        row.updated_at = ts;
                        row.shim_pid = Some(pid);
                        row.shim_start_ticks = Some(ticks);
                        store::append_event(
                            &tx,
                            &id,
                            &row.updated_at,
                            &NewEvent::new("started")
                                .message("task process started (found running after a restart)")
                                .data(serde_json::json!({ "shim_pid": pid })),
                        )?;
                        store::update(&tx, &row, None)?;
                    }
                }
                store::commit(tx)?;
                Ok(kill)
            })
            .await;
        match res {
            Ok(kill) => kill,
            Err(e) => {
                tracing::error!(task_id, error = %e.message, "recording a recovered shim failed");
                false
            }
        }
    }

    async fn note_recovered(&self, task_id: &str, message: &'static str) {
        tracing::info!(task_id, message, "recovered");
        let id = task_id.to_string();
        let res = self
            .store
            .call(move |conn| -> Result<(), ApiError> {
                let tx = store::begin_relaxed(conn)?;
                store::append_event(
                    &tx,
                    &id,
                    &now(),
                    &NewEvent::new("recovered").message(message),
                )?;
                store::commit(tx)?;
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::error!(task_id, error = %e.message, "recording recovery failed");
        }
    }
}
