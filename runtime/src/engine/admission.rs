//! Admission: the ledger picks which queued tasks start, and each one
//! chosen goes through the lifecycle's `Admit` in the same visit to the
//! database thread. One path for both callers: the dispatcher, woken by a
//! submit or a finish (the poll interval is only a safety net), and a
//! submit that nothing older waits for, inside its own transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transition::persist;
use super::EngineError;
use super::{now, Engine};
use crate::ledger::Candidate;
use crate::store;
use crate::task::{self, Change, Input};

impl Engine {
    /// Runs forever: admit what fits, then sleep until woken.
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

    async fn dispatch_once(self: &Arc<Self>) -> Result<(), EngineError> {
        if self.with_ledger(|l| l.slots_free()) == 0 {
            return Ok(());
        }
        let me = Arc::clone(self);
        let admitted = self
            .store
            .call(move |conn| -> Result<Vec<Change>, EngineError> {
                let scan = me.with_ledger(|l| l.scan_limit(me.cfg.args.max_queued_tasks));
                // The ledger pulls queued rows one at a time and stops when
                // the slots are used: a pass reads what it admits, plus the
                // rows it passes over.
                let now = Instant::now();
                let (chosen, failed) = store::with_waiting(conn, scan, |queue| {
                    me.with_ledger(|l| l.admit(queue, now))
                });
                if let Some(e) = failed {
                    me.give_back_all(&chosen);
                    return Err(e.into());
                }
                if chosen.is_empty() {
                    return Ok(Vec::new());
                }
                let tx = match store::begin_relaxed(conn) {
                    Ok(tx) => tx,
                    Err(e) => {
                        me.give_back_all(&chosen);
                        return Err(e.into());
                    }
                };
                let changes = me.record_admitted(&tx, &chosen)?;
                store::commit(tx).inspect_err(|_| me.give_back(&changes))?;
                Ok(changes)
            })
            .await?;
        if admitted.is_empty() {
            return Ok(());
        }
        for change in &admitted {
            self.after_commit(change);
        }
        // More may fit (another pass finds out); wake ourselves once.
        self.wake();
        Ok(())
    }

    /// Asks the ledger which `candidates` start now and admits those in
    /// `tx` (see [`Self::record_admitted`]).
    pub(super) fn admit(
        &self,
        tx: &rusqlite::Transaction<'_>,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Change>, EngineError> {
        let chosen = self.with_ledger(|l| l.admit(candidates, Instant::now()));
        self.record_admitted(tx, &chosen)
    }

    /// Applies `Admit` in `tx` to each task the ledger chose (it holds
    /// their reservations). A chosen task that is no longer queued (killed
    /// meanwhile) gives its reservation back; so does every one on error.
    fn record_admitted(
        &self,
        tx: &rusqlite::Transaction<'_>,
        chosen: &[Candidate],
    ) -> Result<Vec<Change>, EngineError> {
        let mut changes = Vec::with_capacity(chosen.len());
        let ts = now();
        for c in chosen {
            let step = match store::get(tx, &c.task_id) {
                Ok(Some(row)) => task::step(&row, Input::Admit(c.reservation.clone()), &ts).ok(),
                Ok(None) => None,
                Err(e) => {
                    self.give_back_all(chosen);
                    return Err(e.into());
                }
            };
            match step {
                Some(change) => {
                    if let Err(e) = persist(tx, &self.task_dir(&c.task_id), &change, &ts) {
                        self.give_back_all(chosen);
                        return Err(e);
                    }
                    changes.push(change);
                }
                None => {
                    self.with_ledger(|l| l.release(&c.task_id));
                }
            }
        }
        Ok(changes)
    }

    /// The reservations of admissions that will not be committed.
    pub(super) fn give_back(&self, changes: &[Change]) {
        self.with_ledger(|l| {
            for c in changes {
                l.release(&c.row.task_id);
            }
        });
    }

    fn give_back_all(&self, chosen: &[Candidate]) {
        self.with_ledger(|l| {
            for c in chosen {
                l.release(&c.task_id);
            }
        });
    }
}
