//! Submit → terminal latency of `/bin/true`, one task at a time, against a
//! bare fork/exec + wait; then where the time goes, from the task's own
//! timestamps. [`sequential`] is the measurement itself, shared with the
//! `sandbox` scenario (other task bodies, other baselines).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use execgo_runtime_tests::{json, Value};

use crate::client::{epoch_ms, Client};
use crate::env::{Env, Row, Runtime, WaitBy};
use crate::stats::{ms, ratio, Stats};
use crate::{baseline, cpu, tree_cpu};

fn epoch_now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

pub struct Sample {
    id: String,
    submit_rtt: f64,
    total: f64,
    /// Wall clock (epoch ms) when the submit was sent and when the
    /// terminal status was first seen.
    sent_at: f64,
    seen_at: f64,
}

/// A baseline run once before each task: the time it took.
pub type Baseline<'a> = &'a mut dyn FnMut() -> Duration;

/// What [`sequential`] measured.
pub struct Sequential {
    pub samples: Vec<Sample>,
    /// One column per baseline, in the order given.
    pub baselines: Vec<Vec<Duration>>,
    /// ms of the runtime tree's CPU per task.
    pub tree: Result<f64, String>,
    /// Status polls the client sent per task.
    pub polls: f64,
    /// ms of the tree's CPU per status read of a finished task.
    pub per_poll: Result<f64, String>,
    /// CPU per task of the runtime, helper, client and machine (`cpu.rs`).
    pub cpu: String,
}

