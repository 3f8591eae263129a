//! Each task's own cgroups: where they go ([`Placement`], decided once at
//! start from the [`Layout`]), and what a shim does with them
//! ([`TaskCgroups`]): create `<root>/<task_id>` in every hierarchy used, let
//! the task child join them before it execs, signal and kill every process
//! in them (a descendant that left the task's process group or session
//! included), read the memory peak, remove them. A stale task cgroup (its
//! shim gone) is killed and removed by [`Placement::sweep`].
//!
//! Hierarchies used: the ones serving memory, pids and cpu, and a way to kill
//! all at once: v2's `cgroup.kill`, else v1's freezer (freeze, signal every
//! pid, thaw), else repeated rounds of reading `cgroup.procs` and
//! signalling, until it is empty.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{CgroupVersion, CPU_PERIOD_US};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{mkdir_below, CgroupError, CgroupFs, Controller, Layout, TaskRoot};

/// The directory under the cgroup root that holds one data dir's task
/// cgroups, named after the data dir's device and inode.
pub fn scope_name(dev: u64, ino: u64) -> String {
    format!("data-{dev:x}-{ino}")
}

/// How every process of a task is killed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillVia {
    /// v2 `cgroup.kill`, in the unified hierarchy's task cgroup.
    CgroupKill,
    /// v1 freezer: freeze, SIGKILL every pid, thaw.
    Freezer,
    /// Rounds of reading `cgroup.procs` and SIGKILLing each pid.
    Signals,
}

/// One hierarchy tasks are placed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRoot {
    pub version: CgroupVersion,
    /// The parent of the task cgroups.
    pub root: PathBuf,
    /// The controllers tasks use there (`memory`, `pids`, `cpu`,
    /// `freezer`).
    pub controllers: Vec<&'static str>,
}

/// Where task cgroups go on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub roots: Vec<PlacedRoot>,
    pub kill: KillVia,
}

