//! Logging set-up: `tracing` events, filtered by `RUST_LOG`, go to one of
//! two sinks (`--log-format`), as the runtime's do:
//!
//! - `json`: JSON lines on stderr (`tracing-subscriber`), the event's
//!   fields at the top level next to `timestamp`, `level`, `message` and
//!   `target`.
//! - `journald`: one journald entry per event (`tracing-journald`), with
//!   `SYSLOG_IDENTIFIER=execgo-runtime-helper` and every field upper-cased
//!   without prefix (`task_id` → `TASK_ID`), so `journalctl TASK_ID=<id>`
//!   finds a task's lines. Nothing goes to stderr then.
//!
//! Every event names [`TARGET`] as its target, so `RUST_LOG=helper=debug`
//! selects the helper's lines whatever module they come from.
//!
//! A shim inherits the subscriber across its fork. It runs inside a span
//! carrying its task id (so every journald entry of it has `TASK_ID`) and,
//! once isolated ([`enter_shim`]), writes its warnings and errors (every
//! line, at debug level) to `tasks/<id>/shim.log` as JSON ([`ShimLog`]).
//! `shim.log` is created by the first line it takes, so a task that ran
//! without trouble has none. A shim's progress lines ([`shim_info!`]) are
//! skipped outright when no sink would take them. Nothing here starts a
//! thread or keeps a lock between events, so a fork from the helper
//! inherits no held lock; the task child of [`crate::sys::spawn_task`]
//! logs nothing.

use std::error::Error;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{Directive, EnvFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::fs_at::{self, Access};
use crate::sys;
use execgo_runtime_protocol::taskdir::now_rfc3339;

/// The target of every event (`target` / `TARGET`, and what `RUST_LOG`
/// directives name).
pub const TARGET: &str = "helper";

/// The shim's own log file in its task directory.
use execgo_runtime_protocol::taskdir::SHIM_LOG;

/// `SYSLOG_IDENTIFIER` of every entry (`journalctl -t execgo-runtime-helper`).
const IDENTIFIER: &str = "execgo-runtime-helper";

/// Where journald listens; `tracing-journald` sends there. Named in the
/// fall-back warning.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

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

#[derive(Debug, thiserror::Error)]
enum JournalError {
    #[error("opening the journald socket failed")]
    Open(#[source] std::io::Error),
    #[error("finding the next free descriptor failed")]
    NextFd(#[source] Errno),
    #[error("descriptor {fd} is not the journald socket")]
    NotASocket {
        fd: RawFd,
        #[source]
        source: Errno,
    },
}

/// The journald socket's descriptor, in journald mode.
static JOURNAL_FD: OnceLock<RawFd> = OnceLock::new();
/// In a shim, once isolated: where its `shim.log` lines go.
static SHIM: OnceLock<ShimFile> = OnceLock::new();
/// Whether the helper logs at debug level, as [`init`] found it: decided
/// in the helper, so a shim inherits the answer instead of registering a
/// callsite with the subscriber to ask.
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: `rust_log` is `RUST_LOG` (read before
/// start-up cleared the environment). Called once, after start-up clean-up,
/// which would close the journald socket. When journald is not reachable,
/// lines are JSON on stderr and a warning says why, as the runtime does.
pub fn init(rust_log: Option<&str>, format: Format) {
    let (journald, failure) = match format {
        Format::Json => (None, None),
        Format::Journald => match open_journald() {
            Ok(layer) => (Some(layer), None),
            Err(e) => (None, Some(e)),
        },
    };
    let json = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            // Its fall-back report is eprintln!, which panics when stderr
            // fails too (a closed pipe); a lost line is the answer.
            .log_internal_errors(false)
            .with_timer(Millis)
            .with_writer(std::io::stderr)
            // A shim's stderr is /dev/null: its lines go to shim.log (or
            // journald) only, and none is formatted for nothing.
            .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                SHIM.get().is_none()
            }))
    });
    let subscriber = tracing_subscriber::registry()
        .with(filter(rust_log))
        .with(journald)
        .with(json)
        .with(ShimLog);
    // Fails only when one is set already: the first one stays.
    let _ = tracing::subscriber::set_global_default(subscriber);
    DEBUG.store(
        tracing::enabled!(target: TARGET, Level::DEBUG),
        Ordering::Relaxed,
    );
    if let Some(e) = failure {
        tracing::warn!(
            target: TARGET,
            error = %chain(&e),
            socket = JOURNALD_SOCKET,
            "journald is not reachable; logging JSON to stderr"
        );
    }
}

