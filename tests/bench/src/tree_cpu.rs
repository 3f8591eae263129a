//! CPU time per task of the whole tree a runtime starts (the runtime, its
//! helper, the shims, the tasks), counted by the cgroup the runtime starts
//! in, next to the CPU time of a bare fork/exec + wait of `/bin/true`
//! counted the same way: by a process of this bench that runs that loop
//! alone in a cgroup of its own. A cgroup's counter adds up the CPU its
//! processes used, on whichever core and whenever they got it, so unlike
//! the wall-clock figures these do not grow when other work shares the
//! machine (what remains is sharing's effect on caches and clocks). The
//! same loop can run another command instead (`bwrap /bin/true` for the
//! sandbox scenario): [`bare_command`].

use std::path::Path;
use std::process::{Command, Stdio};

use crate::baseline;
use crate::cgroup_cpu;
use crate::cgroup_mounts::Version;
use crate::env::{Env, Row};
use crate::stats::Stats;

/// In the environment of the bench process that runs the bare loop:
/// `<tasks> <threads> <v1|v2> <its cgroup's dir>`.
const CHILD_ENV: &str = "EXECGO_BENCH_BARE_TRUE_CPU";

/// In the same process's environment when it runs a command other than
/// `/bin/true`: its argv, joined by [`ARGV_SEP`].
const ARGV_ENV: &str = "EXECGO_BENCH_BARE_ARGV";
const ARGV_SEP: char = '\x1f';

/// ms of CPU per task between two readings of a tree's counter.
pub fn per_task(
    before: &Result<u64, String>,
    after: &Result<u64, String>,
    tasks: usize,
) -> Result<f64, String> {
    let (a, b) = (before.clone()?, after.clone()?);
    Ok(b.saturating_sub(a) as f64 / 1e6 / tasks.max(1) as f64)
}

/// ms of CPU per fork/exec + wait of `/bin/true`: `tasks` of them over
/// `threads` threads, as [`baseline::true_parallel`] runs them, by a
/// process alone in a cgroup of its own (its fork, its waits, the
/// children's exec, run and exit; not its own start-up).
pub fn bare_true(env: &Env, tasks: usize, threads: usize) -> Result<f64, String> {
    bare_loop(env, tasks, threads, &[])
}

/// ms of CPU per fork/exec + wait of `argv`, `tasks` times one after the
/// other, counted like [`bare_true`] (the command's whole tree: whatever it
/// forks stays in the cgroup).
pub fn bare_command(env: &Env, tasks: usize, argv: &[String]) -> Result<f64, String> {
    if argv.is_empty() || argv.iter().any(|a| a.contains(ARGV_SEP)) {
        return Err(format!("cannot pass {argv:?} to the bare loop"));
    }
    bare_loop(env, tasks, 1, argv)
}

