//! `execgo-runtime-bench`: starts the real runtime and helper and prints
//! figures next to baselines measured in the same run, with their ratios.
//! It asserts nothing about speed: the figures go to `docs/benchmarks.md`.
//!
//! Scenarios (all by default): `latency`, `throughput`, `timeout`, `kill`,
//! `rss`, `output`, `sandbox` (root only: it skips with a reason elsewhere),
//! `list` (pages over 100k stored tasks), `followers` (CPU of idle streams). Each starts its own runtime under a unique directory of
//! `--data-root`, which is removed at the end, and runs in a cgroup of
//! its own that counts the CPU time of its whole tree (see `tree_cpu`).

mod baseline;
mod cgroup_cpu;
mod cgroup_mounts;
mod client;
mod cpu;
mod durable;
mod env;
mod followers;
mod fsprobe;
mod kill;
mod latency;
mod listing;
mod output;
mod procfs;
mod rss;
mod sandbox;
mod stats;
mod throughput;
mod timeout;
mod tree_cpu;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Latency,
    Throughput,
    Timeout,
    Kill,
    Rss,
    Output,
    Sandbox,
    List,
    Followers,
}

impl Scenario {
    /// Its runtime's data dir under the data root.
    fn dir_name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Throughput => "throughput",
            Scenario::Timeout => "timeout",
            Scenario::Kill => "kill",
            Scenario::Rss => "rss",
            Scenario::Output => "output",
            Scenario::Sandbox => "sandbox",
            Scenario::List => "list",
            Scenario::Followers => "followers",
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Benchmark execgo-runtime against same-run baselines")]
struct Args {
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,

    /// Where the runtimes' data dirs go: a unique subdirectory is created
    /// and removed at the end. File creation there must be fast: each data
    /// dir is probed first (see fsprobe.rs for why it can be slow).
    #[arg(long, default_value = "/var/tmp")]
    data_root: PathBuf,

    /// Do not mark the data root `chattr +T` (see `fsprobe.rs`: it spreads
    /// each scenario's data dir to a block group of its own).
    #[arg(long)]
    no_spread: bool,

    /// Leave the data root in place (task dirs, shim.log, runtime logs).
    #[arg(long)]
    keep_data: bool,

    /// Interval of the tight status polls of latency and kill, in µs.
    #[arg(long, default_value_t = 200)]
    poll_us: u64,

    /// How the latency and sandbox figures see a task's end: status polls
    /// every --poll-us, or its event stream read to the end. Unset, the
    /// latency figure polls (issue 4's definition) and the sandbox figure
    /// follows the stream (as bwrap, its baseline, is waited for).
    #[arg(long, value_enum)]
    wait: Option<env::WaitBy>,

    /// Sequential /bin/true tasks for the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_tasks: usize,

    /// Tasks per throughput round.
    #[arg(long, default_value_t = 1000)]
    throughput_tasks: usize,

    /// Concurrent submitting clients (and baseline threads).
    #[arg(long, default_value_t = 4)]
    throughput_clients: usize,

    /// `--max-running-tasks` of the throughput runtime.
    #[arg(long, default_value_t = 16)]
    throughput_max_running: usize,

    /// Throughput rounds (each with its own baseline).
    #[arg(long, default_value_t = 3)]
    throughput_rounds: usize,

    /// `sleep 10` tasks for the timeout figure.
    #[arg(long, default_value_t = 20)]
    timeout_tasks: usize,

    /// Their `limits.wall_time_ms`.
    #[arg(long, default_value_t = 200)]
    timeout_wall_ms: u64,

    /// `sleep 30` tasks killed for the kill figure.
    #[arg(long, default_value_t = 30)]
    kill_tasks: usize,

    /// Running tasks whose shims are measured.
    #[arg(long, default_value_t = 5)]
    rss_shims: usize,

    /// Bytes the output task writes to stdout.
    #[arg(long, default_value_t = 256 << 20)]
    output_bytes: u64,

    /// Runs of the output figure.
    #[arg(long, default_value_t = 5)]
    output_runs: usize,

    /// Sequential linux_sandbox /bin/true tasks (and runs of each bwrap
    /// baseline: the runtime's set-up, the command, and the first
    /// with the design's durable writes in line).
    #[arg(long, default_value_t = 200)]
    sandbox_tasks: usize,

    /// Tasks in the store the list figure pages through.
    #[arg(long, default_value_t = 100_000)]
    list_tasks: usize,

    /// Timed requests per list case.
    #[arg(long, default_value_t = 50)]
    list_rounds: usize,

    /// Idle streams held open for the followers figure.
    #[arg(long, default_value_t = 100)]
    followers: usize,

    /// Seconds of each followers window (with and without them).
    #[arg(long, default_value_t = 20)]
    followers_window_secs: u64,
}

fn main() {
    // When this process is the bare loop `tree_cpu` measures, it ends here.
    tree_cpu::bare_true_child();
    let args = Args::parse();
    let all = [
        Scenario::Latency,
        Scenario::Throughput,
        Scenario::Timeout,
        Scenario::Kill,
        Scenario::Rss,
        Scenario::Output,
        Scenario::Sandbox,
        Scenario::List,
        Scenario::Followers,
    ];
    let chosen: Vec<Scenario> = if args.scenarios.is_empty() {
        all.to_vec()
    } else {
        all.into_iter()
            .filter(|s| args.scenarios.contains(s))
            .collect()
    };
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let root = args
        .data_root
        .join(format!("execgo-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    env::header(&root);
    if !args.no_spread {
        let spread = fsprobe::spread_subdirs(&root);
        println!(
            "data root chattr +T (spread data dirs over block groups): {}",
            if spread { "yes" } else { "no (chattr failed)" }
        );
    }
    let env = env::Env::new(
        root.clone(),
        Duration::from_micros(args.poll_us),
        args.wait,
        !args.no_spread,
    );
    match args.wait {
        Some(w) => println!("task ends seen by: {w:?}"),
        None => println!("task ends seen by: Poll (latency), Events (sandbox)"),
    }
    println!("{}", env.cpu_method());
    let started = Instant::now();
    for s in chosen {
        let t = Instant::now();
        match s {
            Scenario::Latency => latency::run(&env, args.latency_tasks),
            Scenario::Throughput => throughput::run(
                &env,
                &throughput::Params {
                    tasks: args.throughput_tasks,
                    clients: args.throughput_clients,
                    max_running: args.throughput_max_running,
                    rounds: args.throughput_rounds,
                },
            ),
            Scenario::Timeout => timeout::run(&env, args.timeout_tasks, args.timeout_wall_ms),
            Scenario::Kill => kill::run(&env, args.kill_tasks),
            Scenario::Rss => rss::run(&env, args.rss_shims),
            Scenario::Output => output::run(&env, args.output_bytes, args.output_runs),
            Scenario::Sandbox => sandbox::run(&env, args.sandbox_tasks),
            Scenario::List => listing::run(&env, args.list_tasks, args.list_rounds),
            Scenario::Followers => followers::run(
                &env,
                args.followers,
                Duration::from_secs(args.followers_window_secs),
            ),
        }
        env.probe_after(s.dir_name());
        println!("  ({s:?} took {:.1} s)", t.elapsed().as_secs_f64());
    }
    env.print_summary();
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    if args.keep_data {
        println!("data root kept: {}", root.display());
    } else {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("removing {}: {e}", root.display());
        }
        // Written-back inode tables shorten the next run's penalty for
        // these deletions from 360 s to 60 s (see fsprobe.rs).
        fsprobe::sync();
    }
}
