//! The cgroup probe. For each of memory, pids and cpu, in the hierarchy
//! that serves it: prepare `--cgroup-root` there, create
//! `<root>/probe-<pid>`, write a limit and read it back (memory also: read
//! the OOM-kill counter), remove the probe cgroup. A controller counts only
//! when all of that worked; each failure becomes one warning.
//!
//! It runs in the helper itself, not in a child: it changes no process
//! state, only files of a kernel pseudo-filesystem, whose operations do not
//! wait on anything outside the kernel.

use std::path::Path;

use execgo_runtime_protocol::CgroupVersion;

use super::{CgroupBackend, CgroupError, CgroupFs, Controller, Layout, TaskRoot};
use crate::logging;

/// Values the probe writes: always limits, never grants.
const PROBE_MEMORY_BYTES: u64 = 64 << 20;
const PROBE_PIDS: u64 = 64;
const PROBE_CPU_QUOTA_US: u64 = 50_000;
const PROBE_CPU_PERIOD_US: u64 = 100_000;

/// What the probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub version: CgroupVersion,
    /// v2 serves at least one of memory, pids, cpu.
    pub v2: bool,
    /// v1 serves at least one of memory, pids, cpu.
    pub v1: bool,
    /// A probe cgroup was created and removed for at least one controller.
    pub writable: bool,
    pub memory_limit: bool,
    pub pids_limit: bool,
    pub cpu_quota: bool,
    pub oom_detection: bool,
    pub warnings: Vec<String>,
}

/// Probes with the mounts file `mounts`, task cgroups placed by `root`,
/// and `name` (`probe-<pid>`) for the throwaway cgroups.
pub fn probe(mounts: &Path, root: &TaskRoot, fs: &dyn CgroupFs, name: &str) -> Report {
    let mut report = Report::default();
    let layout = match Layout::detect(mounts, fs) {
        Ok(l) => l,
        Err(e) => {
            report
                .warnings
                .push(format!("cgroup: {}", logging::chain(&e)));
            return report;
        }
    };
    report.version = layout.version();
    if report.version == CgroupVersion::None {
        report.warnings.push(format!(
            "cgroup: no cgroup hierarchy is mounted (none in {})",
            mounts.display()
        ));
    }
    for c in Controller::ALL {
        match layout.serving(c) {
            Some(CgroupVersion::V2) => report.v2 = true,
            Some(_) => report.v1 = true,
            None => {}
        }
        let Some(backend) = layout.scoped_backend(c, root, None, fs) else {
            if layout.serving(c).is_some() {
                report.warnings.push(format!(
                    "cgroup {} controller: its hierarchy is not delegated to the helper ({root})",
                    c.name()
                ));
            } else if report.version != CgroupVersion::None {
                report.warnings.push(not_served(&layout, c));
            }
            continue;
        };
        let prefix = format!(
            "cgroup {} {} controller",
            backend.version().as_str(),
            c.name()
        );
        match probe_controller(&*backend, c, name) {
            Ok(outcome) => {
                report.writable = true;
                let flag = match c {
                    Controller::Memory => &mut report.memory_limit,
                    Controller::Pids => &mut report.pids_limit,
                    Controller::Cpu => &mut report.cpu_quota,
                };
                match outcome.limit {
                    Ok(()) => *flag = true,
                    Err(e) => report
                        .warnings
                        .push(format!("{prefix}: {}", logging::chain(&e))),
                }
                match outcome.oom {
                    Some(Ok(_)) => report.oom_detection = true,
                    Some(Err(e)) => report
                        .warnings
                        .push(format!("{prefix}: oom detection: {}", logging::chain(&e))),
                    None => {}
                }
            }
            Err(e) => report
                .warnings
                .push(format!("{prefix}: {}", logging::chain(&e))),
        }
    }
    report
}

/// Why no hierarchy serves `c`.
fn not_served(layout: &Layout, c: Controller) -> String {
    let v2 = match &layout.unified {
        Some(h) => format!(
            "the cgroup v2 hierarchy at {} does not offer it (cgroup.controllers: {:?})",
            h.mount_point.display(),
            h.controllers.join(" ")
        ),
        None => "no cgroup v2 hierarchy is mounted".to_string(),
    };
    format!(
        "cgroup {} controller: not available: {v2}, and no cgroup v1 hierarchy has it",
        c.name()
    )
}

