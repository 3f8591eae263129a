//! The task directory contract, `<data dir>/tasks/<id>/`: what the runtime,
//! the helper and the shim each put there and how the others read it. Both
//! sides take every name, record and parser from here.
//!
//! | entry | written by | meaning |
//! |---|---|---|
//! | `request.json`, `script` | runtime, at submit | the accepted request |
//! | `stdout.log`, `stderr.log` | runtime creates, the task writes | output |
//! | `shim.claim` | shim, `symlinkat` | the single-run guard: [`ClaimRecord`] |
//! | `control` | shim, a FIFO | the runtime writes [`KILL_BYTE`] to kill |
//! | `started` | shim, `symlinkat`, once the task is exec'd | [`StartedRecord`] |
//! | `workspace/` | shim | the task's working directory |
//! | `shim.log` | shim, on trouble only | the shim's warnings and errors |
//! | `result.json.tmp` → `result.json` | shim | the terminal status body |
//! | `result.json` | runtime, for outcomes it decides | same shape |

use std::io::Read;

use serde::{Deserialize, Serialize};

pub const REQUEST: &str = "request.json";
pub const SCRIPT: &str = "script";
pub const STDOUT: &str = "stdout.log";
pub const STDERR: &str = "stderr.log";
pub const CLAIM: &str = "shim.claim";
pub const CONTROL: &str = "control";
pub const STARTED: &str = "started";
pub const WORKSPACE: &str = "workspace";
pub const SHIM_LOG: &str = "shim.log";
pub const RESULT: &str = "result.json";
/// The shim's temp name for [`RESULT`], created with the claim (empty,
/// or zeros: room reserved for the result).
pub const RESULT_TMP: &str = "result.json.tmp";
/// The runtime's temp name for a [`RESULT`] it writes itself.
pub const RUNTIME_RESULT_TMP: &str = "result.json.runtime-tmp";

/// The most of a log's head a status body or `result.json` carries
/// (`limits.stdout_max_bytes`, `limits.stderr_max_bytes`): 64 MiB.
pub const MAX_OUTPUT_HEAD_BYTES: u64 = 64 * 1024 * 1024;

/// The byte written to [`CONTROL`] to ask the shim to kill the task.
pub const KILL_BYTE: u8 = b'K';

/// Who claimed a task: the shim's pid and its start time in clock ticks
/// since boot (field 22 of `/proc/<pid>/stat`), so a recycled pid is never
/// mistaken for the shim. Stored as the target of the `shim.claim` symlink,
/// `{"shim_pid":N,"shim_start_ticks":N}`, short enough to live in the
/// symlink's inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
}

impl ClaimRecord {
    /// What an unreadable claim (planted, or damaged) stands for: the task
    /// is claimed, by no process that is alive.
    pub const UNKNOWN: ClaimRecord = ClaimRecord {
        shim_pid: 0,
        shim_start_ticks: 0,
    };

    /// The symlink target.
    pub fn encode(&self) -> String {
        format!(
            "{{\"shim_pid\":{},\"shim_start_ticks\":{}}}",
            self.shim_pid, self.shim_start_ticks
        )
    }

    /// A record as [`Self::encode`] writes it; `None` for anything else,
    /// including a pid that is not positive.
    pub fn parse(bytes: &[u8]) -> Option<ClaimRecord> {
        serde_json::from_slice::<ClaimRecord>(bytes)
            .ok()
            .filter(|c| c.shim_pid > 0)
    }
}

/// The task's process as its shim started it: the target of the `started`
/// symlink, `{"pid":N,"started_at":"<RFC 3339>"}`. The task leads its own
/// process group, so its pgid is its pid. The record fits ext4's inline
/// symlink target (under 60 bytes), so it costs no data block. Created once
/// the process is exec'd, whole or not at all; not fsynced (a restart
/// finds the shim through its claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    pub pid: i32,
    pub started_at: String,
}

impl StartedRecord {
    /// The symlink target.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A record as [`Self::encode`] writes it; `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<StartedRecord> {
        serde_json::from_slice::<StartedRecord>(bytes)
            .ok()
            .filter(|r| r.pid > 0 && unix_ms(&r.started_at).is_some())
    }
}

