//! `tasks/<id>/result.json`: the task's terminal status body. The runtime's
//! template (the static part of the body) with every [`Outcome`] field
//! written over it, the heads of the output logs, and `updated_at`.
//!
//! A reader must find no result or a whole one, after a `kill -9` of the
//! shim at any instant and after a power loss, and a result must be durable
//! before anyone relies on it. This costs one fsync at the end:
//!
//! 1. [`create`], when the task is claimed: an empty `result.json.tmp`, a
//!    fresh inode (`O_EXCL`, so never a name planted by the directory's
//!    owner), held open. It is created *before* the directory fsync that
//!    makes the claim durable, so that fsync makes this entry durable too,
//!    before the task starts.
//! 2. [`write`], when the task has ended: the whole body into that file,
//!    `fdatasync` (data and size), then `rename` to `result.json` — with no
//!    fsync of the directory.
//!
//! Why that holds. `result.json` only ever appears whole: rename is atomic,
//! and the body was on disk before it. A power loss may undo the rename;
//! the durable, whole body is then still under `result.json.tmp`, so a
//! reader that misses `result.json` takes a *complete* `result.json.tmp`
//! instead (the runtime's `TaskDir::read_result`). Complete means it parses
//! as JSON: an untouched temp file is empty or zeros (the room reserved
//! for the result), and a body cut short by a
//! `kill -9` during the write is a proper prefix of a JSON object, which
//! never parses; nor does a whole body still followed by the
//! reservation's zeros (a `kill -9` before they are cut off): that result
//! is lost, as after a kill before the write. A `kill -9` between the write and the `fdatasync` leaves a
//! whole body that may not be durable yet, so that reader fdatasyncs the
//! temp file, renames it and fsyncs the directory itself before relying on
//! it. Compared with temp file, fsync, rename, directory fsync, this saves
//! the directory fsync.
//!
//! Not chosen: writing `result.json` itself in place (created empty at
//! claim time, then one write and an fdatasync, no rename). It saves the
//! rename too, but `result.json` would then exist, empty or partial, for
//! the whole run, where the contract has it written when the task ends and
//! clients read it at `artifacts.result_path`.

use std::fs::File;
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

pub use execgo_runtime_protocol::taskdir::{RESULT, RESULT_TMP};

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
        oom_killed: ended.oom_killed,
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
        task_uid: None,
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
        task_uid: None,
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