impl Placement {
    /// The hierarchies to use, each prepared (created, controllers
    /// enabled) down to `<root>/<scope>`, the parent of this data dir's
    /// task cgroups; one that cannot be is left out with a warning. `None`
    /// when no hierarchy is usable.
    pub fn prepare(
        layout: &Layout,
        task_root: &TaskRoot,
        scope: &str,
        fs: &dyn CgroupFs,
    ) -> (Option<Placement>, Vec<String>) {
        let mut roots: Vec<PlacedRoot> = Vec::new();
        let mut warnings = Vec::new();
        for c in Controller::ALL {
            let Some(backend) = layout.scoped_backend(c, task_root, Some(scope), fs) else {
                if layout.serving(c).is_some() {
                    warnings.push(format!(
                        "task cgroups: {} controller: its hierarchy is not delegated to the helper ({task_root})",
                        c.name()
                    ));
                }
                continue;
            };
            match backend.prepare(c) {
                Ok(()) => add(
                    &mut roots,
                    backend.version(),
                    backend.root().to_path_buf(),
                    Some(c.name()),
                ),
                Err(e) => warnings.push(format!(
                    "task cgroups: {} controller: {}",
                    c.name(),
                    crate::logging::chain(&e)
                )),
            }
        }
        let unified_used = roots.iter().any(|r| r.version == CgroupVersion::V2);
        let mut kill = if unified_used {
            KillVia::CgroupKill
        } else {
            KillVia::Signals
        };
        if !unified_used {
            // The unified hierarchy kills without any controller (pure v2
            // hosts always serve memory and pids, so this is a hybrid
            // host's); else the v1 freezer.
            let freezer = layout
                .v1
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == "freezer"));
            let killer = match (&layout.unified, freezer) {
                (_, Some(h)) => Some((CgroupVersion::V1, &h.mount_point, KillVia::Freezer)),
                (Some(h), None) => Some((CgroupVersion::V2, &h.mount_point, KillVia::CgroupKill)),
                (None, None) => None,
            };
            if let Some((version, mount, via)) = killer {
                let controller = (via == KillVia::Freezer).then_some("freezer");
                let made = match task_root.place(mount, Some(scope)) {
                    Some((top, root)) => mkdir_below(fs, &top, &root).map(|()| root),
                    None => Err(CgroupError::NotDelegated {
                        mount: mount.clone(),
                    }),
                };
                match made {
                    Ok(root) => {
                        add(&mut roots, version, root, controller);
                        kill = via;
                    }
                    Err(e) => warnings.push(format!(
                        "task cgroups: {}: {}",
                        controller.unwrap_or("cgroup.kill"),
                        crate::logging::chain(&e)
                    )),
                }
            }
        }
        if roots.is_empty() {
            return (None, warnings);
        }
        (Some(Placement { roots, kill }), warnings)
    }

    /// Creates the task's cgroups (reused if they exist): for
    /// [`Need::Limits`] in the one that kills and in those of the
    /// controllers it names; for [`Need::Containment`] only in the one
    /// that kills (each hierarchy costs a mkdir, a join and an rmdir per
    /// task).
    pub fn create(
        &self,
        task_id: &str,
        need: Need,
        fs: &dyn CgroupFs,
    ) -> Result<TaskCgroups, CgroupError> {
        let mut cg = TaskCgroups {
            entries: Vec::new(),
            kill: self.kill,
        };
        let killer = self.killer();
        for (i, r) in self.roots.iter().enumerate() {
            let wanted = match need {
                Need::Containment => i == killer,
                Need::Limits { memory, pids, cpu } => {
                    i == killer
                        || (memory && r.controllers.contains(&"memory"))
                        || (pids && r.controllers.contains(&"pids"))
                        || (cpu && r.controllers.contains(&"cpu"))
                }
            };
            if !wanted {
                continue;
            }
            let dir = r.root.join(task_id);
            if let Err(e) = make_task_dir(r, &dir, fs) {
                // Leave nothing half made.
                cg.remove(fs);
                return Err(CgroupError::Mkdir {
                    path: dir,
                    source: e.into(),
                });
            }
            cg.entries.push(Entry::new(r, dir));
        }
        Ok(cg)
    }

    /// The index of the root that kills: v2's, v1's freezer, else the
    /// first.
    fn killer(&self) -> usize {
        self.roots
            .iter()
            .position(|r| match self.kill {
                KillVia::CgroupKill => r.version == CgroupVersion::V2,
                KillVia::Freezer => r.controllers.contains(&"freezer"),
                KillVia::Signals => true,
            })
            .unwrap_or(0)
    }

    /// Removes each root that holds no task cgroup (rmdir refuses the
    /// others, which is the test).
    pub fn remove_empty_roots(&self, fs: &dyn CgroupFs) {
        for r in &self.roots {
            let _ = fs.rmdir(&r.root);
        }
    }

    /// The task cgroups already present, by task id.
    fn existing(&self, task_id: &str) -> TaskCgroups {
        let entries = self
            .roots
            .iter()
            .map(|r| Entry::new(r, r.root.join(task_id)))
            .filter(|e| e.dir.is_dir())
            .collect();
        TaskCgroups {
            entries,
            kill: self.kill,
        }
    }

    /// Kills everything in the cgroups of one task whose shim is gone and
    /// removes them; true when they are gone or were never there.
    pub fn reap(&self, task_id: &str, fs: &dyn CgroupFs) -> bool {
        let cg = self.existing(task_id);
        let emptied = cg.kill_all(fs, || {});
        cg.remove(fs);
        emptied
    }

    /// Kills and removes the cgroups of every task whose shim is not
    /// running (`running(task_id)` says), as left by a shim that died.
    /// Returns the task ids cleaned up.
    pub fn sweep(&self, running: impl Fn(&str) -> bool, fs: &dyn CgroupFs) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in &self.roots {
            let Ok(entries) = std::fs::read_dir(&r.root) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if is_dir
                    && execgo_runtime_protocol::valid_task_id(&name)
                    && !name.starts_with("probe-")
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
        }
        names.retain(|name| !running(name));
        for name in &names {
            let cg = self.existing(name);
            cg.kill_all(fs, || {});
            cg.remove(fs);
        }
        names
    }
}

