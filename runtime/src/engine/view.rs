//! Renders stored tasks and events as the API's bodies.

use execgo_runtime_protocol::{ResourceUsage, TaskStatus};

use super::files::{TaskDir, STDERR, STDOUT};
use crate::model::{EventRecord, ExecutionKind, TaskStatusResponse, TaskSummary};
use crate::store::{EventRow, TaskRow};

/// The ExecGo client's name for an event type (it reads only `type`).
pub fn client_event_type(event_type: &str) -> &'static str {
    match event_type {
        "submitted" => "task_submitted",
        "accepted" => "task_accepted",
        "started" => "task_started",
        "finished" => "task_succeeded",
        "failed" => "task_failed",
        "cancelled" => "task_cancelled",
        _ => "task_progressed",
    }
}

pub fn event_record(e: EventRow) -> EventRecord {
    EventRecord {
        seq: e.seq,
        handle_id: e.task_id.clone(),
        client_type: client_event_type(&e.event_type).to_string(),
        task_id: e.task_id,
        event_type: e.event_type,
        timestamp: e.timestamp,
        message: e.message,
        data: e.data,
    }
}

fn since_ms(start: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let ms = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds();
    Some(ms.max(0) as u64)
}

/// The status body of `row`, with the head of its logs.
pub fn status_body(td: &TaskDir, row: &TaskRow) -> TaskStatusResponse {
    let limits = &row.request.limits;
    let mut warnings = Vec::new();
    let mut head = |name: &str, max| {
        td.read_log(name, max).unwrap_or_else(|e| {
            warnings.push(format!("reading {name} failed: {e}; output not shown"));
            (String::new(), false)
        })
    };
    let (stdout, stdout_truncated) = head(STDOUT, limits.stdout_max_bytes);
    let (stderr, stderr_truncated) = head(STDERR, limits.stderr_max_bytes);
    TaskStatusResponse {
        task: summary(td, row),
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        warnings,
    }
}

/// The body a task's `result.json` starts from, at its launch: the logs
/// are not read, since the shim fills them in from the files it writes.
pub fn result_template(td: &TaskDir, row: &TaskRow) -> TaskStatusResponse {
    TaskStatusResponse {
        task: summary(td, row),
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        warnings: Vec::new(),
    }
}

/// `row` as a listing shows it: everything but the logs.
pub fn summary(td: &TaskDir, row: &TaskRow) -> TaskSummary {
    let running = row.status == TaskStatus::Running;
    let live_ms = if running {
        row.started_at.as_deref().and_then(since_ms)
    } else {
        None
    };
    let duration_ms = live_ms.or(row.duration_ms);
    let usage = if running {
        live_ms.map(|d| ResourceUsage {
            duration_ms: d,
            ..Default::default()
        })
    } else {
        row.usage.clone()
    };
    TaskSummary {
        task_id: row.task_id.clone(),
        handle_id: row.task_id.clone(),
        status: row.status,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
        started_at: row.started_at.clone(),
        finished_at: row.finished_at.clone(),
        duration_ms,
        shim_pid: row.shim_pid,
        pid: row.pid,
        pgid: row.pgid,
        task_uid: row.task_uid,
        exit_code: row.exit_code,
        exit_signal: row.exit_signal,
        error: row.error.clone(),
        usage,
        reservation: row.reservation.clone(),
        execution_plan: row.plan.clone(),
        artifacts: td.artifacts(row.request.execution.kind == ExecutionKind::Script),
        metadata: row.request.metadata.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_vocabulary() {
        assert_eq!(client_event_type("finished"), "task_succeeded");
        assert_eq!(client_event_type("failed"), "task_failed");
        assert_eq!(client_event_type("planned"), "task_progressed");
        assert_eq!(client_event_type("recovered"), "task_progressed");
    }
}
