//! JSON-lines logging on stderr: one object per line,
//! `{"timestamp","level","target":"helper","message",...fields}`.
//!
//! Hand-written so the helper stays free of a logging framework. The helper
//! is single-threaded and Rust's stderr is unbuffered, so a line is one
//! `write_all`. In the shim, stderr is `tasks/<id>/shim.log`, so the same
//! calls land there. Never called between fork and exec.

use std::error::Error;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::Value;

use crate::clock;

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
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level from a `RUST_LOG`-style filter (read before start-up
/// clears the environment). Unparsable filters keep the default, info.
pub fn init(filter: Option<&str>) {
    if let Some(level) = filter.and_then(parse_filter) {
        MAX_LEVEL.store(level, Ordering::Relaxed);
    }
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
    push("timestamp", &Value::from(clock::now_rfc3339()));
    push("level", &Value::from(level.as_str()));
    push("target", &Value::from("helper"));
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

pub fn emit(level: Level, message: &str, fields: &[(&str, Value)]) {
    if !enabled(level) {
        return;
    }
    let mut text = line(level, message, fields);
    text.push('\n');
    // Nowhere to report a failed log write; dropping the line is the answer.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
    fn chains_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
