//! Kill latency: POST .../kill of a running `sleep 30` until a GET first
//! shows a terminal status, against SIGTERM + wait of a direct child.

use std::time::{Duration, Instant};

use execgo_runtime_tests::json;

use crate::baseline;
use crate::client::{epoch_ms, is_running, Client};
use crate::env::{Env, Row};
use crate::stats::{ratio, Stats};

/// How long a task runs before it is killed (so it is settled in its
/// monitor loop, not racing its own start).
const SETTLE: Duration = Duration::from_millis(20);

pub fn run(env: &Env, n: usize) {
    println!();
    println!("kill latency: POST kill of a running sleep 30 -> terminal status seen ({n} tasks)");
    let s = env.server("kill", &[]);
    let c = Client::new(&s.base);
    let body = json!({"execution": {"kind": "command", "program": "sleep", "args": ["30"]}});
    let mut total = vec![];
    let mut post = vec![];
    let mut shim_side = vec![];
    let mut base = vec![];
    for _ in 0..n {
        base.push(baseline::kill_latency(SETTLE));
        let id = c.submit(&body);
        c.wait_for(&id, Duration::from_millis(1), is_running);
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        let answer = c.kill(&id);
        post.push(t.elapsed());
        let st = if crate::client::is_terminal(&answer) {
            answer
        } else {
            c.wait_terminal(&id, env.poll).0
        };
        total.push(t.elapsed());
        assert_eq!(st["status"], "cancelled", "{st}");
        let requested = c
            .events(&id)
            .iter()
            .find(|e| e["event_type"] == "kill_requested")
            .and_then(|e| epoch_ms(&e["timestamp"]));
        if let (Some(a), Some(b)) = (requested, epoch_ms(&st["finished_at"])) {
            shim_side.push((b - a) as f64);
        }
    }
    let base = Stats::of_durations(&base);
    let rt = Stats::of_durations(&total);
    println!("{}", base.line("baseline SIGTERM + wait"));
    println!("{}", rt.line("execgo-runtime kill->terminal seen"));
    println!(
        "{}",
        Stats::of_durations(&post).line("  of which POST kill answered")
    );
    println!(
        "{}",
        Stats::of(shim_side).line_mean("kill_requested -> finished_at")
    );
    let r = ratio(rt.p50, base.p50);
    println!("  ratio p50 {r:.1}x (target <= 10 ms p50)");
    env.row(Row {
        figure: "kill -> terminal seen, p50 (p90, max)".into(),
        measured: format!("{:.2} ms ({:.2}, {:.2})", rt.p50, rt.p90, rt.max),
        baseline: format!("{:.3} ms direct SIGTERM+wait", base.p50),
        ratio: format!("{r:.1}x"),
        target: "<= 10 ms".into(),
        met: Some(rt.p50 <= 10.0),
    });
}
