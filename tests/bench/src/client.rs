//! A keep-alive HTTP client for the runtime's API.
//!
//! The e2e harness opens a new connection per request; a control plane
//! keeps its connections open, and so does this client (one `ureq::Agent`
//! per thread, whose pool reuses the connection once a body is read to the
//! end). Polling then costs one request on an open socket.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execgo_runtime_tests::{Value, TERMINAL};

pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// `GET /api/v1/tasks/:id` sent so far.
    status_gets: AtomicU64,
}

/// A non-2xx answer.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub text: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(60))
                .max_idle_connections_per_host(4)
                .build(),
            base: base.to_string(),
            status_gets: AtomicU64::new(0),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<String, HttpError> {
        let url = format!("{}{}", self.base, path);
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req.set("content-type", "application/json").send_bytes(b),
            None => req.call(),
        };
        let (ok, resp) = match res {
            Ok(r) => (true, r),
            Err(ureq::Error::Status(_, r)) => (false, r),
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let status = resp.status();
        let mut text = String::new();
        resp.into_reader()
            .take(256 << 20)
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        if ok {
            Ok(text)
        } else {
            Err(HttpError { status, text })
        }
    }

    fn json(&self, method: &str, path: &str, body: Option<&[u8]>) -> Value {
        let text = self
            .send(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {} {}", e.status, e.text));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not json: {e}"))
    }

    /// Submits; the task id, or the error answer (a 429 is worth a retry).
    pub fn try_submit(&self, body: &[u8]) -> Result<String, HttpError> {
        let text = self.send("POST", "/api/v1/tasks", Some(body))?;
        let v: Value = serde_json::from_str(&text).expect("submit answer is json");
        Ok(v["task_id"].as_str().expect("task_id").to_string())
    }

    /// A GET answered 2xx, its body.
    pub fn get_text(&self, path: &str) -> String {
        self.send("GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {} {}", e.status, e.text))
    }

    pub fn submit(&self, body: &Value) -> String {
        let bytes = serde_json::to_vec(body).expect("encode");
        self.try_submit(&bytes)
            .unwrap_or_else(|e| panic!("submit: {} {}", e.status, e.text))
    }

    pub fn status(&self, id: &str) -> Value {
        self.status_gets.fetch_add(1, Ordering::Relaxed);
        self.json("GET", &format!("/api/v1/tasks/{id}"), None)
    }

    /// Status reads (polls included) sent so far.
    pub fn status_gets(&self) -> u64 {
        self.status_gets.load(Ordering::Relaxed)
    }

    pub fn events(&self, id: &str) -> Vec<Value> {
        match self.json("GET", &format!("/api/v1/tasks/{id}/events"), None) {
            Value::Array(a) => a,
            other => panic!("events of {id}: not an array: {other}"),
        }
    }

    pub fn kill(&self, id: &str) -> Value {
        self.json("POST", &format!("/api/v1/tasks/{id}/kill"), Some(b""))
    }

    pub fn metrics(&self) -> String {
        self.send("GET", "/metrics", None)
            .unwrap_or_else(|e| panic!("metrics: {} {}", e.status, e.text))
    }

    /// Polls the status every `every` until it is terminal; the status and
    /// the instant the terminal status was first seen.
    pub fn wait_terminal(&self, id: &str, every: Duration) -> (Value, Instant) {
        self.wait_for(id, every, is_terminal)
    }

    /// Follows the task's events (`?follow=true`) until the stream ends
    /// after the terminal event: the status, and the instant the end was
    /// read. No polling: the runtime sends each event as it commits it.
    pub fn wait_terminal_by_events(&self, id: &str) -> (Value, Instant) {
        use std::io::BufRead;
        let url = format!("{}/api/v1/tasks/{id}/events?follow=true", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut reader = std::io::BufReader::new(resp.into_reader());
        let mut line = String::new();
        while reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading {url}: {e}"))
            > 0
        {
            line.clear();
        }
        let seen = Instant::now();
        (self.status(id), seen)
    }

    pub fn wait_for(
        &self,
        id: &str,
        every: Duration,
        done: fn(&Value) -> bool,
    ) -> (Value, Instant) {
        let start = Instant::now();
        loop {
            let v = self.status(id);
            if done(&v) {
                return (v, Instant::now());
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "task {id} not done after 120 s: {v}"
            );
            if !every.is_zero() {
                std::thread::sleep(every);
            }
        }
    }
}

pub fn is_terminal(v: &Value) -> bool {
    TERMINAL.contains(&v["status"].as_str().unwrap_or(""))
}

pub fn is_running(v: &Value) -> bool {
    v["status"] == "running" && v["shim_pid"].is_i64()
}

/// Sum of `execgo_runtime_tasks_total{status=...}` over `statuses`.
pub fn tasks_total(metrics: &str, statuses: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("execgo_runtime_tasks_total{"))
        .filter(|l| {
            statuses
                .iter()
                .any(|s| l.contains(&format!("status=\"{s}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Milliseconds since the epoch of an RFC 3339 timestamp.
pub fn epoch_ms(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tasks_total() {
        let m = "# HELP x\nexecgo_runtime_tasks_total{status=\"success\"} 12\n\
                 execgo_runtime_tasks_total{status=\"failed\"} 3\n\
                 execgo_runtime_tasks_running 1\n";
        assert_eq!(tasks_total(m, &["success"]), 12);
        assert_eq!(tasks_total(m, &["success", "failed", "cancelled"]), 15);
    }

    #[test]
    fn parses_timestamps() {
        let v = Value::from("2026-01-01T00:00:00.250Z");
        assert_eq!(epoch_ms(&v), Some(1_767_225_600_250));
    }
}
