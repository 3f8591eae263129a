//! What every scenario shares: the data root its servers live under, the
//! poll interval, and the summary table the figures are collected in.

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use execgo_runtime_tests::Server;

use crate::cgroup_cpu::CpuCgroup;
use crate::cgroup_mounts::{self, Hierarchy};
use crate::{fsprobe, procfs};

/// One line of the summary table.
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// Whether the target is met; `None` when it has none.
    pub met: Option<bool>,
}

pub struct Env {
    /// The unique directory this run owns (removed at the end).
    pub root: PathBuf,
    /// Interval of the tight status polls (latency, kill).
    pub poll: Duration,
    /// How the latency and sandbox figures learn that a task is over;
    /// `None`: each scenario's own default (see [`Env::wait_or`]).
    wait: Option<WaitBy>,
    /// Whether the root spreads its subdirectories (`chattr +T`).
    spread: bool,
    rows: RefCell<Vec<Row>>,
    /// Time spent waiting for the file system so far (see [`fsprobe::WAIT_MAX`]).
    waited: std::cell::Cell<Duration>,
    /// The data dir each scenario's server got.
    dirs: RefCell<Vec<(String, PathBuf)>>,
    /// Where this run's cgroups go (see `tree_cpu.rs`), or why nowhere.
    cpu: Result<Hierarchy, String>,
    /// Cgroups created so far (their names are unique in the run).
    cgroups: Cell<u32>,
}

/// A started runtime, and the cgroup it and all it starts run in (or why
/// there is none).
pub struct Runtime {
    // Declared first, so dropped first: the runtime is stopped before its
    // cgroup is emptied and removed.
    server: Server,
    tree: Result<CpuCgroup, String>,
}

impl Deref for Runtime {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Runtime {
    /// CPU time of the runtime's whole tree so far, in ns.
    pub fn tree_cpu_ns(&self) -> Result<u64, String> {
        self.tree.as_ref().map_err(Clone::clone)?.usage_ns()
    }
}

/// How a sequential task's end is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitBy {
    /// `GET /api/v1/tasks/:id` every `--poll-us`.
    Poll,
    /// `GET /api/v1/tasks/:id/events?follow=true` read to its end.
    Events,
}

impl Env {
    /// How a scenario sees a task's end: `--wait`, or its own default.
    pub fn wait_or(&self, default: WaitBy) -> WaitBy {
        self.wait.unwrap_or(default)
    }

    pub fn new(root: PathBuf, poll: Duration, wait: Option<WaitBy>, spread: bool) -> Env {
        let mut env = Env {
            root,
            poll,
            wait,
            spread,
            rows: RefCell::default(),
            waited: std::cell::Cell::default(),
            dirs: RefCell::default(),
            cpu: cgroup_mounts::detect(),
            cgroups: Cell::new(0),
        };
        // Whether this process may create one (root, a delegated subtree).
        if let Err(e) = env.cpu_cgroup("check") {
            env.cpu = Err(format!(
                "no cgroup of our own: {e}; it needs root or a cgroup delegated to this user"
            ));
        }
        env
    }

    pub fn cpu_hierarchy(&self) -> Result<&Hierarchy, String> {
        self.cpu.as_ref().map_err(Clone::clone)
    }

    /// A new cgroup of this run, named after `label`.
    pub fn cpu_cgroup(&self, label: &str) -> Result<CpuCgroup, String> {
        let n = self.cgroups.get() + 1;
        self.cgroups.set(n);
        let name = format!("execgo-bench-{}-{n}-{label}", std::process::id());
        CpuCgroup::create(self.cpu_hierarchy()?, &name)
    }

    /// How the tree's CPU time is counted, for the header.
    pub fn cpu_method(&self) -> String {
        match &self.cpu {
            Ok(h) => format!(
                "cpu per task of the whole tree: from {} of a cgroup per runtime under {}",
                h.version.counter(),
                h.own_dir.display()
            ),
            Err(e) => format!("cpu per task of the whole tree: unavailable ({e})"),
        }
    }

