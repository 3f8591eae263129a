//! The task lifecycle: the one place that decides how a task's stored state
//! changes. [`Phase`] names the states, [`step`] is the only transition
//! function: from the row as stored and one [`Input`] it computes the row to
//! store, the events to append, how durable the commit must be and what the
//! engine must do once it is committed. It does no I/O; submit, dispatch,
//! launch, recovery and kill only call it (through `Engine::transition`).
//!
//! ```text
//!            admit              start
//!  Queued ───────────► Launching ─────► Running
//!    │                    │               │
//!    │ kill (cancel now)  │ finish        │ finish
//!    └────────────────────┴───────────────┴──────► Terminal
//! ```
//!
//! `kill_requested` is a flag beside the phase: it cancels a queued task at
//! once, is held for a launching task until it runs (or is cancelled when
//! no shim ever claimed it), and is forwarded to a running task's shim.

pub mod outcome;
pub mod reconcile;

use execgo_runtime_protocol::{Outcome, TaskStatus};

use crate::ledger::Reservation;
use crate::model::{ExecutionPlan, SubmitTaskRequest};
use crate::store::{NewEvent, TaskRow};

/// Where a task is in its life. Derived from the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted and waiting for the ledger.
    Queued,
    /// Admitted: its reservation is held and its launch recorded; a shim
    /// may or may not have claimed it yet.
    Launching,
    /// A shim claimed it and started its process.
    Running,
    /// `success`, `failed` or `cancelled`; never changes again.
    Terminal,
}

impl Phase {
    pub fn of(row: &TaskRow) -> Phase {
        match row.status {
            TaskStatus::Accepted if row.launch_attempted => Phase::Launching,
            TaskStatus::Accepted => Phase::Queued,
            TaskStatus::Running => Phase::Running,
            _ => Phase::Terminal,
        }
    }
}

/// A shim's start: from its launch reply, or from its claim found after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
    pub pid: Option<i32>,
    pub pgid: Option<i32>,
    pub started_at: Option<String>,
    /// The uid the task runs as, when the launch reply named it.
    pub task_uid: Option<u32>,
    pub by: StartedBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedBy {
    LaunchReply,
    ClaimAtRecovery,
}

/// Who decided an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The shim, in its fsynced `result.json`: the commit may be relaxed.
    Shim,
    /// The runtime (launch refused, monitor lost, cancelled before start):
    /// nothing else on disk holds it, so the runtime writes `result.json`
    /// and the commit is fsynced.
    Runtime,
}

/// What happens to a task.
#[derive(Debug, Clone)]
pub enum Input {
    /// The ledger admitted it: record the launch and the reservation.
    Admit(Reservation),
    /// Its shim started it.
    Start(Start),
    /// A client asked to kill it.
    Kill,
    /// It ended.
    Finish(Outcome, DecidedBy),
    /// A restarted runtime reconciled it; the message says how.
    Recovered(&'static str),
}

/// How the commit of a change reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsynced before anyone relies on it: nothing else on disk restores it.
    Durable,
    /// Durable with the next fsynced commit: recovery can rebuild it from
    /// the task directory.
    Relaxed,
}

impl Input {
    /// Known before the row is read, so the caller can pick the commit.
    pub fn durability(&self) -> Durability {
        match self {
            Input::Kill | Input::Finish(_, DecidedBy::Runtime) => Durability::Durable,
            Input::Admit(_) | Input::Start(_) | Input::Finish(_, DecidedBy::Shim) => {
                Durability::Relaxed
            }
            Input::Recovered(_) => Durability::Relaxed,
        }
    }
}

/// What the engine does once a change is committed (or, for
/// [`Effect::WriteResult`], inside the commit, before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Write the runtime's `result.json` from the new row before the
    /// commit: a terminal status is never visible without it.
    WriteResult,
    /// Give the task's reservation back to the ledger.
    Release,
    /// The task left the queue without a reservation: forget its wait.
    ForgetWaiting,
    /// Hand it to the helper.
    Launch,
    /// Write the kill byte to its shim's control FIFO.
    SignalShim,
}

/// A transition to persist.
#[derive(Debug, Clone)]
pub struct Change {
    pub row: TaskRow,
    pub events: Vec<NewEvent>,
    pub effects: Vec<Effect>,
    /// Whether the task became terminal in this change.
    pub finished: bool,
}

impl Change {
    fn new(row: TaskRow) -> Change {
        Change {
            row,
            events: Vec::new(),
            effects: Vec::new(),
            finished: false,
        }
    }

    fn event(mut self, ev: NewEvent) -> Change {
        self.events.push(ev);
        self
    }

    fn effect(mut self, e: Effect) -> Change {
        self.effects.push(e);
        self
    }

    pub fn has(&self, e: Effect) -> bool {
        self.effects.contains(&e)
    }
}

/// Why an input changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// Terminal already: nothing changes a finished task.
    Over,
    /// The input does not apply in this phase (a start for a task already
    /// running, an admission of a killed or launched task).
    NotApplicable(Phase),
    /// A repeated kill of a task whose kill is recorded already; the
    /// engine may still resend it to a running shim.
    KillAlreadyRecorded(Phase),
}