/// Timestamps as in the task-dir contract (`now_rfc3339`): RFC 3339, UTC,
/// milliseconds.
struct Millis;

impl FormatTime for Millis {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(&now_rfc3339())
    }
}

/// `RUST_LOG` as an `EnvFilter`, after a bare `info`: a bare level in
/// `rust_log` replaces that, and a `helper=LEVEL` directive is more
/// specific than either, so the helper logs at info unless `rust_log` says
/// otherwise for it. Unparsable directives are skipped (`parse_lossy` would
/// say so with eprintln!, which panics when stderr fails).
fn filter(rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .unwrap_or("")
        .split(',')
        .filter_map(|d| d.parse::<Directive>().ok())
        .fold(EnvFilter::new("info"), EnvFilter::add_directive)
}

/// The journald layer, and its socket's descriptor in [`JOURNAL_FD`].
fn open_journald() -> Result<tracing_journald::Layer, JournalError> {
    // The layer does not tell its descriptor, and the shim must keep it
    // across its clean-up. socket(2) takes the lowest free number
    // (https://man7.org/linux/man-pages/man2/socket.2.html) and nothing
    // else opens one meanwhile (single-threaded), so it is the number free
    // just before; checked to be a socket after.
    let next = sys::open(
        Path::new("/dev/null"),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(JournalError::NextFd)?
    .as_raw_fd();
    let layer = tracing_journald::layer().map_err(JournalError::Open)?;
    let stat = nix::sys::stat::fstat(next)
        .map_err(|source| JournalError::NotASocket { fd: next, source })?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(JournalError::NotASocket {
            fd: next,
            source: Errno::ENOTSOCK,
        });
    }
    let _ = JOURNAL_FD.set(next);
    // Syslog levels as the runtime maps them: info 6, debug 7.
    let priorities = tracing_journald::PriorityMappings {
        info: tracing_journald::Priority::Informational,
        debug: tracing_journald::Priority::Debug,
        ..tracing_journald::PriorityMappings::new()
    };
    Ok(layer
        .with_field_prefix(None)
        .with_syslog_identifier(IDENTIFIER.to_string())
        .with_priority_mappings(priorities))
}

/// The journal socket's descriptor, if journald mode is on: the shim must
/// keep it when it closes the helper's descriptors.
pub fn journal_fd() -> Option<RawFd> {
    JOURNAL_FD.get().copied()
}

/// In a shim, once isolated (its stderr is /dev/null): from now on its
/// warnings and errors, or every line when the helper's level is debug, go
/// to `shim.log` under `task_dir`, created by the first of them, each line
/// with `task_id`.
pub fn enter_shim(task_id: &str, task_dir: OwnedFd) {
    let _ = SHIM.set(ShimFile {
        task_id: task_id.to_string(),
        everything: DEBUG.load(Ordering::Relaxed),
        dir: task_dir,
        file: OnceLock::new(),
    });
}

/// Whether a shim's info lines can reach a sink: journald, or `shim.log`
/// at debug level. Otherwise they go nowhere (a shim's stderr is
/// /dev/null, and `shim.log` takes warnings and errors only).
pub fn shim_info_wanted() -> bool {
    JOURNAL_FD.get().is_some() || DEBUG.load(Ordering::Relaxed)
}