    /// A runtime (with its embedded helper) on `root/<name>`, or on
    /// `root/<name>-<n>` when file creates in the first places tried are
    /// slow (see [`fsprobe`]; the data root spreads its subdirectories over
    /// block groups, so each try lands somewhere else).
    pub fn server(&self, name: &str, args: &[String]) -> Runtime {
        let mut best: Option<(f64, PathBuf)> = None;
        for attempt in 0..fsprobe::PLACEMENT_TRIES {
            let dir = match attempt {
                0 => self.root.join(name),
                n => self.root.join(format!("{name}-{n}")),
            };
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            let probe = fsprobe::probe(&dir, 30);
            println!("{}", fsprobe::describe(&probe));
            let better = match &best {
                None => true,
                Some((p50, _)) => probe.p50 < *p50,
            };
            if better {
                best = Some((probe.p50, dir));
            }
            if probe.p50 <= fsprobe::SLOW_MS || !self.spread {
                break;
            }
        }
        while let Some((p50, dir)) = best.take() {
            if p50 <= fsprobe::SLOW_MS || self.waited.get() >= fsprobe::WAIT_MAX {
                best = Some((p50, dir));
                break;
            }
            self.waited.set(self.waited.get() + fsprobe::WAIT_STEP);
            println!(
                "  every placement is slow; waiting {} s for recent deletions to age out",
                fsprobe::WAIT_STEP.as_secs()
            );
            std::thread::sleep(fsprobe::WAIT_STEP);
            let probe = fsprobe::probe(&dir, 30);
            println!("{}", fsprobe::describe(&probe));
            best = Some((probe.p50, dir));
        }
        let dir = best.map(|(_, d)| d).unwrap_or_else(|| self.root.join(name));
        self.dirs.borrow_mut().push((name.to_string(), dir.clone()));
        let tree = self.cpu_cgroup(name);
        let mut builder = Server::builder().data_dir(&dir).args(args.iter().cloned());
        if let Ok(cg) = &tree {
            builder = builder.configure(cg.join_on_exec());
        }
        let s = builder.start();
        println!(
            "  server: runtime pid {}, helper pid {}, data dir {}{}",
            s.pid(),
            s.helper_pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            dir.display(),
            if args.is_empty() {
                String::new()
            } else {
                format!(", flags {}", args.join(" "))
            }
        );
        let tree = tree.and_then(|cg| match cg.contains(s.pid()) {
            true => Ok(cg),
            false => Err(format!("the runtime did not join {}", cg.dir().display())),
        });
        match &tree {
            Ok(cg) => println!("  cgroup of its tree: {}", cg.dir().display()),
            // Said once in the header when there are none at all.
            Err(e) if self.cpu.is_ok() => println!("  cgroup of its tree: none ({e})"),
            Err(_) => {}
        }
        Runtime { server: s, tree }
    }

    /// The file-system probe again, after a scenario: creates slowed down
    /// while it ran show here.
    pub fn probe_after(&self, name: &str) {
        let dir = self
            .dirs
            .borrow()
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone());
        if let Some(dir) = dir {
            println!(
                "{} (after)",
                fsprobe::describe(&fsprobe::probe(&dir.join("after"), 30))
            );
        }
    }

    pub fn row(&self, row: Row) {
        self.rows.borrow_mut().push(row);
    }

    pub fn print_summary(&self) {
        let rows = self.rows.borrow();
        if rows.is_empty() {
            return;
        }
        let head = [
            "figure",
            "execgo-runtime",
            "baseline",
            "ratio",
            "target",
            "met",
        ];
        let cells: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.figure.clone(),
                    r.measured.clone(),
                    r.baseline.clone(),
                    r.ratio.clone(),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        let mut width = head.map(str::len);
        for c in &cells {
            for (w, s) in width.iter_mut().zip(c) {
                *w = (*w).max(s.chars().count());
            }
        }
        let line = |c: &[String]| {
            let parts: Vec<String> = c
                .iter()
                .zip(width)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        println!();
        println!("summary (figures are p50 unless stated)");
        println!("{}", line(&head.map(String::from)));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", rule.join("-|-"));
        for c in &cells {
            println!("{}", line(c));
        }
    }
}

pub fn header(root: &std::path::Path) {
    println!("execgo-runtime-bench");
    for l in procfs::machine() {
        println!("{l}");
    }
    println!("data root: {}", root.display());
}