/// Parses field 22 (start time) of a `/proc/<pid>/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// after the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come field 3 (state) onwards; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The start ticks of `pid`, or `None` when it is gone.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// The calling process's start ticks, as [`start_ticks`] of its own pid,
/// read without formatting a path or allocating: a shim, forked from the
/// helper, asks first thing, and every piece of code it runs costs it
/// resident pages. `/proc` hands the line (a few hundred bytes, at most
/// ~1.2 KiB) over whole in one read when the buffer holds it; a line
/// without its final newline is not trusted.
pub fn own_start_ticks() -> Option<u64> {
    let mut buf = [0u8; 4096];
    let n = std::fs::File::open("/proc/self/stat")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    let line = buf[..n].strip_suffix(b"\n")?;
    parse_start_ticks(std::str::from_utf8(line).ok()?)
}

/// Whether the process a record names is still the one that wrote it, and
/// still running: a zombie (exited, not yet reaped by its parent, which
/// for a shim is init and may take its time) is not.
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !is_zombie(&stat) && parse_start_ticks(&stat) == Some(start_ticks)
}

/// Whether a `/proc/<pid>/stat` line is of a process that has exited
/// (state `Z` or `X`, field 3).
fn is_zombie(stat: &str) -> bool {
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// A timestamp as the public contract spells them: RFC 3339, UTC,
/// millisecond precision (`2026-01-01T00:00:00.000Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp.
pub fn unix_ms(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_records_round_trip_and_fit_an_inode() {
        let c = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        assert_eq!(c.encode(), r#"{"shim_pid":7,"shim_start_ticks":99}"#);
        assert_eq!(ClaimRecord::parse(c.encode().as_bytes()), Some(c));
        // PID_MAX_LIMIT and a century of uptime at 1000 ticks a second:
        // still under ext4's 60-byte inline symlink target.
        let big = ClaimRecord {
            shim_pid: 4_194_304,
            shim_start_ticks: 100 * 365 * 24 * 3600 * 1000,
        };
        assert!(big.encode().len() < 60);
        assert_eq!(serde_json::to_string(&big).unwrap(), big.encode());
        for bad in [
            &b""[..],
            b"{}",
            br#"{"shim_pid":1}"#,
            br#"{"shim_pid":0,"shim_start_ticks":5}"#,
            br#"{"shim_pid":-3,"shim_start_ticks":5}"#,
            b"not a record",
        ] {
            assert_eq!(ClaimRecord::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn started_records_round_trip() {
        let r = StartedRecord {
            pid: 12,
            started_at: "2026-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            r.encode(),
            r#"{"pid":12,"started_at":"2026-01-01T00:00:00.000Z"}"#
        );
        let biggest = StartedRecord {
            pid: 4_194_304,
            ..r.clone()
        };
        assert!(biggest.encode().len() < 60, "{}", biggest.encode());
        assert_eq!(StartedRecord::parse(r.encode().as_bytes()), Some(r));
        for bad in [
            &b""[..],
            br#"{"pid":0,"started_at":"2026-01-01T00:00:00.000Z"}"#,
            br#"{"pid":1,"started_at":"soon"}"#,
            br#"{"pid":1}"#,
        ] {
            assert_eq!(StartedRecord::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn start_ticks_are_counted_after_the_last_paren() {
        let line =
            "42 (we(ird) )name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 555123 1000 10";
        assert_eq!(parse_start_ticks(line), Some(555123));
        assert_eq!(parse_start_ticks("42 (x) S 1 2"), None);
        assert_eq!(parse_start_ticks("no paren at all"), None);
        assert_eq!(parse_start_ticks(""), None);
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert_eq!(own_start_ticks(), Some(ticks));
        assert!(is_alive(me, ticks));
        assert!(!is_alive(me, ticks + 1));
        assert!(!is_alive(0, 0));
        assert!(is_zombie("42 (a) b) Z 1 2"));
        assert!(is_zombie("42 (x) X 1"));
        assert!(!is_zombie("42 (x) S 1"));
        assert!(is_zombie("garbage"));
    }

    #[test]
    fn timestamps() {
        let s = now_rfc3339();
        assert_eq!(s.len(), "2026-01-01T00:00:00.000Z".len(), "{s}");
        assert!(s.ends_with('Z'));
        assert_eq!(unix_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(unix_ms("yesterday"), None);
    }
}