/// `tracing::info!` with the helper's target, for a shim's progress lines:
/// skipped when [`shim_info_wanted`] says they would go nowhere. A shim is
/// forked per task and every page of helper code it runs becomes resident
/// in it; for an event nobody takes, the subscriber's callsite
/// registration and filtering would be most of that code.
macro_rules! shim_info {
    ($($arg:tt)+) => {
        if $crate::logging::shim_info_wanted() {
            tracing::info!(target: $crate::logging::TARGET, $($arg)+)
        }
    };
}
pub(crate) use shim_info;

struct ShimFile {
    task_id: String,
    /// The level is debug: every line goes to `shim.log`.
    everything: bool,
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
            // Nowhere to report a failed log write; dropping the line is
            // the answer.
            let _ = f.write_all(text.as_bytes());
        }
    }
}

/// Writes a shim's lines to its `shim.log` (see [`enter_shim`]): one JSON
/// object per line, the event's fields with `timestamp`, `level`,
/// `target` and `task_id`.
struct ShimLog;

impl<S: Subscriber> Layer<S> for ShimLog {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(shim) = SHIM.get() else { return };
        let meta = event.metadata();
        if *meta.level() > Level::WARN && !shim.everything {
            return;
        }
        let mut line = Map::new();
        event.record(&mut JsonFields(&mut line));
        line.insert("timestamp".into(), now_rfc3339().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("task_id".into(), shim.task_id.as_str().into());
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        shim.write(&text);
    }
}

/// An event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
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
    fn format_default_rule() {
        use Format::*;
        assert_eq!(Format::resolve(None, false), Json);
        assert_eq!(Format::resolve(None, true), Journald);
        assert_eq!(Format::resolve(Some(Json), true), Json);
        assert_eq!(Format::resolve(Some(Journald), false), Journald);
    }

    /// The most verbose level `rust_log` lets the helper log at.
    fn level(rust_log: &str) -> Option<Level> {
        let subscriber = tracing_subscriber::registry().with(filter(Some(rust_log)));
        tracing::subscriber::with_default(subscriber, || {
            if tracing::enabled!(target: TARGET, Level::DEBUG) {
                Some(Level::DEBUG)
            } else if tracing::enabled!(target: TARGET, Level::INFO) {
                Some(Level::INFO)
            } else if tracing::enabled!(target: TARGET, Level::WARN) {
                Some(Level::WARN)
            } else if tracing::enabled!(target: TARGET, Level::ERROR) {
                Some(Level::ERROR)
            } else {
                None
            }
        })
    }

    #[test]
    fn filters() {
        assert_eq!(level(""), Some(Level::INFO));
        assert_eq!(level("debug"), Some(Level::DEBUG));
        assert_eq!(level("warn,execgo_runtime=debug"), Some(Level::WARN));
        assert_eq!(level("execgo_runtime=debug"), Some(Level::INFO));
        assert_eq!(level("error,helper=debug"), Some(Level::DEBUG));
        assert_eq!(level("helper=off,info"), None);
        assert_eq!(level("off"), None);
        assert_eq!(level("nonsense"), Some(Level::INFO));
        assert_eq!(level("warn,helper=loud"), Some(Level::WARN));
    }

    #[test]
    fn shim_log_fields() {
        use std::sync::{Arc, Mutex};
        struct Collect(Arc<Mutex<Vec<Value>>>);
        impl<S: Subscriber> Layer<S> for Collect {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let mut m = Map::new();
                event.record(&mut JsonFields(&mut m));
                self.0.lock().unwrap().push(Value::Object(m));
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Collect(got.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: TARGET,
                pid = 5_u32,
                delta = -1_i64,
                ok = false,
                name = "x",
                error = %"a: b",
                code = Option::<&str>::None,
                "say {}",
                "hi"
            );
        });
        let got = got.lock().unwrap();
        assert_eq!(
            got[0],
            serde_json::json!({
                "message": "say hi", "pid": 5, "delta": -1, "ok": false,
                "name": "x", "error": "a: b"
            })
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
