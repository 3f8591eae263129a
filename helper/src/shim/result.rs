//! `tasks/<id>/result.json`: the task's terminal status body. The runtime's
//! template (the static part of the body) with every [`Outcome`] field
//! written over it, the heads of the output logs, and `updated_at`. Written
//! atomically: a fresh temp file, fsync, rename, fsync of the directory, so
//! a reader sees the old state or the whole new one, before and after a
//! crash.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};

use execgo_runtime_protocol::{
    classify, Outcome, ResourceUsage, TaskError, TaskErrorCode, TaskStatus, Termination,
};
use nix::errno::Errno;
use nix::unistd::UnlinkatFlags;
use serde_json::{Map, Value};

use super::monitor::Ended;
use super::spawn::Started;
use super::stdio::{STDERR_LOG, STDOUT_LOG};
use crate::fs_at::{self, Access, AtError};

pub const RESULT: &str = "result.json";
pub const RESULT_TMP: &str = "result.json.tmp";

/// Every key [`Outcome`] can write. Template values under these keys are
/// dropped first, so an outcome field that is absent (say `exit_code` of a
/// signalled task) is absent in the result too, not left over from the
/// template.
pub const OUTCOME_KEYS: [&str; 13] = [
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "shim_pid",
    "pid",
    "pgid",
    "exit_code",
    "exit_signal",
    "error",
    "usage",
    "kill_requested",
    "timed_out",
];

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("reading the output logs failed")]
    Logs(#[source] AtError),
    #[error("encoding the result failed")]
    Encode(#[source] serde_json::Error),
    #[error("removing a stale {RESULT_TMP} failed")]
    RemoveStale(#[source] Errno),
    #[error("creating {RESULT_TMP} failed")]
    Create(#[source] AtError),
    #[error("writing {RESULT_TMP} failed")]
    Write(#[source] std::io::Error),
    #[error("renaming {RESULT_TMP} to {RESULT} failed")]
    Rename(#[source] Errno),
    #[error("syncing the task directory failed")]
    SyncDir(#[source] Errno),
}

/// The outcome of a task that ran: classified as the contract orders it.
pub fn finished(
    shim_pid: i32,
    started: &Started,
    ended: &Ended,
    finished_at: String,
    wall_time_ms: u64,
) -> Outcome {
    let (status, error) = classify(&Termination {
        exit: ended.exit,
        timed_out: ended.timed_out,
        kill_requested: ended.kill_requested,
        oom_killed: false,
        wall_time_ms,
    });
    let duration_ms = duration_ms(started, ended);
    let (exit_code, exit_signal) = match ended.exit {
        execgo_runtime_protocol::ExitKind::Code(c) => (Some(c), None),
        execgo_runtime_protocol::ExitKind::Signal(s) => (None, Some(s)),
    };
    Outcome {
        status,
        started_at: Some(started.started_at.clone()),
        finished_at,
        duration_ms: Some(duration_ms),
        shim_pid: Some(shim_pid),
        pid: Some(started.pid),
        pgid: Some(started.pid),
        exit_code,
        exit_signal,
        error,
        usage: Some(ResourceUsage {
            duration_ms,
            user_cpu_ms: Some(ended.usage.user_cpu_ms),
            system_cpu_ms: Some(ended.usage.system_cpu_ms),
            max_rss_bytes: Some(ended.usage.max_rss_bytes),
            memory_peak_bytes: None,
        }),
        kill_requested: ended.kill_requested,
        timed_out: ended.timed_out,
    }
}

fn duration_ms(started: &Started, ended: &Ended) -> u64 {
    u64::try_from(ended.at.saturating_duration_since(started.at).as_millis()).unwrap_or(u64::MAX)
}

/// The outcome of a task that never ran: failed with `code`, no start.
pub fn not_started(
    shim_pid: i32,
    code: TaskErrorCode,
    message: String,
    finished_at: String,
) -> Outcome {
    Outcome {
        status: TaskStatus::Failed,
        started_at: None,
        finished_at,
        duration_ms: None,
        shim_pid: Some(shim_pid),
        pid: None,
        pgid: None,
        exit_code: None,
        exit_signal: None,
        error: Some(TaskError::new(code, message)),
        usage: None,
        kill_requested: false,
        timed_out: false,
    }
}

/// The outcome when the shim lost track of a task it had started.
pub fn lost(shim_pid: i32, started: &Started, message: String, finished_at: String) -> Outcome {
    Outcome {
        started_at: Some(started.started_at.clone()),
        pid: Some(started.pid),
        pgid: Some(started.pid),
        ..not_started(shim_pid, TaskErrorCode::Internal, message, finished_at)
    }
}

/// The head of one output log, as the status body shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHead {
    pub text: String,
    pub truncated: bool,
}

/// Builds the result body: template, minus outcome keys, plus the outcome,
/// the log heads and `updated_at`.
pub fn merge(
    template: &Map<String, Value>,
    outcome: &Outcome,
    stdout: LogHead,
    stderr: LogHead,
) -> Result<Map<String, Value>, ResultError> {
    let mut body = template.clone();
    for key in OUTCOME_KEYS {
        body.remove(key);
    }
    match serde_json::to_value(outcome).map_err(ResultError::Encode)? {
        Value::Object(fields) => body.extend(fields),
        other => {
            return Err(ResultError::Encode(serde::ser::Error::custom(format!(
                "outcome encoded as {other}, not an object"
            ))))
        }
    }
    body.insert("stdout".into(), Value::String(stdout.text));
    body.insert("stderr".into(), Value::String(stderr.text));
    body.insert("stdout_truncated".into(), Value::Bool(stdout.truncated));
    body.insert("stderr_truncated".into(), Value::Bool(stderr.truncated));
    body.insert(
        "updated_at".into(),
        Value::String(outcome.finished_at.clone()),
    );
    Ok(body)
}

/// Reads the heads of both logs under the task directory.
pub fn read_logs(
    dir: BorrowedFd<'_>,
    stdout_max: u64,
    stderr_max: u64,
) -> Result<(LogHead, LogHead), ResultError> {
    let head = |name, max| {
        fs_at::read_head(dir, name, max)
            .map(|(text, truncated)| LogHead { text, truncated })
            .map_err(ResultError::Logs)
    };
    Ok((head(STDOUT_LOG, stdout_max)?, head(STDERR_LOG, stderr_max)?))
}

/// Writes `result.json` atomically under the task directory.
pub fn write_atomic(dir: BorrowedFd<'_>, body: &Map<String, Value>) -> Result<(), ResultError> {
    let bytes = serde_json::to_vec(body).map_err(ResultError::Encode)?;
    let raw = Some(dir.as_raw_fd());
    // A fresh inode every time: the temp name could be a hard link planted
    // by the directory's owner, and O_EXCL never writes through one.
    match nix::unistd::unlinkat(raw, RESULT_TMP, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(ResultError::RemoveStale(e)),
    }
    let mut f =
        fs_at::open_file(dir, RESULT_TMP, Access::CreateNew(0o644)).map_err(ResultError::Create)?;
    f.write_all(&bytes).map_err(ResultError::Write)?;
    f.sync_all().map_err(ResultError::Write)?;
    drop(f);
    nix::fcntl::renameat(raw, RESULT_TMP, raw, RESULT).map_err(ResultError::Rename)?;
    fs_at::sync_dir(dir).map_err(ResultError::SyncDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Rusage;
    use execgo_runtime_protocol::ExitKind;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn started(at: Instant) -> Started {
        Started {
            pid: 42,
            started_at: "2026-01-01T00:00:00.000Z".into(),
            at,
        }
    }

    fn ended(at: Instant, exit: ExitKind) -> Ended {
        Ended {
            exit,
            usage: Rusage {
                user_cpu_ms: 5,
                system_cpu_ms: 6,
                max_rss_bytes: 7 * 1024,
            },
            timed_out: false,
            kill_requested: false,
            at,
        }
    }

    #[test]
    fn outcome_keys_cover_a_full_outcome() {
        let t = Instant::now();
        let mut o = finished(1, &started(t), &ended(t, ExitKind::Code(3)), "f".into(), 10);
        o.exit_signal = Some(9);
        let v = serde_json::to_value(&o).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut want: Vec<_> = OUTCOME_KEYS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn exits_and_signals_are_recorded_apart() {
        let t = Instant::now();
        let later = t + Duration::from_millis(1500);
        let o = finished(
            1,
            &started(t),
            &ended(later, ExitKind::Code(0)),
            "f".into(),
            10,
        );
        assert_eq!(o.status, TaskStatus::Success);
        assert_eq!((o.exit_code, o.exit_signal), (Some(0), None));
        assert_eq!(o.duration_ms, Some(1500));
        let u = o.usage.unwrap();
        assert_eq!(
            (
                u.duration_ms,
                u.user_cpu_ms,
                u.system_cpu_ms,
                u.max_rss_bytes
            ),
            (1500, Some(5), Some(6), Some(7168))
        );
        let mut e = ended(later, ExitKind::Signal(15));
        e.kill_requested = true;
        let o = finished(1, &started(t), &e, "f".into(), 10);
        assert_eq!(o.status, TaskStatus::Cancelled);
        assert_eq!((o.exit_code, o.exit_signal), (None, Some(15)));
        assert!(o.kill_requested);
    }

    #[test]
    fn merge_overwrites_template_and_drops_stale_outcome_keys() {
        let template = serde_json::json!({
            "task_id": "t", "status": "accepted", "exit_code": 99,
            "execution_plan": {"a": 1}, "stdout": "old"
        });
        let o = not_started(
            9,
            TaskErrorCode::LaunchFailed,
            "failed to execute 'x': No such file or directory (os error 2)".into(),
            "2026-01-01T00:00:01.000Z".into(),
        );
        let body = merge(
            template.as_object().unwrap(),
            &o,
            LogHead {
                text: "hi\n".into(),
                truncated: false,
            },
            LogHead {
                text: String::new(),
                truncated: true,
            },
        )
        .unwrap();
        assert_eq!(body["task_id"], "t");
        assert_eq!(body["execution_plan"]["a"], 1);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["error"]["code"], "launch_failed");
        assert!(!body.contains_key("exit_code"));
        assert!(!body.contains_key("started_at"));
        assert_eq!(body["shim_pid"], 9);
        assert_eq!(body["stdout"], "hi\n");
        assert_eq!(body["stderr_truncated"], true);
        assert_eq!(body["updated_at"], "2026-01-01T00:00:01.000Z");
        // The runtime reads the outcome back from the whole body.
        let back: Outcome = serde_json::from_value(Value::Object(body)).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(RESULT_TMP), b"stale").unwrap();
        std::fs::write(tmp.path().join("stdout.log"), b"abcdef").unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let (out, err) = read_logs(d.as_fd(), 3, 3).unwrap();
        assert_eq!(
            out,
            LogHead {
                text: "abc".into(),
                truncated: true
            }
        );
        assert_eq!(err, LogHead::default());
        let mut body = Map::new();
        body.insert("a".into(), Value::from(1));
        write_atomic(d.as_fd(), &body).unwrap();
        body.insert("a".into(), Value::from(2));
        write_atomic(d.as_fd(), &body).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(RESULT)).unwrap(),
            r#"{"a":2}"#
        );
        assert!(!tmp.path().join(RESULT_TMP).exists());
    }
}
