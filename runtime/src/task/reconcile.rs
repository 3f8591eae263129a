//! Finding a launched task's shim again: after a restart, after a lost
//! launch reply, or when a launch found the task claimed already. A pure
//! decision from the stored row, the claim in its task directory and
//! whether a process is alive; the engine carries it out.

use execgo_runtime_protocol::taskdir::ClaimRecord;

use super::Phase;
use crate::store::TaskRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Its shim lives: watch it (its `started` records the start, if the
    /// row does not have it yet); `resend_kill` when a kill was recorded
    /// that the shim may never have received.
    Follow {
        shim: ClaimRecord,
        resend_kill: bool,
    },
    /// Its shim is gone: finish from its `result.json`, or as a lost
    /// monitor when there is none.
    FinishFromDisk,
    /// No shim ever claimed it: it may be launched again.
    Unclaimed,
    /// Nothing to find: queued or terminal.
    Nothing,
}

/// What to do, and the message of the `recovered` event that records it.
pub fn reconcile(
    row: &TaskRow,
    claim: Option<ClaimRecord>,
    alive: impl Fn(i32, u64) -> bool,
) -> (Action, &'static str) {
    match Phase::of(row) {
        Phase::Running => {
            let shim = ClaimRecord {
                shim_pid: row.shim_pid.unwrap_or(0),
                shim_start_ticks: row.shim_start_ticks.unwrap_or(0),
            };
            if alive(shim.shim_pid, shim.shim_start_ticks) {
                (
                    Action::Follow {
                        shim,
                        resend_kill: row.kill_requested,
                    },
                    "runtime restarted; re-attached to the running shim",
                )
            } else {
                (
                    Action::FinishFromDisk,
                    "runtime restarted; the shim had exited, finalizing from its result",
                )
            }
        }
        Phase::Launching => match claim {
            Some(c) if alive(c.shim_pid, c.shim_start_ticks) => (
                Action::Follow {
                    shim: c,
                    resend_kill: false,
                },
                "re-attached to the shim that claimed the task",
            ),
            Some(_) => (
                Action::FinishFromDisk,
                "the shim that claimed the task has exited; finalizing from its result",
            ),
            None => (
                Action::Unclaimed,
                "launch was interrupted before any shim claimed the task; launching again",
            ),
        },
        Phase::Queued | Phase::Terminal => (Action::Nothing, ""),
    }
}