/// The head of one output log, as the status body shows it; `warning`
/// says why it is empty when the log could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHead {
    pub text: String,
    pub truncated: bool,
    pub warning: Option<String>,
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
    let warnings: Vec<Value> = [&stdout.warning, &stderr.warning]
        .into_iter()
        .flatten()
        .map(|w| Value::String(w.clone()))
        .collect();
    body.remove("warnings");
    if !warnings.is_empty() {
        body.insert("warnings".into(), Value::Array(warnings));
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

/// Reads the heads of both logs under the task directory. A log that
/// cannot be read (the task replaced it with a FIFO, a directory, a
/// symlink...) is empty, with a warning: the result is written all the
/// same.
pub fn read_logs(dir: BorrowedFd<'_>, stdout_max: u64, stderr_max: u64) -> (LogHead, LogHead) {
    let head = |name, max| match fs_at::read_head(dir, name, max) {
        Ok((text, truncated)) => LogHead {
            text,
            truncated,
            warning: None,
        },
        Err(e) => {
            let warning = format!("{}; output not captured", crate::logging::chain(&e));
            tracing::warn!(target: crate::logging::TARGET, warning, "reading a log failed");
            LogHead {
                warning: Some(warning),
                ..LogHead::default()
            }
        }
    };
    (head(STDOUT_LOG, stdout_max), head(STDERR_LOG, stderr_max))
}

/// The empty `result.json.tmp` a claimed task's result will be written
/// into ([`write`]); see the module documentation for the order.
#[derive(Debug)]
pub struct ResultFile(File);

/// Step 1: creates `result.json.tmp`, a fresh inode. The caller fsyncs the
/// directory afterwards.
///
/// `reserve` bytes are allocated to it at once (fallocate(2); zeros, which
/// never parse as a result), so that a task that fills the file system
/// can still be recorded: [`write`] falls back to a body without the log
/// heads, which fits in them. Where the file system cannot preallocate,
/// nothing is reserved.
pub fn create(dir: BorrowedFd<'_>, reserve: u64) -> Result<ResultFile, ResultError> {
    let create = || fs_at::open_file(dir, RESULT_TMP, Access::CreateNew(0o644));
    let file = match create() {
        Ok(f) => f,
        // A leftover (or planted: O_EXCL never writes through a link the
        // directory's owner made) is removed, and the create repeated.
        Err(e) if e.open_errno() == Some(Errno::EEXIST) => {
            let raw = Some(dir.as_raw_fd());
            match nix::unistd::unlinkat(raw, RESULT_TMP, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(ResultError::RemoveStale(e)),
            }
            create().map_err(ResultError::Create)?
        }
        Err(e) => return Err(ResultError::Create(e)),
    };
    if let Ok(len @ 1..) = libc::off_t::try_from(reserve) {
        if let Err(e) = nix::fcntl::fallocate(
            file.as_raw_fd(),
            nix::fcntl::FallocateFlags::empty(),
            0,
            len,
        ) {
            tracing::debug!(
                target: crate::logging::TARGET,
                error = %e,
                "reserving space for the result failed"
            );
        }
    }
    Ok(ResultFile(file))
}

/// The bytes reserved for a result whose template encodes to
/// `template_len` bytes: the template, the outcome and a warning, without
/// the log heads.
pub fn reserve_for(template_len: usize) -> u64 {
    (template_len as u64).saturating_add(16 << 10).max(64 << 10)
}

/// What `result.json` says instead of the log heads when the file system
/// had no room for them.
pub const NO_ROOM_FOR_HEADS: &str =
    "the data dir is full: the output is not in result.json (see stdout.log and stderr.log)";

/// `body` without the log heads (marked truncated, with a warning): what
/// is written when the whole body does not fit.
fn without_heads(body: &Map<String, Value>) -> Map<String, Value> {
    let mut small = body.clone();
    for (text, truncated) in [
        ("stdout", "stdout_truncated"),
        ("stderr", "stderr_truncated"),
    ] {
        let had = small
            .get(text)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        small.insert(text.into(), Value::String(String::new()));
        if had {
            small.insert(truncated.into(), Value::Bool(true));
        }
    }
    let mut warnings = match small.remove("warnings") {
        Some(Value::Array(w)) => w,
        _ => Vec::new(),
    };
    warnings.push(Value::String(NO_ROOM_FOR_HEADS.into()));
    small.insert("warnings".into(), Value::Array(warnings));
    small
}

fn no_room(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

/// Step 2: writes the body into the file from [`create`], fdatasyncs it and
/// renames it to `result.json` (no directory fsync: see the module
/// documentation).
pub fn write(
    dir: BorrowedFd<'_>,
    file: ResultFile,
    body: &Map<String, Value>,
) -> Result<(), ResultError> {
    use std::os::unix::fs::FileExt;
    let bytes = serde_json::to_vec(body).map_err(ResultError::Encode)?;
    let f = file.0;
    let len = match f.write_all_at(&bytes, 0) {
        Ok(()) => bytes.len(),
        // A full file system: the body without the log heads fits in the
        // space reserved at the claim.
        Err(e) if no_room(&e) => {
            let small = serde_json::to_vec(&without_heads(body)).map_err(ResultError::Encode)?;
            f.write_all_at(&small, 0).map_err(ResultError::Write)?;
            small.len()
        }
        Err(e) => return Err(ResultError::Write(e)),
    };
    // Drops what the reservation left past the body.
    f.set_len(len as u64).map_err(ResultError::Write)?;
    f.sync_data().map_err(ResultError::Write)?;
    drop(f);
    let raw = Some(dir.as_raw_fd());
    nix::fcntl::renameat(raw, RESULT_TMP, raw, RESULT).map_err(ResultError::Rename)
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
            oom_killed: false,
            at,
            init: None,
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
                ..LogHead::default()
            },
            LogHead {
                truncated: true,
                warning: Some("stderr.log is not a regular file".into()),
                ..LogHead::default()
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
        assert_eq!(
            body["warnings"],
            serde_json::json!(["stderr.log is not a regular file"])
        );
        assert_eq!(body["updated_at"], "2026-01-01T00:00:01.000Z");
        // The runtime reads the outcome back from the whole body.
        let back: Outcome = serde_json::from_value(Value::Object(body)).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn created_at_claim_written_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        // A stale temp file that is a hard link to a file of someone else's:
        // replaced, never written through.
        std::fs::write(tmp.path().join("other"), b"keep").unwrap();
        std::fs::hard_link(tmp.path().join("other"), tmp.path().join(RESULT_TMP)).unwrap();
        std::fs::write(tmp.path().join("stdout.log"), b"abcdef").unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let (out, err) = read_logs(d.as_fd(), 3, 3);
        assert_eq!(
            out,
            LogHead {
                text: "abc".into(),
                truncated: true,
                warning: None,
            }
        );
        assert_eq!(err, LogHead::default());
        // Logs the task replaced with what cannot be read: empty, with a
        // warning each, and no blocking on the FIFO.
        std::fs::remove_file(tmp.path().join("stdout.log")).unwrap();
        nix::unistd::mkfifo(
            &tmp.path().join("stdout.log"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::create_dir(tmp.path().join("stderr.log")).unwrap();
        let (out, err) = read_logs(d.as_fd(), 3, 3);
        assert_eq!((out.text.as_str(), out.truncated), ("", false));
        assert!(out.warning.unwrap().contains("stdout.log"));
        assert!(err.warning.unwrap().contains("stderr.log"));
        std::fs::remove_file(tmp.path().join("stdout.log")).unwrap();
        std::fs::remove_dir(tmp.path().join("stderr.log")).unwrap();
        let file = create(d.as_fd(), 0).unwrap();
        // Until the end: an empty temp file, no result.json.
        assert_eq!(std::fs::read(tmp.path().join(RESULT_TMP)).unwrap(), b"");
        assert!(!tmp.path().join(RESULT).exists());
        let mut body = Map::new();
        body.insert("a".into(), Value::from(1));
        write(d.as_fd(), file, &body).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(RESULT)).unwrap(),
            r#"{"a":1}"#
        );
        assert!(!tmp.path().join(RESULT_TMP).exists());
        assert_eq!(std::fs::read(tmp.path().join("other")).unwrap(), b"keep");
        // A result the runtime wrote meanwhile is replaced whole.
        std::fs::write(tmp.path().join(RESULT), br#"{"decided":"by the runtime"}"#).unwrap();
        let file = create(d.as_fd(), 0).unwrap();
        write(d.as_fd(), file, &body).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(RESULT)).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn a_reserved_result_reads_as_none_until_written_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let file = create(d.as_fd(), reserve_for(10)).unwrap();
        let held = std::fs::read(tmp.path().join(RESULT_TMP)).unwrap();
        // tmpfs and the usual disk file systems preallocate; zeros never
        // parse as a result.
        assert!(held.iter().all(|b| *b == 0));
        assert!(serde_json::from_slice::<Value>(&held).is_err());
        let mut body = Map::new();
        body.insert("a".into(), Value::from(1));
        write(d.as_fd(), file, &body).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(RESULT)).unwrap(),
            r#"{"a":1}"#,
            "the reservation's tail is gone"
        );
    }

    #[test]
    fn without_room_the_heads_give_way() {
        let body = merge(
            &Map::new(),
            &not_started(1, TaskErrorCode::Internal, "m".into(), "f".into()),
            LogHead {
                text: "lots".into(),
                truncated: false,
                warning: None,
            },
            LogHead::default(),
        )
        .unwrap();
        let small = without_heads(&body);
        assert_eq!(small["stdout"], "");
        assert_eq!(small["stdout_truncated"], true, "output was cut");
        assert_eq!(small["stderr_truncated"], false, "nothing to cut");
        assert_eq!(small["warnings"], serde_json::json!([NO_ROOM_FOR_HEADS]));
        assert_eq!(small["status"], body["status"]);
        assert!(reserve_for(0) >= 64 << 10);
        assert!(reserve_for(1 << 20) > 1 << 20);
    }
}
