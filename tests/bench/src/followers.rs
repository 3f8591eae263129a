//! What idle followers cost: 100 streams (half `events?follow=true`, half
//! `logs/stdout?follow=true`) held open on a running task that writes
//! nothing, and the runtime's CPU time over a window with them against
//! the same window with none (the baseline: the same runtime idle).

use std::io::Read;
use std::time::{Duration, Instant};

use crate::env::{Env, Row};

/// utime + stime of `pid` in ms.
fn cpu_ms(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 * 10.0
}

fn rss_kib(pid: i32) -> u64 {
    crate::procfs::rss(pid).map(|r| r.vm_rss).unwrap_or(0)
}

pub fn run(env: &Env, followers: usize, window: Duration) {
    println!();
    println!(
        "idle followers: {followers} open streams on a silent running task, runtime CPU over {:.0} s",
        window.as_secs_f64()
    );
    let s = env.server(
        "followers",
        &["--max-streams".into(), (followers + 8).to_string()],
    );
    let c = crate::client::Client::new(&s.base);
    let id = c.submit(&execgo_runtime_tests::json!({
        "execution": {"kind": "command", "program": "sleep", "args": ["600"]}
    }));
    c.wait_for(&id, Duration::from_millis(5), crate::client::is_running);
    let pid = s.pid();

    let before = cpu_ms(pid);
    std::thread::sleep(window);
    let idle_ms = cpu_ms(pid) - before;
    let rss_idle = rss_kib(pid);

    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .build();
    let mut open = Vec::new();
    let t = Instant::now();
    for i in 0..followers {
        let path = if i % 2 == 0 {
            format!("/api/v1/tasks/{id}/events?follow=true")
        } else {
            format!("/api/v1/tasks/{id}/logs/stdout?follow=true")
        };
        let resp = agent
            .get(&format!("{}{path}", s.base))
            .call()
            .unwrap_or_else(|e| panic!("follower {i}: {e}"));
        let mut reader = resp.into_reader();
        if i % 2 == 0 {
            // The stored events arrive at once; read them so the stream is idle.
            let mut buf = [0u8; 8192];
            let _ = reader.read(&mut buf);
        }
        open.push(reader);
    }
    let opened = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ms(pid);
    std::thread::sleep(window);
    let busy_ms = cpu_ms(pid) - before;
    let rss_open = rss_kib(pid);
    let per_s = |ms: f64| ms / window.as_secs_f64();
    println!(
        "  baseline: the same runtime, no followers   {:8.2} ms CPU/s",
        per_s(idle_ms)
    );
    println!(
        "  with {followers} idle followers                {:8.2} ms CPU/s  (opened in {:.0} ms)",
        per_s(busy_ms),
        opened.as_secs_f64() * 1000.0
    );
    let extra = (busy_ms - idle_ms).max(0.0);
    println!(
        "  cost per follower: {:.4} ms CPU/s; RSS {} KiB -> {} KiB ({:.1} KiB each)",
        per_s(extra) / followers as f64,
        rss_idle,
        rss_open,
        rss_open.saturating_sub(rss_idle) as f64 / followers as f64
    );
    env.row(Row {
        figure: format!("{followers} idle followers, runtime CPU"),
        measured: format!("{:.2} ms/s", per_s(busy_ms)),
        baseline: format!("{:.2} ms/s with none", per_s(idle_ms)),
        ratio: format!("+{:.2} ms/s", per_s(extra)),
        target: "no polling".into(),
        met: None,
    });
    drop(open);
    let _ = c.kill(&id);
}