/// The results of one controller whose probe cgroup was created and
/// removed.
struct Outcome {
    limit: Result<(), CgroupError>,
    oom: Option<Result<u64, CgroupError>>,
}

fn probe_controller(
    b: &dyn CgroupBackend,
    c: Controller,
    name: &str,
) -> Result<Outcome, CgroupError> {
    b.prepare(c)?;
    let dir = b.root().join(name);
    // A leftover of an earlier helper that had our pid.
    if b.fs().is_dir(&dir) {
        let _ = b.remove(&dir);
    }
    let dir = b.create(name)?;
    let limit = match c {
        Controller::Memory => b
            .set_memory_max(&dir, PROBE_MEMORY_BYTES)
            .and_then(|()| b.memory_max(&dir))
            .and_then(|got| read_back(&dir, "memory limit", PROBE_MEMORY_BYTES, got)),
        Controller::Pids => b
            .set_pids_max(&dir, PROBE_PIDS)
            .and_then(|()| b.pids_max(&dir))
            .and_then(|got| read_back(&dir, "pids limit", PROBE_PIDS, got)),
        Controller::Cpu => b
            .set_cpu_quota(&dir, PROBE_CPU_QUOTA_US, PROBE_CPU_PERIOD_US)
            .and_then(|()| b.cpu_quota(&dir))
            .and_then(|(quota, period)| {
                read_back(&dir, "cpu quota", PROBE_CPU_QUOTA_US, quota)?;
                read_back(&dir, "cpu period", PROBE_CPU_PERIOD_US, Some(period))
            }),
    };
    let oom = (c == Controller::Memory).then(|| b.oom_kills(&dir));
    // A cgroup that cannot be removed would leak one per task: the
    // controller is unusable whatever else worked.
    b.remove(&dir)?;
    Ok(Outcome { limit, oom })
}

