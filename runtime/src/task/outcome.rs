//! The outcomes the runtime decides itself, when no shim recorded one.

use execgo_runtime_protocol::{Outcome, TaskError, TaskErrorCode, TaskStatus};

fn decided(status: TaskStatus, error: TaskError, at: &str) -> Outcome {
    Outcome {
        status,
        started_at: None,
        finished_at: at.to_string(),
        duration_ms: None,
        shim_pid: None,
        pid: None,
        pgid: None,
        exit_code: None,
        exit_signal: None,
        error: Some(error),
        usage: None,
        kill_requested: false,
        timed_out: false,
        task_uid: None,
    }
}

/// Killed before any shim ran it.
pub fn cancelled_before_start(at: &str) -> Outcome {
    decided(
        TaskStatus::Cancelled,
        TaskError::new(
            TaskErrorCode::Cancelled,
            "task was cancelled before it started",
        ),
        at,
    )
}

/// The shim that claimed it is gone and left no result.
pub fn lost_monitor(at: &str) -> Outcome {
    decided(
        TaskStatus::Failed,
        TaskError::new(
            TaskErrorCode::Internal,
            "task monitor (shim) was lost before it recorded a result",
        ),
        at,
    )
}

/// The helper refused or failed the launch before any shim claimed it.
pub fn launch_refused(code: TaskErrorCode, message: String, at: &str) -> Outcome {
    decided(TaskStatus::Failed, TaskError::new(code, message), at)
}