/// [`bare_true`] with `argv` instead of `/bin/true` when it is not empty.
fn bare_loop(env: &Env, tasks: usize, threads: usize, argv: &[String]) -> Result<f64, String> {
    let version = env.cpu_hierarchy()?.version;
    let cg = env.cpu_cgroup("bare-true")?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let v = match version {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let mut cmd = Command::new(exe);
    cmd.env(
        CHILD_ENV,
        format!("{tasks} {threads} {v} {}", cg.dir().display()),
    )
    .stdin(Stdio::null());
    if !argv.is_empty() {
        cmd.env(ARGV_ENV, argv.join(&ARGV_SEP.to_string()));
    }
    cg.join_on_exec()(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("starting the bare loop: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the bare loop {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: u64 = text
        .trim()
        .parse()
        .map_err(|e| format!("the bare loop printed {text:?}: {e}"))?;
    Ok(ns as f64 / 1e6 / tasks.max(1) as f64)
}

/// In the process [`bare_true`] starts: runs the loop, prints the ns its
/// cgroup's counter grew by meanwhile and exits. Elsewhere returns.
pub fn bare_true_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    match bare_true_loop(&spec) {
        Ok(ns) => {
            println!("{ns}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

fn bare_true_loop(spec: &str) -> Result<u64, String> {
    let mut f = spec.splitn(4, ' ');
    let mut number = || -> Result<usize, String> {
        f.next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| format!("bad {CHILD_ENV}: {spec:?}"))
    };
    let (tasks, threads) = (number()?, number()?);
    let version = match f.next() {
        Some("v1") => Version::V1,
        Some("v2") => Version::V2,
        _ => return Err(format!("bad {CHILD_ENV}: {spec:?}")),
    };
    let dir = Path::new(
        f.next()
            .ok_or_else(|| format!("bad {CHILD_ENV}: {spec:?}"))?,
    );
    if !cgroup_cpu::pids(dir).contains(&(std::process::id() as i32)) {
        return Err(format!(
            "not in cgroup {} (joining it failed)",
            dir.display()
        ));
    }
    let argv: Vec<String> = match std::env::var(ARGV_ENV) {
        Ok(v) => v.split(ARGV_SEP).map(String::from).collect(),
        Err(_) => vec![],
    };
    // Alone in the cgroup: what its counter adds meanwhile is the loop's.
    let a = cgroup_cpu::usage_ns(version, dir)?;
    if argv.is_empty() {
        baseline::true_parallel(tasks, threads);
    } else {
        baseline::parallel(tasks, threads, &|| {
            baseline::command_once(&argv);
        });
    }
    let b = cgroup_cpu::usage_ns(version, dir)?;
    Ok(b.saturating_sub(a))
}

/// The tree's CPU per task against the bare loop's, in ms, or why not.
pub struct Figure {
    pub tree: Result<f64, String>,
    pub bare: Result<f64, String>,
    /// Threads of the bare loop.
    pub threads: usize,
    counter: &'static str,
    /// What the baseline ran, in full and for the summary table; `None`:
    /// a bare fork/exec + wait of `/bin/true`.
    against: Option<(String, String)>,
}

impl Figure {
    pub fn new(
        env: &Env,
        tree: Result<f64, String>,
        bare: Result<f64, String>,
        threads: usize,
    ) -> Figure {
        let counter = env
            .cpu_hierarchy()
            .map(|h| h.version.counter())
            .unwrap_or("cgroup");
        Figure {
            tree,
            bare,
            threads,
            counter,
            against: None,
        }
    }

    /// The same with `bare` measured from `what` (`short` in the summary
    /// table) rather than from `/bin/true`.
    pub fn against(self, what: &str, short: &str) -> Figure {
        Figure {
            against: Some((what.into(), short.into())),
            ..self
        }
    }

    /// p50s of several figures (rounds); the first reason when any is
    /// unavailable.
    pub fn median(figs: &[Figure]) -> Option<Figure> {
        let first = figs.first()?;
        let p50 = |f: fn(&Figure) -> &Result<f64, String>| -> Result<f64, String> {
            let v: Result<Vec<f64>, String> = figs.iter().map(|x| f(x).clone()).collect();
            Ok(Stats::of(v?).p50)
        };
        Some(Figure {
            tree: p50(|x| &x.tree),
            bare: p50(|x| &x.bare),
            threads: first.threads,
            counter: first.counter,
            against: first.against.clone(),
        })
    }

    /// The same with `ms` less CPU per task for the tree.
    pub fn less(&self, ms: Result<f64, String>) -> Figure {
        Figure {
            tree: self.tree.clone().and_then(|t| Ok(t - ms?)),
            bare: self.bare.clone(),
            threads: self.threads,
            counter: self.counter,
            against: self.against.clone(),
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        match (&self.tree, &self.bare) {
            (Ok(t), Ok(b)) if *b > 0.0 => Some(t / b),
            _ => None,
        }
    }

    fn bare_label(&self) -> String {
        if let Some((what, _)) = &self.against {
            return what.clone();
        }
        match self.threads {
            1 => "bare fork/exec+wait of /bin/true".into(),
            n => format!("bare fork/exec+wait of /bin/true ({n} threads)"),
        }
    }

    /// `cpu per task, whole tree (…; counter): … ms; bare …: … ms; ratio …x`
    pub fn line(&self) -> String {
        let tree = match &self.tree {
            Ok(t) => format!(
                "cpu per task, whole tree (runtime, helper, shims, tasks; {}): {t:.3} ms",
                self.counter
            ),
            Err(e) => format!("cpu per task, whole tree: unavailable ({e})"),
        };
        let bare = match &self.bare {
            Ok(b) => format!("{}: {b:.3} ms", self.bare_label()),
            Err(e) if self.tree.is_ok() => format!("{}: unavailable ({e})", self.bare_label()),
            Err(_) => return format!("  {tree}"),
        };
        match self.ratio() {
            Some(r) => format!("  {tree}; {bare}; ratio {r:.1}x"),
            None => format!("  {tree}; {bare}"),
        }
    }

    /// Its row of the summary table.
    pub fn row(&self, figure: String) -> Row {
        let ms = |x: &Result<f64, String>| match x {
            Ok(v) => format!("{v:.3} ms"),
            Err(_) => "unavailable".into(),
        };
        Row {
            figure,
            measured: ms(&self.tree),
            baseline: match &self.bare {
                Ok(b) => format!(
                    "{b:.3} ms {}",
                    self.against
                        .as_ref()
                        .map_or("fork/exec+wait", |(_, short)| short.as_str())
                ),
                Err(_) => "-".into(),
            },
            ratio: self
                .ratio()
                .map(|r| format!("{r:.1}x"))
                .unwrap_or_else(|| "-".into()),
            target: "-".into(),
            met: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(tree: Result<f64, String>, bare: Result<f64, String>) -> Figure {
        Figure {
            tree,
            bare,
            threads: 1,
            counter: "cgroup v1 cpuacct.usage",
            against: None,
        }
    }

    #[test]
    fn per_task_is_ms_of_the_counters_growth() {
        assert_eq!(per_task(&Ok(1_000_000), &Ok(5_000_000), 2), Ok(2.0));
        assert!(per_task(&Err("no cgroup".into()), &Ok(5), 2).is_err());
    }

    #[test]
    fn lines_say_why_a_figure_is_missing() {
        let ok = fig(Ok(2.0), Ok(0.5)).line();
        assert!(ok.ends_with("/bin/true: 0.500 ms; ratio 4.0x"), "{ok}");
        let none = fig(Err("EACCES".into()), Err("EACCES".into())).line();
        assert_eq!(none, "  cpu per task, whole tree: unavailable (EACCES)");
        let half = fig(Ok(2.0), Err("loop failed".into())).line();
        assert!(
            half.ends_with("/bin/true: unavailable (loop failed)"),
            "{half}"
        );
    }

    #[test]
    fn median_of_rounds() {
        let m = Figure::median(&[
            fig(Ok(3.0), Ok(0.5)),
            fig(Ok(1.0), Ok(0.4)),
            fig(Ok(2.0), Ok(0.6)),
        ])
        .unwrap();
        assert_eq!((m.tree, m.bare), (Ok(2.0), Ok(0.5)));
        let m = Figure::median(&[fig(Ok(3.0), Ok(0.5)), fig(Err("x".into()), Ok(0.4))]).unwrap();
        assert!(m.tree.is_err());
    }
}