fn read_back(dir: &Path, what: &str, wrote: u64, got: Option<u64>) -> Result<(), CgroupError> {
    if got == Some(wrote) {
        return Ok(());
    }
    Err(CgroupError::ReadBack {
        path: dir.to_path_buf(),
        wrote: format!("{what} {wrote}"),
        got: got.map_or_else(|| "max".to_string(), |g| g.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fixture;
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for e in walk(dir) {
            if e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("probe-"))
            {
                found.push(e.display().to_string());
            }
        }
        found
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.extend(walk(&p));
                    out.push(p);
                }
            }
        }
        out
    }

    #[test]
    fn everything_on_a_v2_host() {
        let f = Fixture::v2(&["cpuset", "cpu", "io", "memory", "pids"]);
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert_eq!(
            r,
            Report {
                version: CgroupVersion::V2,
                v2: true,
                v1: false,
                writable: true,
                memory_limit: true,
                pids_limit: true,
                cpu_quota: true,
                oom_detection: true,
                warnings: vec![],
            }
        );
        assert!(leftovers(f.tmp.path()).is_empty());
        // The root stays, with the controllers enabled for its children.
        let sc = std::fs::read_to_string(f.path("cgroup/execgo-runtime/cgroup.subtree_control"))
            .unwrap();
        assert_eq!(sc.trim(), "cpu memory pids");
    }

    #[test]
    fn everything_on_v1_on_a_hybrid_host() {
        let f = Fixture::hybrid();
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert_eq!(r.version, CgroupVersion::Hybrid);
        assert!(r.v1 && !r.v2, "{r:?}");
        assert!(r.writable && r.memory_limit && r.pids_limit && r.cpu_quota && r.oom_detection);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert!(leftovers(f.tmp.path()).is_empty());
        // The v2 mount serves none of ours: nothing was created there.
        assert!(!f.path("cgroup/unified/execgo-runtime").exists());
    }

    #[test]
    fn a_leftover_probe_cgroup_is_replaced() {
        let f = Fixture::hybrid();
        let root = f.path("cgroup/execgo-runtime");
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let b = layout.backend(Controller::Pids, &root, &f.kernel).unwrap();
        b.prepare(Controller::Pids).unwrap();
        b.create("probe-7").unwrap();
        let r = probe(&f.mounts, &TaskRoot::Path(root), &f.kernel, "probe-7");
        assert!(r.pids_limit, "{:?}", r.warnings);
        assert!(leftovers(f.tmp.path()).is_empty());
    }

    #[test]
    fn permission_denied_is_explained() {
        let mut f = Fixture::hybrid();
        f.kernel
            .deny_mkdir
            .push(f.path("cgroup/memory/execgo-runtime"));
        f.kernel
            .deny_mkdir
            .push(f.path("cgroup/pids/execgo-runtime/probe-7"));
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert!(!r.memory_limit && !r.oom_detection && !r.pids_limit);
        // cpu still worked, so a cgroup could be written.
        assert!(r.cpu_quota && r.writable);
        assert_eq!(
            r.warnings,
            [
                format!(
                    "cgroup v1 memory controller: mkdir {}: permission denied",
                    f.path("cgroup/memory/execgo-runtime").display()
                ),
                format!(
                    "cgroup v1 pids controller: mkdir {}: permission denied",
                    f.path("cgroup/pids/execgo-runtime/probe-7").display()
                ),
            ]
        );
    }

    #[test]
    fn nothing_writable_when_every_mkdir_is_denied() {
        let mut f = Fixture::v2(&["cpu", "memory", "pids"]);
        f.kernel.deny_mkdir.push(f.path("cgroup/execgo-runtime"));
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert_eq!(r.version, CgroupVersion::V2);
        assert!(r.v2);
        assert!(!r.writable && !r.memory_limit && !r.pids_limit && !r.cpu_quota);
        assert!(!r.oom_detection);
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("cgroup v2 memory controller: mkdir "));
        assert!(r.warnings[0].ends_with(": permission denied"));
    }

    #[test]
    fn a_probe_cgroup_that_cannot_be_removed_counts_as_unusable() {
        let mut f = Fixture::v2(&["cpu", "memory", "pids"]);
        f.kernel.busy.push(f.path("cgroup/execgo-runtime/probe-7"));
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert!(!r.writable && !r.memory_limit && !r.oom_detection);
        assert!(r.warnings[0].contains("rmdir "), "{:?}", r.warnings);
        assert!(r.warnings[0].ends_with("device or resource busy"));
    }

    #[test]
    fn missing_controllers_are_explained() {
        let f = Fixture::v2(&["memory"]);
        let r = probe(
            &f.mounts,
            &TaskRoot::Path(f.path("cgroup/execgo-runtime")),
            &f.kernel,
            "probe-7",
        );
        assert!(r.memory_limit && r.oom_detection && !r.pids_limit && !r.cpu_quota);
        assert_eq!(r.warnings.len(), 2);
        assert_eq!(
            r.warnings[0],
            format!(
                "cgroup pids controller: not available: the cgroup v2 hierarchy at {} does not offer it (cgroup.controllers: \"memory\"), and no cgroup v1 hierarchy has it",
                f.path("cgroup").display()
            )
        );

        let f = Fixture::none();
        let r = probe(
            &f.mounts,
            &TaskRoot::Path("/x/execgo-runtime".into()),
            &f.kernel,
            "probe-7",
        );
        assert_eq!(r.version, CgroupVersion::None);
        assert!(!r.writable && !r.v1 && !r.v2);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].starts_with("cgroup: no cgroup hierarchy is mounted"));
    }

    #[test]
    fn an_unreadable_mounts_file_is_explained() {
        let f = Fixture::none();
        let r = probe(
            &f.path("missing"),
            &TaskRoot::Path("/x/execgo-runtime".into()),
            &f.kernel,
            "probe-7",
        );
        assert_eq!(
            r.warnings,
            [format!(
                "cgroup: reading {}: no such file or directory",
                f.path("missing").display()
            )]
        );
    }
}
