//! Carries out the lifecycle's changes (`crate::task`): each one is
//! persisted in one transaction — the row, its events and, for outcomes the
//! runtime decides, `result.json` before the commit — then its effects run:
//! the ledger, the metrics, a kill to the shim, a launch.

use std::sync::Arc;

use execgo_runtime_protocol::TaskStatus;

use super::files::TaskDir;
use super::EngineError;
use super::{now, unix_ms, view, Engine};
use crate::store::{self, TaskRow};
use crate::task::{self, Change, Durability, Effect, Input, Unchanged};

impl Engine {
    /// Applies `input` to the task as stored now. `Ok(Err(_))` when it
    /// changed nothing (and why); an `Err` when the store failed.
    pub async fn transition(
        self: &Arc<Self>,
        task_id: &str,
        input: Input,
    ) -> Result<Result<Change, Unchanged>, EngineError> {
        let durability = input.durability();
        let starting = matches!(input, Input::Start(_));
        let id = task_id.to_string();
        let td = self.task_dir(task_id);
        type Recorded = Result<store::Committed<Result<Change, Unchanged>>, EngineError>;
        let record = move |tx: &rusqlite::Transaction<'_>| -> Recorded {
            let done = |value| store::Committed { value, undo: None };
            let Some(row) = store::get(tx, &id)? else {
                return Ok(done(Err(Unchanged::Over)));
            };
            let ts = now();
            let change = match task::step(&row, input, &ts) {
                Ok(c) => c,
                Err(u) => return Ok(done(Err(u))),
            };
            persist(tx, &td, &change, &ts)?;
            Ok(done(Ok(change)))
        };
        let res: Result<Change, Unchanged> = match durability {
            Durability::Durable => self.store.durable(record).await?,
            Durability::Relaxed => self.store.relaxed(record).await?,
        };
        if let Ok(change) = &res {
            if starting {
                self.note_started(&change.row);
            }
            self.after_commit(change);
        }
        Ok(res)
    }

    /// What a committed change asks for outside the database.
    pub(super) fn after_commit(self: &Arc<Self>, change: &Change) {
        let id = &change.row.task_id;
        self.changes.changed(id);
        for effect in &change.effects {
            match effect {
                Effect::WriteResult => {}
                Effect::Release => {
                    self.with_ledger(|l| l.release(id));
                }
                Effect::ForgetWaiting => self.with_ledger(|l| l.forget_waiting(id)),
                Effect::SignalShim => match self.task_dir(id).send_kill() {
                    Ok(true) => tracing::info!(task_id = %id, "kill sent to shim"),
                    Ok(false) => tracing::warn!(task_id = %id, "no shim listening for the kill"),
                    Err(e) => {
                        tracing::error!(task_id = %id, error = %e, "sending kill to shim failed")
                    }
                },
                Effect::Launch => {
                    tracing::debug!(task_id = %id, "launch admitted");
                    let me = Arc::clone(self);
                    let row = change.row.clone();
                    tokio::spawn(async move { me.launch(row).await });
                }
            }
        }
        if change.finished {
            let row = &change.row;
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
            tracing::info!(task_id = %id, status = row.status.as_str(), "task finished");
            // A slot may be free now.
            self.wake();
        }
    }

    fn note_started(&self, row: &TaskRow) {
        tracing::info!(task_id = %row.task_id, shim_pid = ?row.shim_pid, pid = ?row.pid, "task started");
        self.metrics.status(TaskStatus::Running);
        if let Ok(created) = chrono::DateTime::parse_from_rfc3339(&row.created_at) {
            let waited = chrono::Utc::now() - created.with_timezone(&chrono::Utc);
            self.metrics
                .dispatch_latency_seconds
                .observe(waited.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
    }
}

/// Writes a change in `tx`: the runtime's `result.json` first when the
/// change calls for it (so a terminal status is never visible without it),
/// then the row and its events.
pub(super) fn persist(
    tx: &rusqlite::Transaction<'_>,
    td: &TaskDir,
    change: &Change,
    ts: &str,
) -> Result<(), EngineError> {
    if change.has(Effect::WriteResult) {
        let body = view::status_body(td, &change.row);
        let bytes = serde_json::to_vec_pretty(&body)
            .map_err(|e| EngineError::Internal(format!("encoding result.json: {e}")))?;
        td.write_result(&bytes)
            .map_err(|e| EngineError::storage("writing result.json", e))?;
    }
    for ev in &change.events {
        store::append_event(tx, &change.row.task_id, ts, ev)?;
    }
    let finished_ms = change.finished.then(|| unix_ms(ts)).flatten();
    store::update(tx, &change.row, finished_ms)?;
    Ok(())
}
