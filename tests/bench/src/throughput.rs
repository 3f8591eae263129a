//! Throughput: many `/bin/true` tasks from concurrent clients, from the
//! first submit to the last task terminal, against the same number of
//! fork/exec + wait done directly by as many threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use execgo_runtime_tests::json;

use crate::client::{tasks_total, Client};
use crate::env::{Env, Row};
use crate::procfs;
use crate::stats::{ms, ratio, Stats};
use crate::{baseline, cpu, tree_cpu};

const TERMINAL: [&str; 3] = ["success", "failed", "cancelled"];

pub struct Params {
    pub tasks: usize,
    pub clients: usize,
    pub max_running: usize,
    pub rounds: usize,
}

struct Round {
    /// First submit → last terminal.
    total: Duration,
    /// First submit → last submit answered.
    submits: Duration,
    retries_429: u64,
    not_success: u64,
}

pub fn run(env: &Env, p: &Params) {
    println!();
    println!(
        "throughput: {} /bin/true tasks from {} concurrent clients, --max-running-tasks {}, {} rounds",
        p.tasks, p.clients, p.max_running, p.rounds
    );
    let args = vec![
        "--max-running-tasks".to_string(),
        p.max_running.to_string(),
        "--max-queued-tasks".to_string(),
        (p.tasks + 100).to_string(),
    ];
    let s = env.server("throughput", &args);
    let c = Client::new(&s.base);
    let body =
        serde_json::to_vec(&json!({"execution": {"kind": "command", "program": "/bin/true"}}))
            .expect("encode");
    for _ in 0..20 {
        let id = c.try_submit(&body).expect("warm-up submit");
        c.wait_terminal(&id, Duration::from_millis(1));
    }
    let mut rounds = vec![];
    let mut bases = vec![];
    let mut trees = vec![];
    for i in 0..p.rounds {
        let b = baseline::true_parallel(p.tasks, p.clients);
        let bare = tree_cpu::bare_true(env, p.tasks, p.clients);
        let cpu0 = cpu::snapshot(s.pid(), s.helper_pid());
        let tree0 = s.tree_cpu_ns();
        let r = round(&s.base, &c, &body, p);
        let tree1 = s.tree_cpu_ns();
        let cpu1 = cpu::snapshot(s.pid(), s.helper_pid());
        let tree = tree_cpu::Figure::new(
            env,
            tree_cpu::per_task(&tree0, &tree1, p.tasks),
            bare,
            p.clients,
        );
        println!(
            "  round {}: runtime {:7.1} tasks/s ({:8.1} ms; submits answered after {:8.1} ms, {} retries on 429, {} not success)  baseline {:7.1} tasks/s ({:6.1} ms)",
            i + 1,
            rate(p.tasks, r.total),
            ms(r.total),
            ms(r.submits),
            r.retries_429,
            r.not_success,
            rate(p.tasks, b),
            ms(b)
        );
        println!("  {}", cpu::per_task(&cpu0, &cpu1, p.tasks));
        println!("  {}", tree.line());
        trees.push(tree);
        rounds.push(r);
        bases.push(b);
    }
    let rt = Stats::of(rounds.iter().map(|r| rate(p.tasks, r.total)).collect());
    let submit_rate = Stats::of(rounds.iter().map(|r| rate(p.tasks, r.submits)).collect());
    let base = Stats::of(bases.iter().map(|b| rate(p.tasks, *b)).collect());
    println!(
        "  runtime     p50 {:7.1} tasks/s  (min over rounds {:7.1}); submit acceptance p50 {:7.1} /s",
        rt.p50,
        rounds
            .iter()
            .map(|r| rate(p.tasks, r.total))
            .fold(f64::INFINITY, f64::min),
        submit_rate.p50
    );
    println!(
        "  baseline    p50 {:7.1} tasks/s ({} threads fork/exec+wait)",
        base.p50, p.clients
    );
    let r = ratio(rt.p50, base.p50);
    println!("  ratio runtime/baseline {r:.2} (target >= 1000 tasks/s)");
    let tree = tree_cpu::Figure::median(&trees);
    if let Some(tree) = &tree {
        println!("  p50 over rounds: {}", tree.line().trim_start());
    }
    if let Some(rss) = procfs::rss(s.pid()) {
        println!("{}", rss.line("runtime RSS after the rounds"));
    }
    env.row(Row {
        figure: format!(
            "throughput, {} tasks, {} clients, {} running",
            p.tasks, p.clients, p.max_running
        ),
        measured: format!("{:.0} tasks/s", rt.p50),
        baseline: format!("{:.0} tasks/s direct", base.p50),
        ratio: format!("{r:.2}"),
        target: ">= 1000 tasks/s".into(),
        met: Some(rt.p50 >= 1000.0),
    });
    if let Some(tree) = tree {
        env.row(tree.row(format!(
            "cpu per task, whole tree (throughput, {} clients)",
            p.clients
        )));
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn round(base_url: &str, c: &Client, body: &[u8], p: &Params) -> Round {
    let done_before = tasks_total(&c.metrics(), &TERMINAL);
    let success_before = tasks_total(&c.metrics(), &["success"]);
    let retries = AtomicU64::new(0);
    let t0 = Instant::now();
    let (submits, total) = std::thread::scope(|scope| {
        let workers: Vec<_> = baseline::shares(p.tasks, p.clients)
            .into_iter()
            .map(|share| {
                let retries = &retries;
                scope.spawn(move || {
                    let c = Client::new(base_url);
                    for _ in 0..share {
                        loop {
                            match c.try_submit(body) {
                                Ok(_) => break,
                                Err(e) if e.status == 429 => {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                                Err(e) => panic!("submit: {} {}", e.status, e.text),
                            }
                        }
                    }
                    t0.elapsed()
                })
            })
            .collect();
        // Completion from the runtime's own counters, polled every 5 ms
        // (one cheap request; the error is < 5 ms on a figure > 100 ms).
        let want = done_before + p.tasks as u64;
        loop {
            if tasks_total(&c.metrics(), &TERMINAL) >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let total = t0.elapsed();
        let submits = workers
            .into_iter()
            .map(|w| w.join().expect("client thread"))
            .max()
            .unwrap_or_default();
        (submits, total)
    });
    let success = tasks_total(&c.metrics(), &["success"]) - success_before;
    Round {
        total,
        submits,
        retries_429: retries.into_inner(),
        not_success: (p.tasks as u64).saturating_sub(success),
    }
}
