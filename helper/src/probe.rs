//! The capability probe, run once at start; `Probe` requests get its result.
//! Nothing is inferred from the uid: each mechanism the sandbox uses is
//! really tried, and a missing one leaves a warning saying which step
//! failed and why.
//!
//! [`probe`] is a straight list of named steps. The ones that change
//! process state (process group, rlimits, each namespace, chroot,
//! pivot_root, seccomp) run in a throwaway child ([`probe_child`]), each
//! bounded by [`PER_PROBE`], all by [`BUDGET`] (the runtime waits 15 s for
//! an answer). The data dir is probed by creating and removing a file; the
//! cgroups by creating and removing a cgroup ([`cgroup::probe`]).

use std::error::Error;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::process;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{HelperCapabilities, NamespaceCapabilities};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setpgid, Pid, UnlinkatFlags};

use crate::cgroup::{self, CgroupFs, HostFs};
use crate::fs_at::{self, Access};
use crate::namespaces::Namespace;
use crate::os_error::OsError;
use crate::probe_child::{self, at, ChildResult, ProbeFailure, Step};
use crate::rootfs::{self, Scratch};
use crate::{logging, rlimits, seccomp};

/// The longest one probe child may take; healthy ones take milliseconds.
pub const PER_PROBE: Duration = Duration::from_secs(1);
/// The longest all probe children together may take.
pub const BUDGET: Duration = Duration::from_secs(8);

/// Where the probe looks, fixed at start.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The data dir's canonical path (the descriptor is passed separately).
    pub data_dir: PathBuf,
    /// `--cgroup-root`.
    pub cgroup_root: cgroup::TaskRoot,
    /// The mounts file: `/proc/self/mountinfo`.
    pub mounts: PathBuf,
}

/// Probes the host.
pub fn probe(cfg: &ProbeConfig, data_fd: BorrowedFd<'_>) -> HelperCapabilities {
    probe_with(cfg, data_fd, &HostFs)
}

/// [`probe`] with the cgroup filesystem as a parameter, for tests.
pub fn probe_with(
    cfg: &ProbeConfig,
    data_fd: BorrowedFd<'_>,
    fs: &dyn CgroupFs,
) -> HelperCapabilities {
    let started = Instant::now();
    let budget = Budget(started + BUDGET);
    let mut w = Vec::new();
    let mut caps = HelperCapabilities {
        // Informational only: nothing below looks at it.
        privileged: nix::unistd::geteuid().is_root(),
        ..Default::default()
    };

    // 1. Process group and rlimits, as the shim sets them for a task (the
    //    values are always a lowering: 60 s of CPU, 1 GiB of address space).
    caps.process_group = check(
        &mut w,
        "process group",
        budget.run(|| at(Step::SetPgid, setpgid(Pid::from_raw(0), Pid::from_raw(0)))),
    );
    let cpu = rlimits::cpu_pair(60, rlimits::current_hard(Resource::RLIMIT_CPU));
    caps.rlimit_cpu = check(
        &mut w,
        "rlimit cpu",
        budget.run(|| lower(Resource::RLIMIT_CPU, cpu, Step::SetRlimitCpu)),
    );
    let mem = rlimits::address_space_pair(1 << 30, rlimits::current_hard(Resource::RLIMIT_AS));
    caps.rlimit_memory = check(
        &mut w,
        "rlimit memory",
        budget.run(|| lower(Resource::RLIMIT_AS, mem, Step::SetRlimitAs)),
    );

    // 2. The data dir: a file created and removed.
    caps.data_dir_writable = match data_dir_writable(data_fd) {
        Ok(()) => true,
        Err(e) => {
            w.push(format!("data dir {}: {e}", cfg.data_dir.display()));
            false
        }
    };

    // 3. Each namespace, unshared (and used) in its own child.
    caps.namespaces = namespaces(&mut w, &budget);

    // 4. chroot and pivot_root into an empty scratch directory.
    match Scratch::create(data_fd, &cfg.data_dir) {
        Ok(scratch) => {
            caps.chroot = check(
                &mut w,
                "chroot",
                budget.run(|| rootfs::try_chroot(scratch.path())),
            );
            caps.pivot_root = check(
                &mut w,
                "pivot_root",
                budget.run(|| rootfs::try_pivot_root(scratch.path())),
            );
        }
        Err(e) => {
            let why = logging::chain(&e);
            w.push(format!("chroot: {why}"));
            w.push(format!("pivot_root: {why}"));
        }
    }

    // 5. seccomp: an allow-all filter, compiled here, loaded in the child.
    caps.seccomp = match seccomp::allow_all() {
        Ok(program) => check(
            &mut w,
            "seccomp",
            budget.run(|| seccomp::try_in_child(&program)),
        ),
        Err(e) => {
            w.push(format!("seccomp: {}", logging::chain(&e)));
            false
        }
    };

    // 6. cgroups: layout, then a probe cgroup per controller.
    let name = format!("probe-{}", process::id());
    let cg = cgroup::probe::probe(&cfg.mounts, &cfg.cgroup_root, fs, &name);
    caps.cgroup_version = cg.version;
    caps.cgroup_v1 = cg.v1;
    caps.cgroup_v2 = cg.v2;
    caps.cgroup_writable = cg.writable;
    caps.memory_limit = cg.memory_limit;
    caps.pids_limit = cg.pids_limit;
    caps.cpu_quota = cg.cpu_quota;
    caps.oom_detection = cg.oom_detection;
    w.extend(cg.warnings);

    caps.warnings = w;
    tracing::debug!(
        target: logging::TARGET,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "capability probe done"
    );
    caps
}

