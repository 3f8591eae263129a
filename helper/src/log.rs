//! Logging, in one of two formats (`--log-format`):
//!
//! - `json`: JSON lines on stderr, one object per line,
//!   `{"timestamp","level","target":"helper","message",...fields}`.
//! - `journald`: one journald entry per line over the native protocol
//!   ([`crate::journal`]): `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER=
//!   execgo-runtime-helper`, `TARGET=helper`, and every field upper-cased
//!   (`task_id` → `TASK_ID`), so `journalctl TASK_ID=<id>` finds a task's
//!   lines. Nothing goes to stderr then, except a line journald refused.
//!
//! Hand-written so the helper stays free of a logging framework. The helper
//! is single-threaded and Rust's stderr is unbuffered, so a line is one
//! `write_all` (and one datagram). A shim inherits the sinks across its
//! fork and, once isolated ([`enter_shim`]), sends every line to journald
//! in journald mode, as the helper does, and writes its warnings and errors
//! (every line, at debug level) to `tasks/<id>/shim.log` as JSON, each line
//! carrying its `task_id`. `shim.log` is created by the first line it
//! takes, so a task that ran without trouble has none: its shim's progress
//! lines (`shim started`, `task started`, `result recorded`, all info) go
//! to the journal only, and the runtime logs the same facts itself. Never
//! called between fork and exec (the task child of
//! [`crate::sys::spawn_task`] logs nothing).

use std::borrow::Cow;
use std::error::Error;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

use crate::fs_at::{self, Access};
use crate::journal::{self, Journal};

/// The shim's own log file in its task directory.
pub use execgo_runtime_protocol::taskdir::SHIM_LOG;

/// Where lines go; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Journald,
}

