//! Every transition of the lifecycle, and every decision recovery takes.

use execgo_runtime_protocol::taskdir::ClaimRecord;
use execgo_runtime_protocol::{Outcome, TaskErrorCode, TaskStatus};

use super::reconcile::{reconcile, Action};
use super::*;
use crate::plan;

const T0: &str = "2026-01-01T00:00:00.000Z";
const T1: &str = "2026-01-01T00:00:01.000Z";

fn queued() -> TaskRow {
    let req: SubmitTaskRequest = serde_json::from_value(serde_json::json!({
        "execution": {"kind": "command", "program": "/bin/true"},
        "limits": {"memory_bytes": 1024},
        "control_context": {"tenant": "a", "owner": "o"}
    }))
    .unwrap();
    let plan = plan::resolve(
        &req,
        crate::model::CapabilityMode::Adaptive,
        &plan::PROCESS_HOST,
        &[],
    )
    .unwrap();
    create("t1".into(), req, plan, T0).row
}

fn reservation() -> Reservation {
    Reservation {
        task_slots: 1,
        memory_bytes: Some(1024),
        pids: None,
    }
}

fn types(c: &Change) -> Vec<&'static str> {
    c.events.iter().map(|e| e.event_type).collect()
}

fn launching() -> TaskRow {
    step(&queued(), Input::Admit(reservation()), T0)
        .unwrap()
        .row
}

fn start(by: StartedBy) -> Start {
    Start {
        shim_pid: 10,
        shim_start_ticks: 20,
        pid: Some(11),
        pgid: Some(11),
        started_at: Some(T1.into()),
        task_uid: Some(1_879_048_200),
        by,
    }
}

fn running() -> TaskRow {
    step(
        &launching(),
        Input::Start(start(StartedBy::LaunchReply)),
        T1,
    )
    .unwrap()
    .row
}

fn shim_outcome(status: TaskStatus, timed_out: bool) -> Outcome {
    Outcome {
        status,
        started_at: Some(T1.into()),
        finished_at: "2026-01-01T00:00:02.000Z".into(),
        duration_ms: Some(1000),
        shim_pid: Some(10),
        pid: Some(11),
        pgid: Some(11),
        exit_code: Some(0),
        exit_signal: None,
        error: None,
        usage: None,
        kill_requested: false,
        timed_out,
        task_uid: None,
    }
}

#[test]
fn create_accepts_with_the_submit_events() {
    let c = create("t1".into(), queued().request, queued().plan, T0);
    assert_eq!(Phase::of(&c.row), Phase::Queued);
    assert_eq!(types(&c), ["submitted", "accepted", "planned"]);
    assert_eq!(c.row.tenant.as_deref(), Some("a"));
    assert_eq!(c.row.owner.as_deref(), Some("o"));
    assert!(c.effects.is_empty() && !c.finished);
}

#[test]
fn admit_records_the_launch_and_the_reservation() {
    let c = step(&queued(), Input::Admit(reservation()), T1).unwrap();
    assert_eq!(Phase::of(&c.row), Phase::Launching);
    assert_eq!(c.row.reservation, Some(reservation()));
    assert_eq!(c.row.reserved_at.as_deref(), Some(T1));
    assert_eq!(types(&c), ["resource_reserved"]);
    assert_eq!(c.effects, [Effect::Launch]);
    assert_eq!(
        Input::Admit(reservation()).durability(),
        Durability::Relaxed
    );
    // Only a queued task that nobody killed is admitted.
    assert_eq!(
        step(&launching(), Input::Admit(reservation()), T1).unwrap_err(),
        Unchanged::NotApplicable(Phase::Launching)
    );
    let mut killed = queued();
    killed.kill_requested = true;
    assert!(step(&killed, Input::Admit(reservation()), T1).is_err());
}

