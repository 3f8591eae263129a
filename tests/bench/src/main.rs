//! `execgo-runtime-bench`: starts the real runtime and helper and prints
//! figures next to baselines measured in the same run, with their ratios.
//! It asserts nothing: the figures go to `docs/benchmarks.md`.

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use execgo_runtime_tests::{json, Server, Value, TERMINAL};

#[derive(Debug, Parser)]
#[command(about = "Benchmark execgo-runtime against same-run baselines")]
struct Args {
    /// Sequential /bin/true tasks for the latency figure.
    #[arg(long, default_value_t = 200)]
    latency_tasks: usize,
}

struct Stats {
    p50: Duration,
    p90: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        max: *v.last().unwrap_or(&Duration::ZERO),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls status in a tight loop (0.2 ms) so the figure measures the
/// runtime, not the poll interval.
fn wait_terminal(s: &Server, id: &str) -> Value {
    loop {
        let v = s.status(id);
        if TERMINAL.contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn bare_fork_exec(n: usize) -> Stats {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(st.success());
        v.push(t.elapsed());
    }
    stats(v)
}

fn submit_to_terminal(s: &Server, n: usize) -> Stats {
    let body = json!({"execution": {"kind": "command", "program": "/bin/true"}});
    // Warm up caches and the helper connection.
    for _ in 0..10 {
        let id = s.submit(&body);
        wait_terminal(s, &id);
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let id = s.submit(&body);
        let st = wait_terminal(s, &id);
        v.push(t.elapsed());
        assert_eq!(st["status"], "success", "{st}");
    }
    stats(v)
}

fn main() {
    let args = Args::parse();
    println!("execgo-runtime-bench");
    println!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );

    let base = bare_fork_exec(args.latency_tasks);
    let s = Server::start();
    let rt = submit_to_terminal(&s, args.latency_tasks);
    println!();
    println!(
        "submit->terminal latency of /bin/true ({} sequential tasks)",
        args.latency_tasks
    );
    println!(
        "  baseline fork/exec+wait  p50 {:8.3} ms  p90 {:8.3} ms  max {:8.3} ms",
        ms(base.p50),
        ms(base.p90),
        ms(base.max)
    );
    println!(
        "  execgo-runtime           p50 {:8.3} ms  p90 {:8.3} ms  max {:8.3} ms",
        ms(rt.p50),
        ms(rt.p90),
        ms(rt.max)
    );
    println!(
        "  ratio p50 {:.1}x (target <= 4x)",
        ms(rt.p50) / ms(base.p50)
    );
}
