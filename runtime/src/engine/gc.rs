//! Retention GC: terminal tasks older than `--result-retention-secs` lose
//! their row, their events and their directory.
//!
//! One exception: a terminal task whose shim is still alive is kept. A
//! task launched with `keep_descendants` (OpenSandbox's bootstrap pattern)
//! ends when its main process exits while its shim stays, watching what
//! the task left running; the shim writes into the task's directory and
//! listens on its control FIFO, the only way to stop those processes. Such
//! a task is skipped and looked at again on later passes, until its shim
//! is gone. Only expired candidates are checked (one readlink and one
//! `/proc/<pid>/stat` read each), so a pass stays cheap.

use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::taskdir;

use super::files::TaskDir;
use super::Engine;
use super::EngineError;
use crate::store;

/// Rows deleted per transaction, so a large backlog never holds the
/// database lock for long.
const BATCH: u64 = 256;

/// What one GC pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcPass {
    /// Tasks deleted.
    pub deleted: usize,
    /// Expired tasks kept because their shim is still alive.
    pub kept: usize,
}

/// Whether the task in `td` still has a live shim (its claim names a
/// process that is alive and started at the recorded time). No claim, an
/// unreadable claim, or a dead shim: not alive.
fn shim_alive(td: &TaskDir) -> bool {
    matches!(td.read_claim(), Ok(Some(c)) if taskdir::is_alive(c.shim_pid, c.shim_start_ticks))
}

impl Engine {
    pub async fn gc_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.args.gc_interval_ms);
        loop {
            tokio::time::sleep(every).await;
            match self.gc_once().await {
                Ok(GcPass { deleted: 0, .. }) => {}
                Ok(p) => {
                    tracing::info!(
                        deleted = p.deleted,
                        kept = p.kept,
                        "expired tasks collected"
                    )
                }
                Err(e) => tracing::error!(error = %super::error_chain(&e), "gc pass failed"),
            }
        }
    }

    /// Deletes every expired task whose shim is gone; says how many were
    /// deleted and how many were kept for a live shim.
    pub async fn gc_once(&self) -> Result<GcPass, EngineError> {
        let retention_ms = self.cfg.args.result_retention_secs.saturating_mul(1000);
        let cutoff =
            chrono::Utc::now().timestamp_millis() - retention_ms.min(i64::MAX as u64) as i64;
        let mut pass = GcPass::default();
        let mut after: Option<(i64, String)> = None;
        loop {
            let tasks_dir = self.cfg.tasks_dir();
            let logs = std::sync::Arc::clone(&self.logs);
            let from = after.clone();
            let (scanned, deleted, kept, last) = self
                .store
                .call(move |conn| -> Result<_, EngineError> {
                    let found = store::expired(
                        conn,
                        cutoff,
                        from.as_ref().map(|(ms, id)| (*ms, id.as_str())),
                        BATCH,
                    )?;
                    let last = found.last().cloned().map(|(id, ms)| (ms, id));
                    // Checked here, on the database thread, right before the
                    // delete: a task's shim never comes back once gone.
                    let (keep, gone): (Vec<_>, Vec<_>) = found
                        .iter()
                        .map(|(id, _)| {
                            (id, TaskDir::new(&tasks_dir, id).with_cache(Arc::clone(&logs)))
                        })
                        .partition(|(_, td)| shim_alive(td));
                    for (id, _) in &keep {
                        tracing::debug!(task_id = %id, "expired task kept: its shim is alive");
                    }
                    let tx = store::begin_relaxed(conn)?;
                    for (id, _) in &gone {
                        store::delete(&tx, id)?;
                    }
                    store::commit(tx)?;
                    // Row first, then files: a crash in between leaves only
                    // an orphan directory, which a later submit of that id
                    // replaces. Removing here, on the database thread, keeps
                    // such a submit from interleaving with the removal.
                    for (id, td) in &gone {
                        if let Err(e) = td.remove() {
                            tracing::warn!(task_id = %id, error = %e, "removing an expired task dir failed");
                        }
                    }
                    Ok((found.len(), gone.len(), keep.len(), last))
                })
                .await?;
            pass.deleted += deleted;
            pass.kept += kept;
            if (scanned as u64) < BATCH {
                return Ok(pass);
            }
            after = last;
        }
    }
}