#[test]
fn start_from_a_launch_reply_or_a_claim() {
    let c = step(
        &launching(),
        Input::Start(start(StartedBy::LaunchReply)),
        T1,
    )
    .unwrap();
    assert_eq!(Phase::of(&c.row), Phase::Running);
    assert_eq!(
        (c.row.shim_pid, c.row.pid, c.row.pgid),
        (Some(10), Some(11), Some(11))
    );
    assert_eq!(c.row.shim_start_ticks, Some(20));
    assert_eq!(
        c.row.task_uid,
        Some(1_879_048_200),
        "the launch reply's uid"
    );
    assert_eq!(c.row.started_at.as_deref(), Some(T1));
    assert_eq!(types(&c), ["started"]);
    assert_eq!(c.events[0].message.as_deref(), Some("task process started"));
    assert!(c.effects.is_empty());
    // A claim found after a restart knows no task pid; the start time is
    // when it was found.
    let found = Start {
        pid: None,
        pgid: None,
        started_at: None,
        ..start(StartedBy::ClaimAtRecovery)
    };
    let c = step(&launching(), Input::Start(found), T1).unwrap();
    assert_eq!(c.row.started_at.as_deref(), Some(T1));
    assert_eq!(c.row.pid, None);
    assert_eq!(c.events[0].data, Some(serde_json::json!({"shim_pid": 10})));
    assert!(c.events[0]
        .message
        .as_deref()
        .unwrap()
        .contains("after a restart"));
    // A kill recorded while launching goes to the shim once it runs.
    let mut killed = launching();
    killed.kill_requested = true;
    let c = step(&killed, Input::Start(start(StartedBy::LaunchReply)), T1).unwrap();
    assert_eq!(c.effects, [Effect::SignalShim]);
    // Not twice, and never for a task that was not launched.
    assert!(step(&running(), Input::Start(start(StartedBy::LaunchReply)), T1).is_err());
    assert!(step(&queued(), Input::Start(start(StartedBy::LaunchReply)), T1).is_err());
}

#[test]
fn kill_cancels_a_queued_task_at_once() {
    let c = step(&queued(), Input::Kill, T1).unwrap();
    assert_eq!(c.row.status, TaskStatus::Cancelled);
    assert!(c.finished && c.row.kill_requested);
    assert_eq!(types(&c), ["kill_requested", "cancelled"]);
    assert_eq!(c.effects, [Effect::WriteResult, Effect::ForgetWaiting]);
    assert_eq!(c.row.error.as_ref().unwrap().code, TaskErrorCode::Cancelled);
    assert_eq!(c.row.started_at, None);
    assert_eq!(Input::Kill.durability(), Durability::Durable);
}

#[test]
fn kill_of_a_launching_task_is_recorded_and_held() {
    let c = step(&launching(), Input::Kill, T1).unwrap();
    assert_eq!(Phase::of(&c.row), Phase::Launching);
    assert!(c.row.kill_requested);
    assert_eq!(types(&c), ["kill_requested"]);
    assert!(c.effects.is_empty());
}

#[test]
fn kill_of_a_running_task_goes_to_its_shim_once() {
    let c = step(&running(), Input::Kill, T1).unwrap();
    assert_eq!(c.effects, [Effect::SignalShim]);
    assert_eq!(types(&c), ["kill_requested"]);
    assert_eq!(
        step(&c.row, Input::Kill, T1).unwrap_err(),
        Unchanged::KillAlreadyRecorded(Phase::Running)
    );
}

#[test]
fn finish_from_the_shims_result() {
    let c = step(
        &running(),
        Input::Finish(shim_outcome(TaskStatus::Success, false), DecidedBy::Shim),
        T1,
    )
    .unwrap();
    assert!(c.finished);
    assert_eq!(c.row.status, TaskStatus::Success);
    assert_eq!(c.row.duration_ms, Some(1000));
    assert_eq!(types(&c), ["resource_released", "finished"]);
    assert_eq!(c.effects, [Effect::Release]);
    assert!(c.row.released);
    assert_eq!(
        Input::Finish(shim_outcome(TaskStatus::Success, false), DecidedBy::Shim).durability(),
        Durability::Relaxed
    );
    // A timeout is said before the release.
    let mut o = shim_outcome(TaskStatus::Failed, true);
    o.error = Some(execgo_runtime_protocol::TaskError::new(
        TaskErrorCode::Timeout,
        "wall time limit exceeded",
    ));
    let c = step(&running(), Input::Finish(o, DecidedBy::Shim), T1).unwrap();
    assert_eq!(
        types(&c),
        ["timeout_triggered", "resource_released", "failed"]
    );
    assert_eq!(
        c.events[2].data,
        Some(serde_json::json!({"code": "timeout"}))
    );
}

