//! Streams against the real binaries: an SSE follower sees every event
//! exactly once across a reconnect with `Last-Event-ID` and its stream ends
//! after the terminal event; a log follower gets exactly the bytes of
//! `stdout.log`; ranges; the stream limit; a slow reader does not grow the
//! runtime's memory; and the CLI's `logs`, `events` and `run --follow`.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);

fn stream_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(30))
        .build()
}

fn open(url: &str, headers: &[(&str, &str)]) -> ureq::Response {
    let mut req = stream_agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            panic!("{url}: {code} {}", r.into_string().unwrap_or_default())
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

/// One SSE message: (id, event, data).
type Message = (i64, String, Value);

/// Reads messages until the stream ends, or until `max` were read.
fn read_sse(reader: &mut impl BufRead, max: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (None, None, None);
    let mut line = String::new();
    while out.len() < max {
        line.clear();
        if reader.read_line(&mut line).expect("read sse") == 0 {
            break;
        }
        let l = line.trim_end_matches('\n');
        if l.is_empty() {
            if let (Some(i), Some(e), Some(d)) = (id.take(), event.take(), data.take()) {
                out.push((i, e, d));
            }
        } else if let Some(v) = l.strip_prefix("id: ") {
            id = Some(v.parse::<i64>().expect("numeric id"));
        } else if let Some(v) = l.strip_prefix("event: ") {
            event = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = Some(serde_json::from_str::<Value>(v).expect("json data"));
        } else {
            assert!(l.starts_with(':'), "unexpected sse line {l:?}");
        }
    }
    out
}

#[test]
fn an_event_follower_sees_each_event_once_across_a_reconnect() {
    let s = Server::start();
    let id = s.submit(&sh("sleep 1; echo done"));
    let url = s.url(&format!("/api/v1/tasks/{id}/events?follow=true"));
    let resp = open(&url, &[]);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut first = BufReader::new(resp.into_reader());
    let head = read_sse(&mut first, 2);
    assert_eq!(head.len(), 2);
    drop(first);
    let last = head[1].0.to_string();
    let resp = open(&url, &[("Last-Event-ID", &last)]);
    let rest = read_sse(&mut BufReader::new(resp.into_reader()), usize::MAX);
    // The stream ended by itself: the task is over.
    let status = s.status(&id);
    assert_eq!(status["status"], "success", "{status}");
    let got: Vec<Message> = head.into_iter().chain(rest).collect();
    let stored = s.events(&id);
    assert_eq!(got.len(), stored.len(), "{got:?}\nvs {stored:?}");
    for ((seq, event, data), want) in got.iter().zip(&stored) {
        assert_eq!(*seq, want["seq"].as_i64().unwrap());
        assert_eq!(event, want["event_type"].as_str().unwrap());
        assert_eq!(data, want);
    }
    assert_eq!(got.last().unwrap().1, "finished");
    // A follower of a finished task gets everything and the end at once.
    let again = open(&url, &[]);
    assert_eq!(
        read_sse(&mut BufReader::new(again.into_reader()), usize::MAX).len(),
        stored.len()
    );
}

#[test]
fn a_log_follower_gets_exactly_the_bytes_of_the_log() {
    let s = Server::start();
    let id = s.submit(&sh(
        "i=0; while [ $i -lt 40 ]; do echo \"line $i $(head -c 300 /dev/zero | tr '\\0' x)\"; \
         i=$((i+1)); sleep 0.02; done; printf tail",
    ));
    let resp = open(
        &s.url(&format!("/api/v1/tasks/{id}/logs/stdout?follow=true")),
        &[],
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    let mut got = Vec::new();
    resp.into_reader().read_to_end(&mut got).unwrap();
    assert_eq!(
        s.status(&id)["status"],
        "success",
        "the stream ended with the task"
    );
    let on_disk = std::fs::read(s.task_dir(&id).join("stdout.log")).unwrap();
    assert!(on_disk.len() > 12_000 && on_disk.ends_with(b"tail"));
    assert_eq!(got, on_disk);

    // From an offset, with and without follow.
    for follow in ["true", "false"] {
        let r = open(
            &s.url(&format!(
                "/api/v1/tasks/{id}/logs/stdout?offset=100&follow={follow}"
            )),
            &[],
        );
        let mut part = Vec::new();
        r.into_reader().read_to_end(&mut part).unwrap();
        assert_eq!(part, on_disk[100..], "follow={follow}");
    }
    let r = request(
        "GET",
        &s.url(&format!("/api/v1/tasks/{id}/logs/stderr")),
        None,
        &[],
    );
    assert_eq!((r.status, r.text.as_str()), (200, ""));
}

#[test]
fn ranges_of_a_log() {
    let s = Server::start();
    let id = s.submit(&sh("printf 0123456789"));
    s.wait_terminal(&id, T);
    let url = s.url(&format!("/api/v1/tasks/{id}/logs/stdout"));
    let get = |range: &str| request("GET", &url, None, &[("range", range)]);
    let r = get("bytes=2-4");
    assert_eq!((r.status, r.text.as_str()), (206, "234"));
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = get("bytes=7-");
    assert_eq!((r.status, r.text.as_str()), (206, "789"));
    let r = get("bytes=-2");
    assert_eq!((r.status, r.text.as_str()), (206, "89"));
    let r = get("bytes=5-100");
    assert_eq!((r.status, r.text.as_str()), (206, "56789"));
    let r = get("bytes=10-");
    assert_eq!(r.status, 416);
    assert_eq!(r.code(), "invalid_input");
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    let r = get("bytes=0-1,4-5");
    assert_eq!(
        (r.status, r.text.as_str()),
        (200, "0123456789"),
        "a multi-range is ignored"
    );
    let r = request(
        "GET",
        &format!("{url}?offset=1"),
        None,
        &[("range", "bytes=0-1")],
    );
    assert_eq!(r.status, 400);
    // At the largest file offsets a read can start from: nothing there,
    // followed or not, and a whole (empty) response, not a stream that
    // breaks (found by schemathesis).
    for offset in [i64::MAX - 1, i64::MAX] {
        for follow in ["true", "false"] {
            let r = request(
                "GET",
                &format!("{url}?offset={offset}&follow={follow}"),
                None,
                &[],
            );
            assert_eq!((r.status, r.text.as_str()), (200, ""), "{offset} {follow}");
        }
    }
    // Past the largest file offset: refused.
    for bad in [
        "?offset=-1",
        "?follow=maybe",
        "?tail=3",
        "?offset=10000000000000000000&follow=true",
        "?offset=9223372036854775808",
    ] {
        let r = request("GET", &format!("{url}{bad}"), None, &[]);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_input"),
            "{bad}"
        );
    }
    let r = s.get(&format!("/api/v1/tasks/{id}/logs/journal"));
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = s.get("/api/v1/tasks/nope/logs/stdout?follow=true");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = s.get("/api/v1/tasks/nope/events?follow=true");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = request(
        "GET",
        &s.url(&format!("/api/v1/tasks/{id}/events?follow=true")),
        None,
        &[("last-event-id", "x")],
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_input"));
}

#[test]
fn streams_are_bounded_and_a_closed_one_frees_its_place() {
    let s = Server::builder().args(["--max-streams", "2"]).start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    s.wait_status(&id, "running", T);
    let events = s.url(&format!("/api/v1/tasks/{id}/events?follow=true"));
    let logs = s.url(&format!("/api/v1/tasks/{id}/logs/stdout?follow=true"));
    let a = open(&events, &[]);
    let b = open(&logs, &[]);
    let r = s.get(&format!("/api/v1/tasks/{id}/events?follow=true"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "resource_limit_exceeded")
    );
    // Plain reads are not streams.
    assert_eq!(s.get(&format!("/api/v1/tasks/{id}/events")).status, 200);
    assert_eq!(
        s.get(&format!("/api/v1/tasks/{id}/logs/stdout")).status,
        200
    );
    drop(a);
    // The runtime notices the closed connection and gives the place back.
    let start = Instant::now();
    loop {
        let r = request(
            "GET",
            &s.url(&format!("/api/v1/tasks/{id}/logs/stderr?follow=false")),
            None,
            &[],
        );
        assert_eq!(r.status, 200);
        let probe = try_open(&events);
        if let Some(p) = probe {
            drop(p);
            break;
        }
        assert!(
            start.elapsed() < T,
            "the closed follower's place never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Following ends with the task.
    assert_eq!(s.kill(&id, None).status, 200);
    let mut rest = Vec::new();
    b.into_reader().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

fn try_open(url: &str) -> Option<ureq::Response> {
    match stream_agent().get(url).call() {
        Ok(r) => Some(r),
        Err(ureq::Error::Status(429, _)) => None,
        Err(e) => panic!("{url}: {e}"),
    }
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_slow_reader_does_not_grow_the_runtime() {
    let s = Server::start();
    let id = s.submit(&sh("head -c 64000000 /dev/zero | tr '\\0' y"));
    s.wait_terminal(&id, T);
    let resp = open(
        &s.url(&format!("/api/v1/tasks/{id}/logs/stdout?follow=true")),
        &[],
    );
    let base = rss_kib(s.pid());
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut peak = base;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        // Slow: the runtime has the rest of the log to buffer, if it would.
        if total < 8_000_000 {
            std::thread::sleep(Duration::from_millis(2));
        }
        if total % (4 << 20) < n as u64 {
            peak = peak.max(rss_kib(s.pid()));
        }
    }
    assert_eq!(total, 64_000_000);
    let grew = peak.saturating_sub(base);
    assert!(
        grew < 16 * 1024,
        "the runtime grew by {grew} KiB while streaming 64 MB"
    );
}

#[test]
fn the_cli_prints_logs_and_events_and_runs_with_follow() {
    let s = Server::start();
    let id = s.submit(&sh("echo out; echo err >&2"));
    s.wait_terminal(&id, T);
    let cli = |args: &[&str]| {
        std::process::Command::new(runtime_bin())
            .args(args)
            .args(["--server", &s.base])
            .output()
            .unwrap()
    };
    let out = cli(&["logs", &id]);
    assert_eq!(out.stdout, b"out\n");
    let out = cli(&["logs", "--stream", "stderr", &id]);
    assert_eq!(out.stdout, b"err\n");
    let out = cli(&["logs", "-f", &id]);
    assert_eq!(out.stdout, b"out\n");
    let out = cli(&["events", "-f", &id]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, s.events(&id), "each event once, in order");
    let out = cli(&["events", &id]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), lines.len());

    let body = sh("for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo oops >&2").to_string();
    let out = cli(&["run", "--follow", "--json", &body]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tick 1\ntick 2\ntick 3\n"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("oops\n"), "{err}");
    assert!(err.contains("\"status\": \"success\""), "{err}");
    let out = cli(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn every_error_code_has_a_series_from_the_start() {
    let s = Server::start();
    let text = s.get("/metrics").text;
    for code in [
        "timeout",
        "cancelled",
        "memory_limit_exceeded",
        "cpu_limit_exceeded",
        "exit_nonzero",
        "launch_failed",
        "sandbox_setup_failed",
        "internal",
    ] {
        let series = format!("execgo_runtime_task_errors_total{{code=\"{code}\"}} 0");
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
}
