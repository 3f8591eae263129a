//! Retention GC: terminal tasks older than `--result-retention-secs` lose
//! their row, their events and their directory.

use std::sync::Arc;
use std::time::Duration;

use super::files::TaskDir;
use super::Engine;
use super::EngineError;
use crate::store;

/// Rows deleted per transaction, so a large backlog never holds the
/// database lock for long.
const BATCH: u64 = 256;

impl Engine {
    pub async fn gc_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.args.gc_interval_ms);
        loop {
            tokio::time::sleep(every).await;
            match self.gc_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired tasks collected"),
                Err(e) => tracing::error!(error = %super::error_chain(&e), "gc pass failed"),
            }
        }
    }

    /// Deletes every expired task; returns how many.
    pub async fn gc_once(&self) -> Result<usize, EngineError> {
        let retention_ms = self.cfg.args.result_retention_secs.saturating_mul(1000);
        let cutoff =
            chrono::Utc::now().timestamp_millis() - retention_ms.min(i64::MAX as u64) as i64;
        let mut total = 0;
        loop {
            let tasks_dir = self.cfg.tasks_dir();
            let logs = std::sync::Arc::clone(&self.logs);
            let n = self
                .store
                .call(move |conn| -> Result<usize, EngineError> {
                    let ids = store::expired(conn, cutoff, BATCH)?;
                    let tx = store::begin_relaxed(conn)?;
                    for id in &ids {
                        store::delete(&tx, id)?;
                    }
                    store::commit(tx)?;
                    // Row first, then files: a crash in between leaves only
                    // an orphan directory, which a later submit of that id
                    // replaces. Removing here, on the database thread, keeps
                    // such a submit from interleaving with the removal.
                    for id in &ids {
                        let td = TaskDir::new(&tasks_dir, id).with_cache(Arc::clone(&logs));
                        if let Err(e) = td.remove() {
                            tracing::warn!(task_id = %id, error = %e, "removing an expired task dir failed");
                        }
                    }
                    Ok(ids.len())
                })
                .await?;
            total += n;
            if (n as u64) < BATCH {
                return Ok(total);
            }
        }
    }
}
