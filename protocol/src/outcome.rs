//! How a task ended: the fields the shim writes into `tasks/<id>/result.json`
//! (merged into the runtime's status template) and the classification of a
//! finished process, first match wins, as the public contract orders it.

use serde::{Deserialize, Serialize};

/// A task's status on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Accepted,
    Running,
    Success,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Accepted,
        TaskStatus::Running,
        TaskStatus::Success,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Accepted => "accepted",
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// Codes that appear on a task's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskErrorCode {
    Timeout,
    Cancelled,
    MemoryLimitExceeded,
    CpuLimitExceeded,
    ExitNonzero,
    LaunchFailed,
    SandboxSetupFailed,
    Internal,
}

impl TaskErrorCode {
    /// Every code, for metric series that exist before the first failure.
    pub const ALL: [TaskErrorCode; 8] = [
        TaskErrorCode::Timeout,
        TaskErrorCode::Cancelled,
        TaskErrorCode::MemoryLimitExceeded,
        TaskErrorCode::CpuLimitExceeded,
        TaskErrorCode::ExitNonzero,
        TaskErrorCode::LaunchFailed,
        TaskErrorCode::SandboxSetupFailed,
        TaskErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskErrorCode::Timeout => "timeout",
            TaskErrorCode::Cancelled => "cancelled",
            TaskErrorCode::MemoryLimitExceeded => "memory_limit_exceeded",
            TaskErrorCode::CpuLimitExceeded => "cpu_limit_exceeded",
            TaskErrorCode::ExitNonzero => "exit_nonzero",
            TaskErrorCode::LaunchFailed => "launch_failed",
            TaskErrorCode::SandboxSetupFailed => "sandbox_setup_failed",
            TaskErrorCode::Internal => "internal",
        }
    }
}

/// `{code, message, details?}` on a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: TaskErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl TaskError {
    pub fn new(code: TaskErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: message.into(),
            details: None,
        }
    }
}

/// `usage` on a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
}

/// The outcome fields of a terminal status body. The shim writes them over
/// the runtime's template; the runtime reads them back from `result.json`
/// (ignoring the template's fields) to finalize the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUsage>,
    /// Whether a kill request reached the shim (audit; also drives the
    /// `kill_requested` event after a restart).
    #[serde(default)]
    pub kill_requested: bool,
    /// Whether the wall-clock limit fired.
    #[serde(default)]
    pub timed_out: bool,
    /// The uid the task ran as (absent where the shim never switched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_uid: Option<u32>,
}

/// How the task's main process ended, as wait4 reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
}

/// Everything the classification looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Termination {
    pub exit: ExitKind,
    pub timed_out: bool,
    pub kill_requested: bool,
    pub oom_killed: bool,
    pub wall_time_ms: u64,
}

/// Linux's SIGXCPU; the number is fixed by the ABI on every Linux arch we
/// target (x86_64, aarch64).
pub const SIGXCPU: i32 = 24;

/// Classifies a finished task, first match wins: timeout, kill, OOM,
/// SIGXCPU, exit 0, exit N, other signal.
pub fn classify(t: &Termination) -> (TaskStatus, Option<TaskError>) {
    use TaskErrorCode as C;
    if t.timed_out {
        return (
            TaskStatus::Failed,
            Some(TaskError::new(
                C::Timeout,
                format!("task exceeded its wall time limit of {} ms", t.wall_time_ms),
            )),
        );
    }
    if t.kill_requested {
        return (
            TaskStatus::Cancelled,
            Some(TaskError::new(
                C::Cancelled,
                "task was cancelled by request",
            )),
        );
    }
    if t.oom_killed {
        return (
            TaskStatus::Failed,
            Some(TaskError::new(
                C::MemoryLimitExceeded,
                "task was killed for exceeding its memory limit",
            )),
        );
    }
    match t.exit {
        ExitKind::Signal(SIGXCPU) => (
            TaskStatus::Failed,
            Some(TaskError::new(
                C::CpuLimitExceeded,
                "task exceeded its cpu time limit",
            )),
        ),
        ExitKind::Code(0) => (TaskStatus::Success, None),
        ExitKind::Code(n) => (
            TaskStatus::Failed,
            Some(TaskError::new(
                C::ExitNonzero,
                format!("task exited with code {n}"),
            )),
        ),
        ExitKind::Signal(n) => (
            TaskStatus::Failed,
            Some(TaskError::new(
                C::ExitNonzero,
                format!("task terminated by signal {n}"),
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(exit: ExitKind) -> Termination {
        Termination {
            exit,
            timed_out: false,
            kill_requested: false,
            oom_killed: false,
            wall_time_ms: 1000,
        }
    }

    fn code(t: &Termination) -> Option<TaskErrorCode> {
        classify(t).1.map(|e| e.code)
    }

    #[test]
    fn order_of_classification() {
        let mut all = t(ExitKind::Signal(SIGXCPU));
        all.timed_out = true;
        all.kill_requested = true;
        all.oom_killed = true;
        assert_eq!(code(&all), Some(TaskErrorCode::Timeout));
        all.timed_out = false;
        assert_eq!(classify(&all).0, TaskStatus::Cancelled);
        all.kill_requested = false;
        assert_eq!(code(&all), Some(TaskErrorCode::MemoryLimitExceeded));
        all.oom_killed = false;
        assert_eq!(code(&all), Some(TaskErrorCode::CpuLimitExceeded));
    }

    #[test]
    fn exits_and_signals() {
        assert_eq!(classify(&t(ExitKind::Code(0))), (TaskStatus::Success, None));
        let (s, e) = classify(&t(ExitKind::Code(3)));
        assert_eq!(s, TaskStatus::Failed);
        let e = e.unwrap();
        assert_eq!(e.code, TaskErrorCode::ExitNonzero);
        assert_eq!(e.message, "task exited with code 3");
        let e = classify(&t(ExitKind::Signal(9))).1.unwrap();
        assert_eq!(e.code, TaskErrorCode::ExitNonzero);
        assert_eq!(e.message, "task terminated by signal 9");
    }

    #[test]
    fn wire_spelling() {
        let s = serde_json::to_string(&TaskErrorCode::ExitNonzero).unwrap();
        assert_eq!(s, "\"exit_nonzero\"");
        for st in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(st.as_str()), Some(st));
        }
    }

    #[test]
    fn outcome_reads_back_from_a_full_status_body() {
        let body = serde_json::json!({
            "task_id": "x", "status": "failed", "finished_at": "2026-01-01T00:00:00Z",
            "exit_code": 2, "error": {"code": "exit_nonzero", "message": "task exited with code 2"},
            "stdout": "hi", "execution_plan": {}
        });
        let o: Outcome = serde_json::from_value(body).unwrap();
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(o.exit_code, Some(2));
    }
}
