//! Output capture: a task writing a large stdout, submit → terminal,
//! against the same `head -c N /dev/zero > file` run directly. The runtime
//! is started with `--max-log-bytes` of the output's size, so the whole
//! output goes through the shim's relay into `stdout.log`.

use std::time::{Duration, Instant};

use execgo_runtime_tests::json;

use crate::baseline;
use crate::client::Client;
use crate::env::{Env, Row};
use crate::stats::{ratio, Stats};

/// The status body shows this much of stdout (the default, 4 MiB of NUL
/// bytes, is 24 MiB of JSON escapes per poll: a cost of reading, not of
/// capturing).
const SHOWN: u64 = 4096;

pub fn run(env: &Env, bytes: u64, runs: usize) {
    println!();
    println!(
        "output capture: head -c {bytes} /dev/zero as a task ({runs} runs; stdout_max_bytes {SHOWN})"
    );
    // Every byte kept (the log cap at least the output): the figure is the
    // cost of relaying the whole output into stdout.log.
    let s = env.server("output", &["--max-log-bytes".into(), bytes.to_string()]);
    let c = Client::new(&s.base);
    let body = json!({
        "execution": {"kind": "command", "program": "head",
                      "args": ["-c", bytes.to_string(), "/dev/zero"]},
        "limits": {"stdout_max_bytes": SHOWN}
    });
    let out = env.root.join("baseline-output");
    let mut base = vec![];
    let mut rt = vec![];
    let mut run_ms = vec![];
    for _ in 0..runs {
        base.push(baseline::head_to_file(bytes, &out));
        let t = Instant::now();
        let id = c.submit(&body);
        let (st, seen) = c.wait_terminal(&id, Duration::from_millis(2));
        rt.push(seen - t);
        assert_eq!(st["status"], "success", "{st}");
        if let Some(d) = st["usage"]["duration_ms"].as_f64() {
            run_ms.push(d);
        }
        let log = s.task_dir(&id).join("stdout.log");
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, bytes, "stdout.log of {id}");
        // Free the disk; the runtime reads only the head it cached.
        let _ = std::fs::remove_file(&log);
    }
    let base = Stats::of_durations(&base);
    let rt = Stats::of_durations(&rt);
    println!("{}", base.line("baseline head > file"));
    println!("{}", rt.line("execgo-runtime submit->terminal"));
    println!("{}", Stats::of(run_ms).line("  of which usage.duration_ms"));
    let r = ratio(rt.p50, base.p50);
    println!(
        "  ratio p50 {r:.2}x; overhead p50 {:.1} ms",
        rt.p50 - base.p50
    );
    env.row(Row {
        figure: format!("{} MiB to stdout, submit->terminal", bytes >> 20),
        measured: format!("{:.1} ms", rt.p50),
        baseline: format!("{:.1} ms head > file", base.p50),
        ratio: format!("{r:.2}x"),
        target: "(no target)".into(),
        met: None,
    });
}