#[test]
fn finish_decided_by_the_runtime_writes_the_result() {
    let o = outcome::launch_refused(TaskErrorCode::LaunchFailed, "no such program".into(), T1);
    let input = Input::Finish(o, DecidedBy::Runtime);
    assert_eq!(input.durability(), Durability::Durable);
    let c = step(&launching(), input, T1).unwrap();
    assert_eq!(c.row.status, TaskStatus::Failed);
    assert_eq!(c.row.started_at, None);
    assert_eq!(types(&c), ["resource_released", "failed"]);
    assert_eq!(c.effects, [Effect::WriteResult, Effect::Release]);
    // A lost monitor of a running task.
    let c = step(
        &running(),
        Input::Finish(outcome::lost_monitor(T1), DecidedBy::Runtime),
        T1,
    )
    .unwrap();
    assert_eq!(c.row.error.unwrap().code, TaskErrorCode::Internal);
    assert_eq!(c.row.shim_pid, Some(10), "what was known is kept");
    // Cancelled before start, the same whichever path decided it.
    let mut killed = launching();
    killed.kill_requested = true;
    let c = step(
        &killed,
        Input::Finish(outcome::cancelled_before_start(T1), DecidedBy::Runtime),
        T1,
    )
    .unwrap();
    assert_eq!(types(&c), ["resource_released", "cancelled"]);
    assert_eq!(
        c.events[1].message.as_deref(),
        Some("task was cancelled before it started")
    );
}

#[test]
fn nothing_changes_a_terminal_task() {
    let done = step(
        &running(),
        Input::Finish(shim_outcome(TaskStatus::Success, false), DecidedBy::Shim),
        T1,
    )
    .unwrap()
    .row;
    for input in [
        Input::Admit(reservation()),
        Input::Start(start(StartedBy::LaunchReply)),
        Input::Kill,
        Input::Finish(outcome::lost_monitor(T1), DecidedBy::Runtime),
        Input::Recovered("x"),
    ] {
        assert_eq!(step(&done, input, T1).unwrap_err(), Unchanged::Over);
    }
}

#[test]
fn recovered_is_an_event_only() {
    let before = running();
    let c = step(&before, Input::Recovered("re-attached"), T1).unwrap();
    assert_eq!(types(&c), ["recovered"]);
    assert_eq!(c.row.updated_at, before.updated_at);
    assert_eq!(c.row.status, before.status);
    assert!(c.effects.is_empty());
}

fn claim(pid: i32) -> ClaimRecord {
    ClaimRecord {
        shim_pid: pid,
        shim_start_ticks: 20,
    }
}

#[test]
fn recovery_follows_a_running_shim_or_finishes() {
    let alive = |pid: i32, ticks: u64| pid == 10 && ticks == 20;
    let (a, msg) = reconcile(&running(), None, alive);
    assert_eq!(
        a,
        Action::Follow {
            shim: claim(10),
            resend_kill: false
        }
    );
    assert!(msg.contains("re-attached to the running shim"));
    let mut killed = running();
    killed.kill_requested = true;
    assert!(matches!(
        reconcile(&killed, None, alive).0,
        Action::Follow {
            resend_kill: true,
            ..
        }
    ));
    let (a, msg) = reconcile(&running(), None, |_, _| false);
    assert_eq!(a, Action::FinishFromDisk);
    assert!(msg.contains("the shim had exited"));
}

#[test]
fn recovery_of_a_launch_follows_its_claim() {
    let alive = |pid: i32, ticks: u64| pid == 10 && ticks == 20;
    let (a, msg) = reconcile(&launching(), Some(claim(10)), alive);
    assert_eq!(
        a,
        Action::Follow {
            shim: claim(10),
            resend_kill: false
        }
    );
    assert_eq!(msg, "re-attached to the shim that claimed the task");
    // A dead claimer, and a claim that names no process: never run again.
    for c in [claim(99), ClaimRecord::UNKNOWN] {
        let (a, msg) = reconcile(&launching(), Some(c), alive);
        assert_eq!(a, Action::FinishFromDisk);
        assert!(msg.contains("has exited"));
    }
    let (a, msg) = reconcile(&launching(), None, alive);
    assert_eq!(a, Action::Unclaimed);
    assert!(msg.contains("launching again"));
}

#[test]
fn recovery_leaves_queued_and_terminal_tasks() {
    assert_eq!(reconcile(&queued(), None, |_, _| true).0, Action::Nothing);
    let done = step(&queued(), Input::Kill, T1).unwrap().row;
    assert_eq!(
        reconcile(&done, Some(claim(10)), |_, _| true).0,
        Action::Nothing
    );
}