impl Format {
    /// The explicit choice (`--log-format` or `EXECGO_RUNTIME_LOG_FORMAT`),
    /// else journald when systemd connected our stderr to the journal
    /// (`JOURNAL_STREAM` was set), else JSON. The runtime's rule.
    pub fn resolve(explicit: Option<Format>, journal_stream: bool) -> Format {
        explicit.unwrap_or(if journal_stream {
            Format::Journald
        } else {
            Format::Json
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// The syslog priority journald stores in `PRIORITY`.
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Whether lines go to stderr as JSON: always, except in journald mode (a
/// shim writes `shim.log` instead, see [`to_shim_log`]).
static TO_STDERR: AtomicBool = AtomicBool::new(true);
/// Set once journald mode is on (and journald was reachable).
static JOURNAL: OnceLock<Journal> = OnceLock::new();
/// In a shim: its task, added to every line that does not name one.
static TASK_ID: OnceLock<String> = OnceLock::new();
/// In a shim: where `shim.log` goes, opened by the first line it takes.
static SHIM_FILE: OnceLock<ShimFile> = OnceLock::new();

struct ShimFile {
    /// The task directory (a duplicate of the shim's descriptor).
    dir: OwnedFd,
    /// `None` once opening failed: the lines are dropped then, as a failed
    /// write to stderr would be.
    file: OnceLock<Option<File>>,
}

impl ShimFile {
    fn write(&self, text: &str) {
        let file = self.file.get_or_init(|| {
            fs_at::open_file(self.dir.as_fd(), SHIM_LOG, Access::AppendOrCreate(0o644)).ok()
        });
        if let Some(mut f) = file.as_ref() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Sets the level from a `RUST_LOG`-style filter (read before start-up
/// clears the environment). Unparsable filters keep the default, info.
pub fn init(filter: Option<&str>) {
    if let Some(level) = filter.and_then(parse_filter) {
        MAX_LEVEL.store(level, Ordering::Relaxed);
    }
}

/// Journald mode: from now on lines go to the journal at `socket` (in
/// production [`journal::SOCKET`]) instead of stderr. When it is not
/// reachable, lines stay JSON on stderr and a warning says why, as the
/// runtime does. Called once, after start-up clean-up (which would close the
/// socket).
pub fn start_journal(socket: &Path) {
    match Journal::open(socket) {
        Ok(j) => {
            if JOURNAL.set(j).is_ok() {
                TO_STDERR.store(false, Ordering::Relaxed);
            }
        }
        Err(e) => warn(
            "journald is not reachable; logging JSON to stderr",
            &[
                ("error", e.to_string().into()),
                ("socket", socket.display().to_string().into()),
            ],
        ),
    }
}

/// The journal socket's descriptor, if journald mode is on: the shim must
/// keep it when it closes the helper's descriptors.
pub fn journal_fd() -> Option<RawFd> {
    JOURNAL.get().map(Journal::fd)
}

/// In a shim, once isolated (its stderr is /dev/null): lines go to the
/// journal in journald mode, and those [`to_shim_log`] picks to `shim.log`
/// under `task_dir`, created on the first of them; lines without a
/// `task_id` get this one.
pub fn enter_shim(task_id: &str, task_dir: OwnedFd) {
    let _ = TASK_ID.set(task_id.to_string());
    let _ = SHIM_FILE.set(ShimFile {
        dir: task_dir,
        file: OnceLock::new(),
    });
}

/// Whether a shim's line goes to `shim.log`: warnings and errors, or every
/// line when the level is debug. The journal gets every enabled line.
pub fn to_shim_log(level: Level, max: u8) -> bool {
    level <= Level::Warn || max >= Level::Debug as u8
}

fn parse_level(s: &str) -> Option<u8> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Some(0),
        "error" => Some(1),
        "warn" => Some(2),
        "info" => Some(3),
        // trace is as verbose as it gets here.
        "debug" | "trace" => Some(4),
        _ => None,
    }
}

/// A bare level (`debug`) applies; a directive for this crate
/// (`helper=debug`, `execgo_runtime_helper=debug`) wins over it. Directives
/// for other targets are ignored.
pub fn parse_filter(filter: &str) -> Option<u8> {
    let mut bare = None;
    let mut ours = None;
    for directive in filter.split(',') {
        match directive.split_once('=') {
            Some((target, level)) => {
                let target = target.trim();
                if target == "helper" || target == "execgo_runtime_helper" {
                    ours = parse_level(level).or(ours);
                }
            }
            None => bare = parse_level(directive).or(bare),
        }
    }
    ours.or(bare)
}

fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Builds one log line (without the newline), keys in a fixed order:
/// timestamp, level, target, message, then the fields as given. A field
/// that repeats a fixed key is dropped.
pub fn line(level: Level, message: &str, fields: &[(&str, Value)]) -> String {
    let mut out = String::with_capacity(128);
    let mut push = |key: &str, value: &Value| {
        out.push(if out.is_empty() { '{' } else { ',' });
        out.push_str(&Value::from(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    };
    push(
        "timestamp",
        &Value::from(execgo_runtime_protocol::taskdir::now_rfc3339()),
    );
    push("level", &Value::from(level.as_str()));
    push("target", &Value::from(TARGET));
    push("message", &Value::from(message));
    for (k, v) in fields {
        if !FIXED_KEYS.contains(k) {
            push(k, v);
        }
    }
    out.push('}');
    out
}

const FIXED_KEYS: [&str; 4] = ["timestamp", "level", "target", "message"];

/// What every line says in `target` / `TARGET`.
const TARGET: &str = "helper";

/// Journald fields every entry sets itself; a structured field that would
/// land on one of them is dropped.
const JOURNAL_FIXED_KEYS: [&str; 4] = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "TARGET"];

/// Builds one journald entry: `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
/// `TARGET`, then the fields as given, names upper-cased and sanitised
/// ([`journal::key`]). Fields dropped from the JSON line are dropped here
/// too, as are `null` values and names with nothing left after sanitising.
pub fn journal_entry(level: Level, message: &str, fields: &[(&str, Value)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    journal::put(&mut buf, "MESSAGE", message.as_bytes());
    journal::put(
        &mut buf,
        "PRIORITY",
        level.priority().to_string().as_bytes(),
    );
    journal::put(
        &mut buf,
        "SYSLOG_IDENTIFIER",
        journal::IDENTIFIER.as_bytes(),
    );
    journal::put(&mut buf, "TARGET", TARGET.as_bytes());
    for (k, v) in fields {
        if FIXED_KEYS.contains(k) {
            continue;
        }
        let Some(key) = journal::key(k) else { continue };
        if JOURNAL_FIXED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some(value) = journal::value(v) {
            journal::put(&mut buf, &key, &value);
        }
    }
    buf
}

/// `fields`, with `task_id` first when `task` is given and `fields` has
/// none.
fn with_task<'a>(
    task: Option<&str>,
    fields: &'a [(&'a str, Value)],
) -> Cow<'a, [(&'a str, Value)]> {
    match task {
        Some(id) if !fields.iter().any(|(k, _)| *k == "task_id") => {
            let mut all = Vec::with_capacity(fields.len() + 1);
            all.push(("task_id", Value::from(id)));
            all.extend_from_slice(fields);
            Cow::Owned(all)
        }
        _ => Cow::Borrowed(fields),
    }
}

pub fn emit(level: Level, message: &str, fields: &[(&str, Value)]) {
    if !enabled(level) {
        return;
    }
    let fields = with_task(TASK_ID.get().map(String::as_str), fields);
    // In a shim, shim.log takes the place of stderr (which is /dev/null).
    let shim = SHIM_FILE.get();
    let mut to_file = match shim {
        Some(_) => to_shim_log(level, MAX_LEVEL.load(Ordering::Relaxed)),
        None => TO_STDERR.load(Ordering::Relaxed),
    };
    if let Some(j) = JOURNAL.get() {
        // A line the journal refuses still goes somewhere.
        if j.send(&journal_entry(level, message, &fields)).is_err() {
            to_file = true;
        }
    }
    if !to_file {
        return;
    }
    let mut text = line(level, message, &fields);
    text.push('\n');
    // Nowhere to report a failed log write; dropping the line is the
    // answer.
    match shim {
        Some(f) => f.write(&text),
        None => {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

pub fn error(message: &str, fields: &[(&str, Value)]) {
    emit(Level::Error, message, fields)
}

pub fn warn(message: &str, fields: &[(&str, Value)]) {
    emit(Level::Warn, message, fields)
}

pub fn info(message: &str, fields: &[(&str, Value)]) {
    emit(Level::Info, message, fields)
}

pub fn debug(message: &str, fields: &[(&str, Value)]) {
    emit(Level::Debug, message, fields)
}

/// An error and its sources, joined by `": "`.
pub fn chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(parse_filter("debug"), Some(4));
        assert_eq!(parse_filter("warn,execgo_runtime=debug"), Some(2));
        assert_eq!(parse_filter("error,helper=debug"), Some(4));
        assert_eq!(parse_filter("execgo_runtime_helper=off,info"), Some(0));
        assert_eq!(parse_filter("nonsense"), None);
    }

    #[test]
    fn line_shape() {
        let text = line(
            Level::Warn,
            "say \"hi\"",
            &[("task_id", Value::from("t1")), ("level", Value::from("x"))],
        );
        assert!(text.starts_with("{\"timestamp\":\""), "{text}");
        let l: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = text
            .split(&[',', '{'][..])
            .filter_map(|p| p.split(':').next())
            .filter(|k| k.starts_with('"'))
            .map(|k| k.trim_matches('"'))
            .collect();
        assert_eq!(keys[..4], ["timestamp", "level", "target", "message"]);
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["target"], "helper");
        assert_eq!(l["message"], "say \"hi\"");
        assert_eq!(l["task_id"], "t1");
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn format_default_rule() {
        use Format::*;
        assert_eq!(Format::resolve(None, false), Json);
        assert_eq!(Format::resolve(None, true), Journald);
        assert_eq!(Format::resolve(Some(Json), true), Json);
        assert_eq!(Format::resolve(Some(Journald), false), Journald);
    }

    #[test]
    fn journal_entry_exact_bytes() {
        let entry = journal_entry(
            Level::Warn,
            "launch failed",
            &[
                ("task_id", Value::from("t-1")),
                ("shim_pid", Value::from(42)),
                ("already_claimed", Value::from(false)),
                ("error", Value::from("first\nsecond")),
                ("program", Value::Null),
                ("_peer.uid", Value::from(7)),
                ("message", Value::from("a fixed key")),
                ("Target", Value::from("lands on TARGET")),
                ("__", Value::from("no name left")),
                ("caps", serde_json::json!({"a": [1, "b"]})),
            ],
        );
        let mut want = b"MESSAGE=launch failed\n\
            PRIORITY=4\n\
            SYSLOG_IDENTIFIER=execgo-runtime-helper\n\
            TARGET=helper\n\
            TASK_ID=t-1\n\
            SHIM_PID=42\n\
            ALREADY_CLAIMED=false\n\
            ERROR\n"
            .to_vec();
        want.extend_from_slice(&12u64.to_le_bytes());
        want.extend_from_slice(b"first\nsecond\nPEER_UID=7\nCAPS={\"a\":[1,\"b\"]}\n");
        assert_eq!(
            entry,
            want,
            "{}",
            String::from_utf8_lossy(&entry).escape_debug()
        );
    }

    #[test]
    fn priorities() {
        for (level, p) in [
            (Level::Error, "3"),
            (Level::Warn, "4"),
            (Level::Info, "6"),
            (Level::Debug, "7"),
        ] {
            let entry = journal_entry(level, "m", &[]);
            let text = String::from_utf8(entry).unwrap();
            assert!(text.contains(&format!("\nPRIORITY={p}\n")), "{text}");
        }
    }

    #[test]
    fn shim_log_takes_trouble_or_everything_at_debug() {
        let info = Level::Info as u8;
        assert!(to_shim_log(Level::Error, info));
        assert!(to_shim_log(Level::Warn, info));
        assert!(!to_shim_log(Level::Info, info));
        assert!(to_shim_log(Level::Info, Level::Debug as u8));
        assert!(to_shim_log(Level::Debug, Level::Debug as u8));
    }

    #[test]
    fn shim_lines_carry_their_task() {
        let f = [("pid", Value::from(5))];
        assert_eq!(with_task(None, &f).as_ref(), &f[..]);
        let with = with_task(Some("t9"), &f);
        assert_eq!(with[0], ("task_id", Value::from("t9")));
        assert_eq!(with[1], ("pid", Value::from(5)));
        // A line naming its task keeps it.
        let own = [("task_id", Value::from("other"))];
        assert_eq!(with_task(Some("t9"), &own).as_ref(), &own[..]);
    }

    #[test]
    fn journal_entry_over_a_fake_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let j = Journal::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(server.recv(&mut buf).unwrap(), 0);
        let entry = journal_entry(
            Level::Info,
            "shim started",
            &[("task_id", "t2".into()), ("shim_pid", 77.into())],
        );
        j.send(&entry).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &b"MESSAGE=shim started\nPRIORITY=6\nSYSLOG_IDENTIFIER=execgo-runtime-helper\n\
               TARGET=helper\nTASK_ID=t2\nSHIM_PID=77\n"[..]
        );
    }

    #[test]
    fn chains_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