/// The deadline of all probe children.
struct Budget(Instant);

impl Budget {
    fn run(&self, f: impl FnOnce() -> ChildResult) -> Result<(), ProbeFailure> {
        let left = self.0.saturating_duration_since(Instant::now());
        probe_child::run(left.min(PER_PROBE), f)
    }
}

/// `true` on success; otherwise records `what: why` and returns `false`.
fn check(warnings: &mut Vec<String>, what: &str, r: Result<(), impl Error>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            warnings.push(format!("{what}: {}", logging::chain(&e)));
            false
        }
    }
}

/// Runs in a probe child.
fn lower(resource: Resource, (soft, hard): (u64, u64), step: Step) -> ChildResult {
    at(step, setrlimit(resource, soft, hard))
}

fn namespaces(w: &mut Vec<String>, budget: &Budget) -> NamespaceCapabilities {
    let mut caps = NamespaceCapabilities::default();
    for ns in Namespace::ALL {
        let ok = check(
            w,
            &format!("{} namespace", ns.name()),
            budget.run(|| ns.try_in_child()),
        );
        *match ns {
            Namespace::Mount => &mut caps.mount,
            Namespace::Pid => &mut caps.pid,
            Namespace::Uts => &mut caps.uts,
            Namespace::Ipc => &mut caps.ipc,
            Namespace::Net => &mut caps.net,
            Namespace::User => &mut caps.user,
        } = ok;
    }
    caps
}

fn data_dir_writable(dir: BorrowedFd<'_>) -> Result<(), String> {
    let name = format!(".execgo-helper-probe-{}", process::id());
    let unlink = || {
        nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        )
    };
    // A leftover from an earlier helper with our pid is removed first.
    let _ = unlink();
    fs_at::open_file(dir, &name, Access::CreateNew(0o600)).map_err(|e| {
        let why = e
            .open_errno()
            .map_or_else(|| logging::chain(&e), |n| OsError(n).to_string());
        format!("creating {name}: {why}")
    })?;
    unlink().map_err(|e| format!("removing {name}: {}", OsError(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::fake::Fixture;
    use crate::sys;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;

    #[test]
    fn probes_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let f = Fixture::hybrid();
        let cfg = ProbeConfig {
            data_dir: tmp.path().canonicalize().unwrap(),
            cgroup_root: crate::cgroup::TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            mounts: f.mounts.clone(),
        };
        let caps = probe_with(&cfg, fd.as_fd(), &f.kernel);
        assert!(caps.data_dir_writable);
        // Lowering limits, a new process group and an allow-all seccomp
        // filter (with NO_NEW_PRIVS) work for anyone.
        assert!(caps.process_group && caps.rlimit_cpu && caps.rlimit_memory);
        assert!(caps.seccomp, "{:?}", caps.warnings);
        assert_eq!(caps.privileged, nix::unistd::geteuid().is_root());
        // The fake cgroup tree answers fully.
        assert_eq!(
            caps.cgroup_version,
            execgo_runtime_protocol::CgroupVersion::Hybrid
        );
        assert!(caps.cgroup_v1 && !caps.cgroup_v2 && caps.cgroup_writable);
        assert!(caps.memory_limit && caps.pids_limit && caps.cpu_quota && caps.oom_detection);
        // Every capability found missing has its warning, and only those.
        let missing: Vec<&str> = [
            ("chroot", caps.chroot),
            ("pivot_root", caps.pivot_root),
            ("mount namespace", caps.namespaces.mount),
            ("pid namespace", caps.namespaces.pid),
            ("uts namespace", caps.namespaces.uts),
            ("ipc namespace", caps.namespaces.ipc),
            ("net namespace", caps.namespaces.net),
            ("user namespace", caps.namespaces.user),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
        assert_eq!(caps.warnings.len(), missing.len(), "{:?}", caps.warnings);
        for (n, w) in missing.iter().zip(&caps.warnings) {
            assert!(w.starts_with(&format!("{n}: ")), "{w}");
        }
        // No scratch directory or probe file is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unwritable_data_dir_is_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        // Removed under our descriptor: nothing can be created in it, even
        // by root.
        std::fs::remove_dir(tmp.path()).unwrap();
        let f = Fixture::none();
        let cfg = ProbeConfig {
            data_dir: tmp.path().to_path_buf(),
            cgroup_root: crate::cgroup::TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            mounts: f.mounts.clone(),
        };
        let caps = probe_with(&cfg, fd.as_fd(), &f.kernel);
        assert!(!caps.data_dir_writable && !caps.chroot && !caps.pivot_root);
        let data = format!(
            "data dir {}: creating .execgo-helper-probe-",
            tmp.path().display()
        );
        assert!(
            caps.warnings
                .iter()
                .any(|w| w.starts_with(&data) && w.ends_with(": no such file or directory")),
            "{:?}",
            caps.warnings
        );
        assert!(caps
            .warnings
            .iter()
            .any(|w| w.starts_with("chroot: creating the scratch directory ")));
    }
}