/// mkdir of a task cgroup. Its parent may be gone: an exiting helper of
/// the same data dir removes it when empty (see
/// [`Placement::remove_empty_roots`]), so it is made again (on v2 with the
/// controllers enabled for its children), a few times at most.
fn make_task_dir(r: &PlacedRoot, dir: &Path, fs: &dyn CgroupFs) -> Result<(), Errno> {
    let mut tries = 0;
    loop {
        match fs.mkdir(dir) {
            Ok(()) | Err(Errno::EEXIST) => return Ok(()),
            Err(Errno::ENOENT) if tries < 3 => {
                tries += 1;
                match fs.mkdir(&r.root) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                if r.version == CgroupVersion::V2 {
                    for c in &r.controllers {
                        let _ = fs.write(&r.root.join("cgroup.subtree_control"), &format!("+{c}"));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Adds `controller` to the entry for `root`, creating it.
fn add(
    roots: &mut Vec<PlacedRoot>,
    version: CgroupVersion,
    root: PathBuf,
    controller: Option<&'static str>,
) {
    let controllers = Vec::from_iter(controller);
    match roots.iter_mut().find(|r| r.root == root) {
        Some(r) => r.controllers.extend(controllers),
        None => roots.push(PlacedRoot {
            version,
            root,
            controllers,
        }),
    }
}

/// The limits a task's cgroups enforce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskLimits {
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    /// Thousandths of a CPU.
    pub cpu_millis: Option<u64>,
}

impl TaskLimits {
    /// For a task without cgroups: fine unless it has a limit only a
    /// cgroup holds (pids, cpu; memory falls back to `RLIMIT_AS`).
    pub fn without_cgroups(&self) -> Result<(), CgroupError> {
        match (self.pids_max, self.cpu_millis) {
            (Some(_), _) => Err(CgroupError::NoController {
                limit: "pids",
                controller: "pids",
            }),
            (None, Some(_)) => Err(CgroupError::NoController {
                limit: "cpu quota",
                controller: "cpu",
            }),
            (None, None) => Ok(()),
        }
    }
}

/// Which of a task's cgroups it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// One cgroup to find and kill every process of the task.
    Containment,
    /// That one, and those of the controllers named.
    Limits { memory: bool, pids: bool, cpu: bool },
}

impl Need {
    /// What a task needs for its limits: a sandbox always has the memory
    /// cgroup (its peak is reported), a process task for its memory limit
    /// only; each has the pids and cpu ones for those limits. A process
    /// task without limits needs containment alone.
    pub fn of(sandbox: bool, limits: &TaskLimits) -> Need {
        let memory = sandbox || limits.memory_bytes.is_some();
        let pids = limits.pids_max.is_some();
        let cpu = limits.cpu_millis.is_some();
        if memory || pids || cpu {
            Need::Limits { memory, pids, cpu }
        } else {
            Need::Containment
        }
    }
}

/// One task's cgroups.
#[derive(Debug)]
pub struct TaskCgroups {
    entries: Vec<Entry>,
    kill: KillVia,
}

/// A task's cgroup in one hierarchy.
#[derive(Debug)]
struct Entry {
    version: CgroupVersion,
    controllers: Vec<&'static str>,
    dir: PathBuf,
}

impl Entry {
    fn new(r: &PlacedRoot, dir: PathBuf) -> Self {
        Entry {
            version: r.version,
            controllers: r.controllers.clone(),
            dir,
        }
    }
}

/// How long a kill waits for the cgroups to empty, and removal for the
/// kernel to let go of them.
const SETTLE: Duration = Duration::from_secs(2);

impl TaskCgroups {
    #[cfg(test)]
    pub fn dirs(&self) -> Vec<&Path> {
        self.entries.iter().map(|e| e.dir.as_path()).collect()
    }

    /// Whether one of the task's cgroups has `controller`.
    pub fn has(&self, controller: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.controllers.contains(&controller))
    }

    /// The file each cgroup is joined by, opened for writing
    /// (close-on-exec): the task child writes `0` (itself) to each before
    /// it execs. v1's `tasks` moves the writing thread alone, which the
    /// kernel does without taking the global threadgroup lock that a
    /// `cgroup.procs` write takes (and whose writer waits for an RCU grace
    /// period, milliseconds on a busy host); the child is single-threaded,
    /// so that thread is the whole process. v2 has no such file outside
    /// threaded cgroups: `cgroup.procs`.
    pub fn join_fds(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.entries
            .iter()
            .map(|e| {
                let file = if e.version == CgroupVersion::V1 {
                    "tasks"
                } else {
                    "cgroup.procs"
                };
                let path = e.dir.join(file);
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| CgroupError::Write {
                        path,
                        value: "0".into(),
                        source: crate::os_error::OsError::from_io(&e),
                    })
            })
            .collect()
    }

    /// The pids in the task's cgroups (read from the first).
    pub fn pids(&self, fs: &dyn CgroupFs) -> Vec<i32> {
        let Some(e) = self.entries.first() else {
            return Vec::new();
        };
        fs.read(&e.dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Sends `sig` to every process in the cgroups; gone ones are fine.
    pub fn signal(&self, sig: Signal, fs: &dyn CgroupFs) {
        for pid in self.pids(fs) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// SIGKILLs every process in the cgroups at once, without waiting
    /// for them to die.
    pub fn kill_now(&self, fs: &dyn CgroupFs) {
        let done = match self.kill {
            KillVia::CgroupKill => self
                .dir_of(CgroupVersion::V2)
                .is_some_and(|d| fs.write(&d.join("cgroup.kill"), "1").is_ok()),
            KillVia::Freezer => self.freeze_and_kill(fs),
            KillVia::Signals => false,
        };
        if !done {
            self.signal(Signal::SIGKILL, fs);
        }
    }

    /// [`TaskCgroups::kill_now`], then waits (bounded) until no process is
    /// left, calling `between` each round (the shim reaps there); true
    /// when empty.
    pub fn kill_all(&self, fs: &dyn CgroupFs, mut between: impl FnMut()) -> bool {
        // Usually nothing outlives the main process: no freeze then.
        between();
        if self.pids(fs).is_empty() {
            return true;
        }
        self.kill_now(fs);
        let until = Instant::now() + SETTLE;
        loop {
            between();
            if self.pids(fs).is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            // What forked between the read and the kill of the last round.
            self.signal(Signal::SIGKILL, fs);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn dir_of(&self, v: CgroupVersion) -> Option<&PathBuf> {
        self.entries.iter().find(|e| e.version == v).map(|e| &e.dir)
    }

    fn freezer_dir(&self) -> Option<&PathBuf> {
        self.entries
            .iter()
            .find(|e| e.controllers.contains(&"freezer"))
            .map(|e| &e.dir)
    }

    /// v1: freezes the cgroup (no process can fork or exit meanwhile),
    /// SIGKILLs every pid, thaws it so they die. False when freezing did
    /// not take.
    fn freeze_and_kill(&self, fs: &dyn CgroupFs) -> bool {
        let Some(dir) = self.freezer_dir() else {
            return false;
        };
        let state = dir.join("freezer.state");
        if fs.write(&state, "FROZEN").is_err() {
            return false;
        }
        let until = Instant::now() + SETTLE;
        let frozen = loop {
            match fs.read(&state) {
                Ok(s) if s.trim() == "FROZEN" => break true,
                Ok(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                _ => break false,
            }
        };
        for pid in fs
            .read(&dir.join("cgroup.procs"))
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = fs.write(&state, "THAWED");
        frozen
    }

    /// Writes the limits into the cgroups that have their controllers:
    /// memory (and, on v1, memory+swap, so the limit is not dodged into
    /// swap; on v2 no swap at all), pids, and the CPU quota (thousandths
    /// of a CPU, over a [`CPU_PERIOD_US`] period). A limit whose controller
    /// no cgroup of the task has is an error, before anything is written:
    /// a task never runs with less than it was given.
    pub fn set_limits(&self, limits: &TaskLimits, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        let TaskLimits {
            memory_bytes,
            pids_max,
            cpu_millis,
        } = *limits;
        for (given, limit, controller) in [
            (memory_bytes.is_some(), "memory", "memory"),
            (pids_max.is_some(), "pids", "pids"),
            (cpu_millis.is_some(), "cpu quota", "cpu"),
        ] {
            if given && !self.has(controller) {
                return Err(CgroupError::NoController { limit, controller });
            }
        }
        for e in &self.entries {
            if let (Some(millis), true) = (cpu_millis, e.controllers.contains(&"cpu")) {
                let quota = millis.saturating_mul(CPU_PERIOD_US) / 1000;
                if e.version == CgroupVersion::V2 {
                    super::write(
                        fs,
                        &e.dir.join("cpu.max"),
                        &format!("{quota} {CPU_PERIOD_US}"),
                    )?;
                } else {
                    // The period first: the quota is checked against it.
                    super::write(
                        fs,
                        &e.dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                    )?;
                    super::write(fs, &e.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            let v2 = e.version == CgroupVersion::V2;
            if let (Some(bytes), true) = (memory_bytes, e.controllers.contains(&"memory")) {
                let value = bytes.to_string();
                if v2 {
                    super::write(fs, &e.dir.join("memory.max"), &value)?;
                    let _ = fs.write(&e.dir.join("memory.swap.max"), "0");
                } else {
                    super::write(fs, &e.dir.join("memory.limit_in_bytes"), &value)?;
                    // Absent without swap accounting; the limit holds then.
                    let _ = fs.write(&e.dir.join("memory.memsw.limit_in_bytes"), &value);
                }
            }
            if let (Some(max), true) = (pids_max, e.controllers.contains(&"pids")) {
                super::write(fs, &e.dir.join("pids.max"), &max.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether the OOM killer killed a process of the memory cgroup (v1
    /// `memory.oom_control`, v2 `memory.events`: `oom_kill`).
    pub fn oom_killed(&self, fs: &dyn CgroupFs) -> bool {
        let Some(e) = self
            .entries
            .iter()
            .find(|e| e.controllers.contains(&"memory"))
        else {
            return false;
        };
        let file = match e.version {
            CgroupVersion::V2 => "memory.events",
            _ => "memory.oom_control",
        };
        let path = e.dir.join(file);
        fs.read(&path)
            .ok()
            .and_then(|t| super::keyed(&path, &t, "oom_kill").ok())
            .is_some_and(|n| n > 0)
    }

    /// The memory high-water mark, where the memory controller reports
    /// one (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub fn memory_peak(&self, fs: &dyn CgroupFs) -> Option<u64> {
        let e = self
            .entries
            .iter()
            .find(|e| e.controllers.contains(&"memory"))?;
        let file = match e.version {
            CgroupVersion::V2 => "memory.peak",
            _ => "memory.max_usage_in_bytes",
        };
        fs.read(&e.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Removes the cgroups, retrying while the kernel still holds them
    /// (EBUSY right after the last process died). Returns what could not
    /// be removed.
    pub fn remove(&self, fs: &dyn CgroupFs) -> Vec<CgroupError> {
        let until = Instant::now() + SETTLE;
        let mut failed = Vec::new();
        for dir in self.entries.iter().map(|e| &e.dir) {
            loop {
                match fs.rmdir(dir) {
                    Ok(()) | Err(Errno::ENOENT) => break,
                    Err(Errno::EBUSY) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => {
                        failed.push(CgroupError::Rmdir {
                            path: dir.clone(),
                            source: e.into(),
                        });
                        break;
                    }
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fixture;
    use super::*;

    /// The files [`TaskCgroups::join_fds`] opened.
    fn join_targets(cg: &TaskCgroups) -> Vec<PathBuf> {
        use std::os::fd::AsRawFd;
        cg.join_fds()
            .unwrap()
            .iter()
            .map(|fd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap())
            .collect()
    }

    fn placement(f: &Fixture, root: &str) -> (Option<Placement>, Vec<String>) {
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        Placement::prepare(&layout, &TaskRoot::Path(root.into()), "d-1", &f.kernel)
    }

    #[test]
    fn a_hybrid_host_uses_v1_memory_pids_and_the_freezer() {
        let f = Fixture::hybrid();
        let (p, warnings) = placement(&f, "/sys/fs/cgroup/execgo-runtime");
        let p = p.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(p.kill, KillVia::Freezer);
        let roots: Vec<(PathBuf, Vec<&str>)> = p
            .roots
            .iter()
            .map(|r| (r.root.clone(), r.controllers.clone()))
            .collect();
        assert_eq!(
            roots,
            [
                (f.path("cgroup/memory/execgo-runtime/d-1"), vec!["memory"]),
                (f.path("cgroup/pids/execgo-runtime/d-1"), vec!["pids"]),
                (f.path("cgroup/cpu/execgo-runtime/d-1"), vec!["cpu"]),
                (f.path("cgroup/freezer/execgo-runtime/d-1"), vec!["freezer"]),
            ]
        );
        for (root, _) in &roots {
            assert!(root.is_dir(), "{}", root.display());
        }
        let cg = p
            .create(
                "t-1",
                Need::Limits {
                    memory: true,
                    pids: true,
                    cpu: false,
                },
                &f.kernel,
            )
            .unwrap();
        assert_eq!(cg.dirs().len(), 3);
        // v1 is joined through `tasks`.
        assert_eq!(
            join_targets(&cg),
            ["memory", "pids", "freezer"]
                .map(|h| f.path(&format!("cgroup/{h}/execgo-runtime/d-1/t-1/tasks")))
        );
        assert!(f
            .path("cgroup/pids/execgo-runtime/d-1/t-1/pids.max")
            .exists());
        // No cpu cgroup without a quota, no pids cgroup without a limit;
        // with one, the quota is written.
        assert!(!f.path("cgroup/cpu/execgo-runtime/d-1/t-1").exists());
        let m = p
            .create(
                "t-m",
                Need::Limits {
                    memory: true,
                    pids: false,
                    cpu: false,
                },
                &f.kernel,
            )
            .unwrap();
        assert_eq!(
            m.dirs(),
            [
                f.path("cgroup/memory/execgo-runtime/d-1/t-m"),
                f.path("cgroup/freezer/execgo-runtime/d-1/t-m")
            ]
        );
        assert!(m.remove(&f.kernel).is_empty());
        let q = p
            .create(
                "t-q",
                Need::Limits {
                    memory: true,
                    pids: true,
                    cpu: true,
                },
                &f.kernel,
            )
            .unwrap();
        assert_eq!(q.dirs().len(), 4);
        let limits = TaskLimits {
            memory_bytes: Some(64 << 20),
            pids_max: Some(16),
            cpu_millis: Some(250),
        };
        q.set_limits(&limits, &f.kernel).unwrap();
        let read = |rel: &str| {
            std::fs::read_to_string(f.path(rel))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            read("cgroup/cpu/execgo-runtime/d-1/t-q/cpu.cfs_quota_us"),
            "25000"
        );
        assert_eq!(
            read("cgroup/cpu/execgo-runtime/d-1/t-q/cpu.cfs_period_us"),
            "100000"
        );
        assert_eq!(read("cgroup/pids/execgo-runtime/d-1/t-q/pids.max"), "16");
        assert!(q.remove(&f.kernel).is_empty());
        // Containment alone: the freezer only.
        let c = p.create("t-2", Need::Containment, &f.kernel).unwrap();
        assert_eq!(c.dirs(), [f.path("cgroup/freezer/execgo-runtime/d-1/t-2")]);
        assert!(c.remove(&f.kernel).is_empty());
        // Made again (a relaunch): reused.
        p.create(
            "t-1",
            Need::Limits {
                memory: true,
                pids: true,
                cpu: false,
            },
            &f.kernel,
        )
        .unwrap();
        assert!(cg.remove(&f.kernel).is_empty());
        assert!(!f.path("cgroup/memory/execgo-runtime/d-1/t-1").exists());
    }

    #[test]
    fn a_process_tasks_limits_are_its_cgroups_and_a_missing_controller_refuses() {
        let f = Fixture::hybrid();
        let p = placement(&f, "/sys/fs/cgroup/execgo-runtime").0.unwrap();
        let limits = TaskLimits {
            memory_bytes: Some(100 << 20),
            pids_max: Some(50),
            cpu_millis: None,
        };
        let need = Need::of(false, &limits);
        assert_eq!(
            need,
            Need::Limits {
                memory: true,
                pids: true,
                cpu: false
            }
        );
        let cg = p.create("t-p", need, &f.kernel).unwrap();
        assert!(cg.has("memory") && cg.has("pids") && cg.has("freezer"));
        assert!(!cg.has("cpu"));
        cg.set_limits(&limits, &f.kernel).unwrap();
        let read = |rel: &str| {
            std::fs::read_to_string(f.path(&format!("cgroup/{rel}")))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            read("memory/execgo-runtime/d-1/t-p/memory.limit_in_bytes"),
            (100u64 << 20).to_string()
        );
        assert_eq!(read("pids/execgo-runtime/d-1/t-p/pids.max"), "50");
        // A quota without a cpu cgroup is refused, and nothing is written.
        let more = TaskLimits {
            memory_bytes: Some(1 << 20),
            cpu_millis: Some(500),
            ..limits
        };
        let e = cg.set_limits(&more, &f.kernel).unwrap_err();
        assert!(
            matches!(
                e,
                CgroupError::NoController {
                    controller: "cpu",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            read("memory/execgo-runtime/d-1/t-p/memory.limit_in_bytes"),
            (100u64 << 20).to_string()
        );
        assert!(cg.remove(&f.kernel).is_empty());
        // Only a memory limit: no pids cgroup.
        let memory_only = TaskLimits {
            memory_bytes: Some(1 << 20),
            ..TaskLimits::default()
        };
        let m = p
            .create("t-m", Need::of(false, &memory_only), &f.kernel)
            .unwrap();
        assert_eq!(
            m.dirs(),
            [
                f.path("cgroup/memory/execgo-runtime/d-1/t-m"),
                f.path("cgroup/freezer/execgo-runtime/d-1/t-m")
            ]
        );
        assert!(m.remove(&f.kernel).is_empty());
        // No limit: containment alone, for a process task; a sandbox keeps
        // its memory cgroup for the peak.
        assert_eq!(Need::of(false, &TaskLimits::default()), Need::Containment);
        assert_eq!(
            Need::of(true, &TaskLimits::default()),
            Need::Limits {
                memory: true,
                pids: false,
                cpu: false
            }
        );
    }

    #[test]
    fn without_cgroups_only_a_memory_limit_can_be_held() {
        let memory = TaskLimits {
            memory_bytes: Some(1 << 20),
            ..TaskLimits::default()
        };
        assert!(memory.without_cgroups().is_ok());
        let pids = TaskLimits {
            pids_max: Some(5),
            ..memory
        };
        let e = pids.without_cgroups().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the task's pids limit needs the pids controller, and no task cgroup has it"
        );
        let cpu = TaskLimits {
            cpu_millis: Some(100),
            ..TaskLimits::default()
        };
        assert!(cpu.without_cgroups().is_err());
    }

    #[test]
    fn a_v2_host_uses_one_directory_and_cgroup_kill() {
        let f = Fixture::v2(&["memory", "pids", "cpu"]);
        let parent = f.path("cgroup/execgo-runtime");
        let (p, _) = placement(&f, parent.to_str().unwrap());
        let root = parent.join("d-1");
        let p = p.unwrap();
        assert_eq!(p.kill, KillVia::CgroupKill);
        assert_eq!(p.roots.len(), 1);
        assert_eq!(p.roots[0].controllers, ["memory", "pids", "cpu"]);
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "cpu memory pids\n"
        );
        // Gone and made again: the controllers are enabled again too.
        p.remove_empty_roots(&f.kernel);
        assert!(!root.exists());
        let cg = p
            .create(
                "t",
                Need::Limits {
                    memory: true,
                    pids: true,
                    cpu: false,
                },
                &f.kernel,
            )
            .unwrap();
        assert_eq!(join_targets(&cg), [root.join("t/cgroup.procs")]);
        let limits = TaskLimits {
            cpu_millis: Some(1500),
            ..TaskLimits::default()
        };
        cg.set_limits(&limits, &f.kernel).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("t/cpu.max"))
                .unwrap()
                .trim(),
            "150000 100000"
        );
        assert!(root.join("t/memory.max").exists());
        assert!(root.join("t/pids.max").exists());
        assert!(cg.remove(&f.kernel).is_empty());
    }

    #[test]
    fn without_pids_or_freezer_the_kill_is_by_signals_and_without_cgroups_none() {
        let f = Fixture::v1_only();
        let (p, _) = placement(&f, "/sys/fs/cgroup/execgo-runtime");
        let p = p.unwrap();
        assert_eq!(p.kill, KillVia::Signals);
        let controllers: Vec<_> = p.roots.iter().map(|r| r.controllers.clone()).collect();
        assert_eq!(controllers, [["memory"], ["cpu"]]);
        let f = Fixture::none();
        assert_eq!(placement(&f, "/sys/fs/cgroup/execgo-runtime").0, None);
    }

    #[test]
    fn an_unwritable_hierarchy_is_left_out_with_a_warning() {
        let mut f = Fixture::hybrid();
        f.kernel.deny_mkdir = vec![f.path("cgroup/pids/execgo-runtime/d-1")];
        let (p, warnings) = placement(&f, "/sys/fs/cgroup/execgo-runtime");
        let p = p.unwrap();
        assert!(p.roots.iter().all(|r| r.controllers != ["pids"]));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("pids"), "{warnings:?}");
    }

    #[test]
    fn sweep_removes_the_cgroups_of_tasks_not_running() {
        let f = Fixture::hybrid();
        let p = placement(&f, "/sys/fs/cgroup/execgo-runtime").0.unwrap();
        p.create(
            "gone",
            Need::Limits {
                memory: true,
                pids: true,
                cpu: false,
            },
            &f.kernel,
        )
        .unwrap();
        p.create(
            "alive",
            Need::Limits {
                memory: true,
                pids: true,
                cpu: false,
            },
            &f.kernel,
        )
        .unwrap();
        // Another data dir's task, next to ours: not ours to judge.
        let other = Placement::prepare(
            &Layout::detect(&f.mounts, &f.kernel).unwrap(),
            &TaskRoot::Path("/sys/fs/cgroup/execgo-runtime".into()),
            "d-2",
            &f.kernel,
        )
        .0
        .unwrap();
        other
            .create(
                "gone",
                Need::Limits {
                    memory: true,
                    pids: true,
                    cpu: false,
                },
                &f.kernel,
            )
            .unwrap();
        let swept = p.sweep(|id| id == "alive", &f.kernel);
        assert_eq!(swept, ["gone"]);
        assert!(!f.path("cgroup/memory/execgo-runtime/d-1/gone").exists());
        assert!(!f.path("cgroup/freezer/execgo-runtime/d-1/gone").exists());
        assert!(f.path("cgroup/memory/execgo-runtime/d-1/alive").exists());
        assert!(f.path("cgroup/memory/execgo-runtime/d-2/gone").exists());
        // On the way out, a root with a task cgroup left stays.
        p.remove_empty_roots(&f.kernel);
        assert!(f.path("cgroup/memory/execgo-runtime/d-1/alive").exists());
        p.existing("alive").remove(&f.kernel);
        p.remove_empty_roots(&f.kernel);
        assert!(!f.path("cgroup/memory/execgo-runtime/d-1").exists());
        // A helper of the same data dir that started meanwhile makes the
        // parent again when it needs it.
        p.create(
            "next",
            Need::Limits {
                memory: true,
                pids: true,
                cpu: false,
            },
            &f.kernel,
        )
        .unwrap();
        assert!(f.path("cgroup/memory/execgo-runtime/d-1/next").is_dir());
    }

    #[test]
    fn memory_peak_is_read_from_the_memory_hierarchy() {
        let f = Fixture::hybrid();
        let p = placement(&f, "/sys/fs/cgroup/execgo-runtime").0.unwrap();
        let cg = p
            .create(
                "t",
                Need::Limits {
                    memory: true,
                    pids: true,
                    cpu: false,
                },
                &f.kernel,
            )
            .unwrap();
        assert_eq!(cg.memory_peak(&f.kernel), None);
        std::fs::write(
            f.path("cgroup/memory/execgo-runtime/d-1/t/memory.max_usage_in_bytes"),
            "4096\n",
        )
        .unwrap();
        assert_eq!(cg.memory_peak(&f.kernel), Some(4096));
    }
}
