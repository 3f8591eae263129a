//! Restart reconciliation: the ledger is rebuilt from the rows that hold a
//! reservation, then every task the database says was handed to a shim is
//! re-attached to it, finished from its `result.json`, or launched again
//! when no shim ever claimed it (`task::reconcile` decides; each case
//! appends `recovered`).

use std::sync::Arc;

use execgo_runtime_protocol::TaskStatus;

use super::Engine;
use super::EngineError;
use crate::ledger::Reservation;
use crate::store;
use crate::task::Phase;

impl Engine {
    /// Runs once at start, before the dispatcher.
    pub async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        let mut held = Vec::new();
        for status in [TaskStatus::Running, TaskStatus::Accepted] {
            let rows = self
                .store
                .call(move |conn| store::list_status(conn, status).map_err(EngineError::from))
                .await?;
            held.extend(rows.into_iter().filter(|r| Phase::of(r) != Phase::Queued));
        }
        self.with_ledger(|l| {
            for row in &held {
                let limits = &row.request.limits;
                let r = row.reservation.clone().unwrap_or_else(|| {
                    Reservation::for_limits(limits.memory_bytes, limits.pids_max)
                });
                l.reserve(&row.task_id, row.tenant.clone(), r);
            }
        });
        for row in held {
            if Phase::of(&row) == Phase::Running {
                // A running task always has a shim on record: never relaunched.
                let _ = self.find_shim(&row.task_id).await;
            } else {
                // Launches are followed in the background, so none holds up
                // the start; the dispatcher leaves them alone (they carry a
                // launch record).
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    if let Some(row) = me.find_shim(&row.task_id).await {
                        me.launch(row).await;
                    }
                });
            }
        }
        Ok(())
    }
}
