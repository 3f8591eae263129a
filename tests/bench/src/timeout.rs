//! Timeout precision: how far past `limits.wall_time_ms` a `sleep 10` ends,
//! from the task's own status, against a direct SIGTERM after the same
//! wall time.

use std::time::{Duration, Instant};

use execgo_runtime_tests::json;

use crate::baseline;
use crate::client::{epoch_ms, Client};
use crate::env::{Env, Row};
use crate::stats::{ms, Stats};

pub fn run(env: &Env, n: usize, wall_ms: u64) {
    println!();
    println!(
        "timeout precision: sleep 10 with limits.wall_time_ms {wall_ms} ({n} sequential tasks)"
    );
    let s = env.server("timeout", &[]);
    let c = Client::new(&s.base);
    let body = json!({
        "execution": {"kind": "command", "program": "sleep", "args": ["10"]},
        "limits": {"wall_time_ms": wall_ms}
    });
    let wall = Duration::from_millis(wall_ms);
    let mut by_ts = vec![];
    let mut by_usage = vec![];
    let mut by_client = vec![];
    let mut base = vec![];
    for _ in 0..n {
        base.push(ms(baseline::timeout_overshoot(wall)));
        let t = Instant::now();
        let id = c.submit(&body);
        let (st, seen) = c.wait_terminal(&id, Duration::from_millis(1));
        assert_eq!(st["error"]["code"], "timeout", "{st}");
        if let (Some(a), Some(b)) = (epoch_ms(&st["started_at"]), epoch_ms(&st["finished_at"])) {
            by_ts.push((b - a) as f64 - wall_ms as f64);
        }
        if let Some(d) = st["usage"]["duration_ms"].as_f64() {
            by_usage.push(d - wall_ms as f64);
        }
        by_client.push(ms(seen - t) - wall_ms as f64);
    }
    let ts = Stats::of(by_ts);
    let base = Stats::of(base);
    println!("{}", base.line("baseline sleep(wall), SIGTERM, wait"));
    println!("{}", ts.line("finished_at - started_at - wall"));
    println!("{}", Stats::of(by_usage).line("usage.duration_ms - wall"));
    println!(
        "{}",
        Stats::of(by_client).line("client submit->terminal - wall")
    );
    println!("  (timestamps have 1 ms resolution; the baseline is measured in µs)");
    env.row(Row {
        figure: format!("timeout overshoot, wall_time_ms {wall_ms}, p50 (p90, max)"),
        measured: format!("{:.0} ms ({:.0}, {:.0})", ts.p50, ts.p90, ts.max),
        baseline: format!("{:.3} ms direct SIGTERM", base.p50),
        ratio: format!("{:+.1} ms", ts.p50 - base.p50),
        target: "<= 10 ms".into(),
        met: Some(ts.p50 <= 10.0),
    });
}