/// A task as accepted at submit, with its `submitted`, `accepted`,
/// `planned` (and `degraded`) events: the first change of every task.
pub fn create(
    task_id: String,
    request: SubmitTaskRequest,
    plan: ExecutionPlan,
    ts: &str,
) -> Change {
    let cc = request.control_context.clone().unwrap_or_default();
    let mut events = vec![
        NewEvent::new("submitted").message("task submitted"),
        NewEvent::new("accepted").message("task accepted and persisted"),
        NewEvent::new("planned")
            .message("execution plan resolved")
            .data(serde_json::to_value(&plan).unwrap_or_default()),
    ];
    if plan.degraded {
        events.push(
            NewEvent::new("degraded")
                .message(plan.fallback_reasons.join("; "))
                .data(serde_json::json!({ "fallback_reasons": plan.fallback_reasons })),
        );
    }
    let row = TaskRow {
        task_id,
        status: TaskStatus::Accepted,
        created_at: ts.to_string(),
        updated_at: ts.to_string(),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        shim_pid: None,
        shim_start_ticks: None,
        pid: None,
        pgid: None,
        task_uid: None,
        exit_code: None,
        exit_signal: None,
        error: None,
        usage: None,
        request,
        plan,
        reservation: None,
        reserved_at: None,
        released: false,
        tenant: cc.tenant,
        owner: cc.owner,
        kill_requested: false,
        launch_attempted: false,
        launch: Default::default(),
    };
    Change {
        row,
        events,
        effects: Vec::new(),
        finished: false,
    }
}

/// The one transition function. `ts` is the time the change is recorded.
pub fn step(row: &TaskRow, input: Input, ts: &str) -> Result<Change, Unchanged> {
    let phase = Phase::of(row);
    if phase == Phase::Terminal {
        return Err(Unchanged::Over);
    }
    let mut next = row.clone();
    next.updated_at = ts.to_string();
    match input {
        Input::Admit(reservation) => {
            if phase != Phase::Queued || row.kill_requested {
                return Err(Unchanged::NotApplicable(phase));
            }
            next.launch_attempted = true;
            next.reservation = Some(reservation.clone());
            next.reserved_at = Some(ts.to_string());
            Ok(Change::new(next)
                .event(
                    NewEvent::new("resource_reserved")
                        .message("resources reserved")
                        .data(serde_json::to_value(&reservation).unwrap_or_default()),
                )
                .effect(Effect::Launch))
        }
        Input::Start(s) => {
            if phase != Phase::Launching {
                return Err(Unchanged::NotApplicable(phase));
            }
            next.status = TaskStatus::Running;
            next.started_at = s.started_at.clone().or_else(|| Some(ts.to_string()));
            next.shim_pid = Some(s.shim_pid);
            next.shim_start_ticks = Some(s.shim_start_ticks);
            next.pid = s.pid;
            next.pgid = s.pgid;
            next.task_uid = s.task_uid.or(next.task_uid);
            let message = match s.by {
                StartedBy::LaunchReply => "task process started",
                StartedBy::ClaimAtRecovery => {
                    "task process started (found running after a restart)"
                }
            };
            let data = match s.pid {
                Some(pid) => serde_json::json!({
                    "pid": pid, "pgid": s.pgid, "shim_pid": s.shim_pid
                }),
                None => serde_json::json!({ "shim_pid": s.shim_pid }),
            };
            let mut c =
                Change::new(next).event(NewEvent::new("started").message(message).data(data));
            if row.kill_requested {
                c = c.effect(Effect::SignalShim);
            }
            Ok(c)
        }
        Input::Kill => {
            if row.kill_requested {
                return Err(Unchanged::KillAlreadyRecorded(phase));
            }
            next.kill_requested = true;
            let requested = NewEvent::new("kill_requested").message("kill requested");
            match phase {
                Phase::Queued => {
                    let mut c = finish(
                        next,
                        &outcome::cancelled_before_start(ts),
                        DecidedBy::Runtime,
                    );
                    c.events.insert(0, requested);
                    Ok(c.effect(Effect::ForgetWaiting))
                }
                Phase::Launching => Ok(Change::new(next).event(requested)),
                Phase::Running => Ok(Change::new(next)
                    .event(requested)
                    .effect(Effect::SignalShim)),
                Phase::Terminal => Err(Unchanged::Over),
            }
        }
        Input::Finish(outcome, by) => Ok(finish(next, &outcome, by)),
        Input::Recovered(message) => {
            // Only the event: the row stays as it is.
            let mut c = Change::new(row.clone()).event(NewEvent::new("recovered").message(message));
            c.row.updated_at = row.updated_at.clone();
            Ok(c)
        }
    }
}

/// The terminal change: the outcome applied, then `timeout_triggered` (if
/// the limit fired), `resource_released` (if a reservation is held) and the
/// terminal event.
fn finish(mut row: TaskRow, o: &Outcome, by: DecidedBy) -> Change {
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
    row.task_uid = o.task_uid.or(row.task_uid);
    row.exit_code = o.exit_code;
    row.exit_signal = o.exit_signal;
    row.error = o.error.clone();
    row.usage = o.usage.clone();
    let mut events = Vec::new();
    if o.timed_out {
        events.push(NewEvent::new("timeout_triggered").message(format!(
            "wall time limit of {} ms reached",
            row.request.limits.wall_time_ms
        )));
    }
    let mut effects = Vec::new();
    if by == DecidedBy::Runtime {
        effects.push(Effect::WriteResult);
    }
    if let (Some(r), false) = (&row.reservation, row.released) {
        events.push(
            NewEvent::new("resource_released")
                .message("resources released")
                .data(serde_json::to_value(r).unwrap_or_default()),
        );
        row.released = true;
        effects.push(Effect::Release);
    }
    let (kind, msg) = match row.status {
        TaskStatus::Success => ("finished", "task finished successfully".to_string()),
        TaskStatus::Cancelled => (
            "cancelled",
            row.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "task cancelled".to_string()),
        ),
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
    events.push(ev);
    Change {
        row,
        events,
        effects,
        finished: true,
    }
}

#[cfg(test)]
pub mod tests;