/// `n` tasks of `body`, one at a time, each submitted right after one run
/// of every baseline (interleaved, so all see the same moments of a noisy
/// machine), after 10 warm-up rounds of the same; every task must succeed.
pub fn sequential(
    env: &Env,
    s: &Runtime,
    c: &Client,
    body: &Value,
    n: usize,
    wait: WaitBy,
    baselines: &mut [Baseline<'_>],
) -> Sequential {
    // Warm up the helper connection, SQLite's page cache, the allocator.
    for _ in 0..10 {
        let id = c.submit(body);
        c.wait_terminal(&id, env.poll);
        for b in baselines.iter_mut() {
            b();
        }
    }
    let mut base = vec![Vec::with_capacity(n); baselines.len()];
    let mut samples = Vec::with_capacity(n);
    let cpu0 = cpu::snapshot(s.pid(), s.helper_pid());
    let tree0 = s.tree_cpu_ns();
    let polls0 = c.status_gets();
    for _ in 0..n {
        for (b, col) in baselines.iter_mut().zip(base.iter_mut()) {
            col.push(b());
        }
        // Floored like the runtime's ms timestamps, so differences between
        // the two are unbiased.
        let sent_at = epoch_now_ms().floor();
        let t = Instant::now();
        let id = c.submit(body);
        let submit_rtt = t.elapsed();
        let (st, seen) = match wait {
            WaitBy::Poll => c.wait_terminal(&id, env.poll),
            WaitBy::Events => c.wait_terminal_by_events(&id),
        };
        let seen_at = epoch_now_ms().floor();
        assert_eq!(st["status"], "success", "{st}");
        samples.push(Sample {
            id,
            submit_rtt: ms(submit_rtt),
            total: ms(seen - t),
            sent_at,
            seen_at,
        });
    }
    let tree1 = s.tree_cpu_ns();
    let polls = (c.status_gets() - polls0) as f64 / n.max(1) as f64;
    let cpu1 = cpu::snapshot(s.pid(), s.helper_pid());
    let per_poll = match samples.last() {
        Some(last) => poll_cost(s, c, &last.id, env.poll, POLLS),
        None => Err("no tasks".into()),
    };
    Sequential {
        samples,
        baselines: base,
        tree: tree_cpu::per_task(&tree0, &tree1, n),
        polls,
        per_poll,
        cpu: cpu::per_task(&cpu0, &cpu1, n),
    }
}

impl Sequential {
    /// Submit → terminal seen, in ms.
    pub fn stats(&self) -> Stats {
        Stats::of(self.samples.iter().map(|x| x.total).collect())
    }

    /// Baseline `i`, in ms.
    pub fn baseline(&self, i: usize) -> Stats {
        Stats::of_durations(&self.baselines[i])
    }

    /// The tasks' lines: submit → terminal, and the submit's answer.
    pub fn print_tasks(&self, label: &str) {
        println!("{}", self.stats().line(label));
        println!(
            "{}",
            Stats::of(self.samples.iter().map(|x| x.submit_rtt).collect())
                .line("  of which POST /tasks answered")
        );
    }

    /// The tree's CPU per task (`tree`, made of [`Sequential::tree`] and a
    /// baseline's CPU), printed with the other CPU lines; returns the same
    /// less the client's status polls.
    pub fn print_cpu(&self, tree: &tree_cpu::Figure) -> tree_cpu::Figure {
        let less_polls = tree.less(self.per_poll.clone().map(|p| p * self.polls));
        println!("{}", self.cpu);
        println!("{}", tree.line());
        let polls = self.polls;
        if let (Ok(p), Ok(rest)) = (&self.per_poll, &less_polls.tree) {
            println!(
                "    of which answering the client's {polls:.1} status polls per task: {:.3} ms \
                 ({p:.3} ms each, from {POLLS} polls of a finished task); without them {rest:.3} ms, ratio {}",
                p * polls,
                less_polls.ratio().map(|r| format!("{r:.1}x")).unwrap_or_else(|| "-".into())
            );
        } else if let (Err(e), Ok(_)) = (&self.per_poll, &tree.tree) {
            println!("    cpu per status poll: unavailable ({e})");
        }
        less_polls
    }
}

pub fn run(env: &Env, n: usize) {
    println!();
    println!("submit->terminal latency of /bin/true ({n} sequential tasks)");
    let s = env.server("latency", &[]);
    let c = Client::new(&s.base);
    let body = json!({"execution": {"kind": "command", "program": "/bin/true"}});
    let wait = env.wait_or(WaitBy::Poll);
    println!("  task ends seen by: {wait:?}");
    let seq = sequential(env, &s, &c, &body, n, wait, &mut [&mut baseline::true_once]);
    // The same number of bare fork/exec + waits, one at a time, in a
    // cgroup of their own.
    let tree = tree_cpu::Figure::new(env, seq.tree.clone(), tree_cpu::bare_true(env, n, 1), 1);
    let base = seq.baseline(0);
    let rt = seq.stats();
    println!("{}", base.line("baseline fork/exec+wait"));
    seq.print_tasks("execgo-runtime submit->terminal");
    let r = ratio(rt.p50, base.p50);
    println!("  ratio p50 {r:.1}x (target <= 4x)");
    let less_polls = seq.print_cpu(&tree);
    env.row(Row {
        figure: "submit->terminal /bin/true p50 (p90, max)".into(),
        measured: format!("{:.2} ms ({:.2}, {:.2})", rt.p50, rt.p90, rt.max),
        baseline: format!("{:.3} ms fork/exec+wait", base.p50),
        ratio: format!("{r:.1}x"),
        target: "<= 4x".into(),
        met: Some(r <= 4.0),
    });
    env.row(tree.row("cpu per task, whole tree (latency)".into()));
    env.row(less_polls.row("cpu per task, whole tree, less status polls (latency)".into()));
    stages(&c, &seq.samples);
}

/// Status reads timed for [`poll_cost`].
const POLLS: usize = 1000;

/// CPU of the runtime's tree per status read of a finished task, sent as
/// the latency loop sends them: the loop's polls (every `every` while a
/// task runs, so more of them the longer it takes) cost it about that.
fn poll_cost(
    s: &Runtime,
    c: &Client,
    id: &str,
    every: Duration,
    polls: usize,
) -> Result<f64, String> {
    let a = s.tree_cpu_ns();
    for _ in 0..polls {
        c.status(id);
        std::thread::sleep(every);
    }
    tree_cpu::per_task(&a, &s.tree_cpu_ns(), polls)
}

/// Means of the stages between the task's timestamps (ms resolution, so
/// only the means say something; p50s of 0/1 ms steps would not).
pub fn stages(c: &Client, samples: &[Sample]) {
    let mut names: Vec<&str> = vec![];
    let mut cols: Vec<Vec<f64>> = vec![];
    let mut push = |name: &'static str, v: Option<f64>| {
        let i = match names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                names.push(name);
                cols.push(vec![]);
                names.len() - 1
            }
        };
        if let Some(v) = v {
            cols[i].push(v);
        }
    };
    for x in samples {
        let st = c.status(&x.id);
        let events = c.events(&x.id);
        let ev = |kind: &str| -> Option<f64> {
            events
                .iter()
                .find(|e| e["event_type"] == kind)
                .and_then(|e| epoch_ms(&e["timestamp"]))
                .map(|t| t as f64)
        };
        let ts = |f: &str| -> Option<f64> { epoch_ms(&st[f]).map(|t| t as f64) };
        let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let sent = Some(x.sent_at);
        let created = ts("created_at");
        let started_ev = ev("started");
        let started = ts("started_at");
        let finished = ts("finished_at");
        let finished_ev = ev("finished");
        push("client sent -> created_at", d(sent, created));
        push("created_at -> started_at (shim exec)", d(created, started));
        push(
            "started_at -> started event (runtime)",
            d(started, started_ev),
        );
        push("started_at -> finished_at (shim)", d(started, finished));
        push("finished_at -> finished event", d(finished, finished_ev));
        push(
            "finished event -> client saw it",
            d(finished_ev, Some(x.seen_at)),
        );
        push("usage.duration_ms", st["usage"]["duration_ms"].as_f64());
    }
    println!("  stages from the task's own timestamps (ms resolution; read the means):");
    for (name, v) in names.iter().zip(cols) {
        println!("{}", Stats::of(v).line_mean(name));
    }
}
