//! Control groups: where the hierarchies are mounted ([`Layout`], read from
//! a mountinfo file), one [`CgroupBackend`] per hierarchy ([`v1`] and
//! [`v2`]), and the probe of the controllers the sandbox uses ([`probe`]).
//!
//! Nothing here hard-codes `/sys/fs/cgroup`: the mounts file and the
//! `--cgroup-root` are parameters, and every file operation goes through
//! [`CgroupFs`], so unit tests run on fake trees in tempdirs.
//!
//! Where the task cgroups go: `--cgroup-root` (default
//! `/sys/fs/cgroup/execgo-runtime`) names the parent. A hierarchy whose
//! mount point contains that path uses it as it is (pure v2: the unified
//! mount is `/sys/fs/cgroup`); any other hierarchy uses
//! `<mount point>/<basename of --cgroup-root>`, e.g.
//! `/sys/fs/cgroup/memory/execgo-runtime` for v1 memory and
//! `/sys/fs/cgroup/unified/execgo-runtime` for a hybrid host's v2 mount.
//! Each controller is served by exactly one hierarchy: v2 when the unified
//! mount lists it in `cgroup.controllers`, else the v1 mount that has it.
//! Task cgroups sit one level further down, in a directory named after the
//! data dir (see [`task`]), so runtimes with different data dirs never
//! touch each other's tasks.
//!
//! `--cgroup-root delegated` ([`TaskRoot::Delegated`], see [`delegate`])
//! puts them instead in the helper's own cgroup under systemd
//! (`Delegate=yes`): `<mount point>/<unit cgroup>/<scope>/<task_id>`, next
//! to the `supervisor` cgroup the helper moved itself into.

pub mod delegate;
pub mod mountinfo;
pub mod probe;
pub mod task;
mod v1;
mod v2;

#[cfg(test)]
pub mod fake;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use execgo_runtime_protocol::CgroupVersion;
use nix::errno::Errno;

use crate::os_error::OsError;

pub use v1::V1;
pub use v2::V2;

/// The controllers the sandbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The kernel's name, as in `cgroup.controllers` and v1 mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// The kernel's v1 controller names, to tell a v1 mount with controllers
/// from a named hierarchy without any (`name=systemd`).
pub(crate) const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// File operations on a cgroup filesystem. The host's is [`HostFs`]; unit
/// tests use [`fake::FakeKernel`], which behaves like the kernel on a tempdir.
pub trait CgroupFs {
    fn mkdir(&self, path: &Path) -> Result<(), Errno>;
    fn rmdir(&self, path: &Path) -> Result<(), Errno>;
    fn read(&self, path: &Path) -> Result<String, Errno>;
    /// Writes `value` to an existing control file in one write(2).
    fn write(&self, path: &Path, value: &str) -> Result<(), Errno>;
    fn is_dir(&self, path: &Path) -> bool;
}

/// The real cgroup filesystems.
pub struct HostFs;

fn errno(e: std::io::Error) -> Errno {
    OsError::from_io(&e).0
}

impl CgroupFs for HostFs {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        DirBuilder::new().mode(0o755).create(path).map_err(errno)
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        std::fs::remove_dir(path).map_err(errno)
    }

    fn read(&self, path: &Path) -> Result<String, Errno> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(errno)?;
        let mut s = String::new();
        f.read_to_string(&mut s).map_err(errno)?;
        Ok(s)
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
        // Never O_CREAT: control files exist, or the controller is absent.
        let mut f: File = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(errno)?;
        // cgroupfs takes a value in a single write(2); a short write is a
        // failure, not something to resume.
        let n = f.write(value.as_bytes()).map_err(errno)?;
        if n != value.len() {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}")]
    Mounts {
        path: PathBuf,
        #[source]
        source: OsError,
    },
    #[error("parsing {path}")]
    MountsSyntax {
        path: PathBuf,
        #[source]
        source: mountinfo::ParseError,
    },
    #[error("mkdir {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: OsError,
    },
    #[error("rmdir {path}")]
    Rmdir {
        path: PathBuf,
        #[source]
        source: OsError,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: OsError,
    },
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: OsError,
    },
    #[error("{path} holds {content:?}, expected {expected}")]
    Unexpected {
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
    #[error("the hierarchy at {mount} is not delegated to the helper")]
    NotDelegated { mount: PathBuf },
    #[error(
        "the task's {limit} limit needs the {controller} controller, and no task cgroup has it"
    )]
    NoController {
        limit: &'static str,
        controller: &'static str,
    },
    #[error("{path} reads back {got:?} after writing {wrote:?}")]
    ReadBack {
        path: PathBuf,
        wrote: String,
        got: String,
    },
}

/// A mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// v1: the controllers among the mount options; v2: the mount's
    /// `cgroup.controllers`.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub(crate) fn has(&self, c: Controller) -> bool {
        self.controllers.iter().any(|x| x == c.name())
    }
}

/// Where task cgroups go: under a path (`--cgroup-root PATH`, placed in
/// each hierarchy as the module header says), or in the helper's
/// delegated cgroup (`--cgroup-root delegated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskRoot {
    Path(PathBuf),
    Delegated(delegate::Delegation),
}

impl TaskRoot {
    /// For the hierarchy mounted at `mount`: the top level the helper may
    /// create and enable controllers from (the mount point, or the
    /// delegated cgroup) and the parent of the task cgroups, `scope` below
    /// the root. `None` when the hierarchy is not delegated to us.
    pub fn place(&self, mount: &Path, scope: Option<&str>) -> Option<(PathBuf, PathBuf)> {
        let (top, root) = match self {
            TaskRoot::Path(p) => (mount.to_path_buf(), root_under(mount, p)),
            TaskRoot::Delegated(d) => {
                let base = d.base(mount)?.to_path_buf();
                (base.clone(), base)
            }
        };
        Some((top, scope.map_or_else(|| root.clone(), |s| root.join(s))))
    }
}

impl std::fmt::Display for TaskRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskRoot::Path(p) => write!(f, "{}", p.display()),
            TaskRoot::Delegated(d) => write!(f, "delegated: {}", d.unit),
        }
    }
}

/// The cgroup hierarchies of the host, as a mountinfo file shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The first `cgroup2` mount.
    pub unified: Option<Hierarchy>,
    /// Every `cgroup` (v1) mount with at least one controller; the first
    /// mount of each hierarchy only.
    pub v1: Vec<Hierarchy>,
}

impl Layout {
    /// Reads `mounts` (`/proc/self/mountinfo` on a host) and the unified
    /// mount's `cgroup.controllers`.
    pub fn detect(mounts: &Path, fs: &dyn CgroupFs) -> Result<Layout, CgroupError> {
        let text = std::fs::read_to_string(mounts).map_err(|e| CgroupError::Mounts {
            path: mounts.to_path_buf(),
            source: OsError::from_io(&e),
        })?;
        let parsed = mountinfo::parse(&text).map_err(|source| CgroupError::MountsSyntax {
            path: mounts.to_path_buf(),
            source,
        })?;
        let mut layout = Layout::default();
        for m in parsed {
            match m.fs_type.as_str() {
                "cgroup2" if layout.unified.is_none() => {
                    let file = m.mount_point.join("cgroup.controllers");
                    let text = fs.read(&file).map_err(|e| CgroupError::Read {
                        path: file,
                        source: e.into(),
                    })?;
                    layout.unified = Some(Hierarchy {
                        mount_point: m.mount_point,
                        controllers: text.split_whitespace().map(str::to_string).collect(),
                    });
                }
                "cgroup" => {
                    let controllers: Vec<String> = m
                        .super_options
                        .into_iter()
                        .filter(|o| V1_CONTROLLERS.contains(&o.as_str()))
                        .collect();
                    // A bind mount of a hierarchy already seen repeats its
                    // controllers; the first mount point serves.
                    let seen = layout
                        .v1
                        .iter()
                        .any(|h| h.controllers.iter().any(|c| controllers.contains(c)));
                    if !controllers.is_empty() && !seen {
                        layout.v1.push(Hierarchy {
                            mount_point: m.mount_point,
                            controllers,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(layout)
    }

    pub fn version(&self) -> CgroupVersion {
        match (self.unified.is_some(), !self.v1.is_empty()) {
            (false, false) => CgroupVersion::None,
            (false, true) => CgroupVersion::V1,
            (true, false) => CgroupVersion::V2,
            (true, true) => CgroupVersion::Hybrid,
        }
    }

    /// The version of the hierarchy serving `c`, if any does.
    pub fn serving(&self, c: Controller) -> Option<CgroupVersion> {
        if self.unified.as_ref().is_some_and(|h| h.has(c)) {
            Some(CgroupVersion::V2)
        } else if self.v1.iter().any(|h| h.has(c)) {
            Some(CgroupVersion::V1)
        } else {
            None
        }
    }

    /// The backend of the hierarchy serving `c`, with task cgroups under
    /// `cgroup_root` as the module header describes.
    #[cfg(test)]
    pub fn backend<'a>(
        &self,
        c: Controller,
        cgroup_root: &Path,
        fs: &'a dyn CgroupFs,
    ) -> Option<Box<dyn CgroupBackend + 'a>> {
        self.scoped_backend(c, &TaskRoot::Path(cgroup_root.to_path_buf()), None, fs)
    }

    /// The backend of the hierarchy serving `c`, its root placed by `root`
    /// and one level further down, in `scope`. `None` also when that
    /// hierarchy is not delegated to us.
    pub fn scoped_backend<'a>(
        &self,
        c: Controller,
        root: &TaskRoot,
        scope: Option<&str>,
        fs: &'a dyn CgroupFs,
    ) -> Option<Box<dyn CgroupBackend + 'a>> {
        if let Some(h) = self.unified.as_ref().filter(|h| h.has(c)) {
            let (top, dir) = root.place(&h.mount_point, scope)?;
            return Some(Box::new(V2::new(fs, top, dir)));
        }
        let h = self.v1.iter().find(|h| h.has(c))?;
        let (top, dir) = root.place(&h.mount_point, scope)?;
        Some(Box::new(V1::new(fs, top, dir)))
    }
}

/// `cgroup_root` itself when it lies in `mount`, else
/// `<mount>/<basename of cgroup_root>`. `cgroup_root` is validated at start
/// (absolute, normalised, not `/`), so it has a basename.
pub fn root_under(mount: &Path, cgroup_root: &Path) -> PathBuf {
    if cgroup_root.starts_with(mount) {
        return cgroup_root.to_path_buf();
    }
    match cgroup_root.file_name() {
        Some(name) => mount.join(name),
        None => mount.to_path_buf(),
    }
}

/// One mounted hierarchy, with task cgroups under its root (see the module
/// header). v1 serves the controllers of its mount, each in its own
/// directory tree; v2 serves all of its controllers in one tree.
pub trait CgroupBackend {
    fn version(&self) -> CgroupVersion;

    /// The parent of the task cgroups in this hierarchy.
    fn root(&self) -> &Path;

    /// Makes the root usable for `c`: creates it and any missing ancestor
    /// below the mount point, and on v2 enables `c` in the
    /// `cgroup.subtree_control` of every level from the mount point down to
    /// the root, so the root's children get `c`'s files. Only adds; leaves
    /// the root in place, as the parent of future task cgroups.
    fn prepare(&self, c: Controller) -> Result<(), CgroupError>;

    /// Creates `<root>/<name>` and returns its path.
    fn create(&self, name: &str) -> Result<PathBuf, CgroupError> {
        let dir = self.root().join(name);
        self.fs().mkdir(&dir).map_err(|e| CgroupError::Mkdir {
            path: dir.clone(),
            source: e.into(),
        })?;
        Ok(dir)
    }

    /// Removes an (empty) cgroup.
    fn remove(&self, dir: &Path) -> Result<(), CgroupError> {
        self.fs().rmdir(dir).map_err(|e| CgroupError::Rmdir {
            path: dir.to_path_buf(),
            source: e.into(),
        })
    }

    /// The memory limit, in bytes.
    fn set_memory_max(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError>;
    /// The memory limit; `None` when unlimited.
    fn memory_max(&self, dir: &Path) -> Result<Option<u64>, CgroupError>;

    fn set_pids_max(&self, dir: &Path, max: u64) -> Result<(), CgroupError> {
        write(self.fs(), &dir.join("pids.max"), &max.to_string())
    }
    /// The pids limit (same file on v1 and v2); `None` when unlimited.
    fn pids_max(&self, dir: &Path) -> Result<Option<u64>, CgroupError> {
        let path = dir.join("pids.max");
        let text = read(self.fs(), &path)?;
        parse_max(&path, &text)
    }

    /// A CPU quota of `quota_us` per `period_us`.
    fn set_cpu_quota(&self, dir: &Path, quota_us: u64, period_us: u64) -> Result<(), CgroupError>;
    /// (quota, period) in microseconds; quota `None` when unlimited.
    fn cpu_quota(&self, dir: &Path) -> Result<(Option<u64>, u64), CgroupError>;

    /// How many processes of the cgroup the OOM killer has killed.
    fn oom_kills(&self, dir: &Path) -> Result<u64, CgroupError>;

    fn fs(&self) -> &dyn CgroupFs;
}

pub(crate) fn read(fs: &dyn CgroupFs, path: &Path) -> Result<String, CgroupError> {
    fs.read(path).map_err(|e| CgroupError::Read {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

pub(crate) fn write(fs: &dyn CgroupFs, path: &Path, value: &str) -> Result<(), CgroupError> {
    fs.write(path, value).map_err(|e| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source: e.into(),
    })
}

/// A number, or `max` for unlimited (`None`).
pub(crate) fn parse_max(path: &Path, text: &str) -> Result<Option<u64>, CgroupError> {
    match text.trim() {
        "max" => Ok(None),
        t => t.parse().map(Some).map_err(|_| CgroupError::Unexpected {
            path: path.to_path_buf(),
            content: text.to_string(),
            expected: "a number or \"max\"",
        }),
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines), as
/// `memory.events` and v1 `memory.oom_control` are.
pub(crate) fn keyed(path: &Path, text: &str, key: &'static str) -> Result<u64, CgroupError> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| CgroupError::Unexpected {
            path: path.to_path_buf(),
            content: text.to_string(),
            expected: key,
        })
}

/// Creates `root` and its missing ancestors below `mount`, top down.
pub(crate) fn mkdir_below(fs: &dyn CgroupFs, mount: &Path, root: &Path) -> Result<(), CgroupError> {
    for dir in levels_below(mount, root) {
        if fs.is_dir(&dir) {
            continue;
        }
        match fs.mkdir(&dir) {
            // Another helper won the race; fine.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(CgroupError::Mkdir {
                    path: dir,
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// The directories from just below `mount` down to `root`, top down;
/// empty when `root` is the mount point itself.
pub(crate) fn levels_below(mount: &Path, root: &Path) -> Vec<PathBuf> {
    let Ok(rel) = root.strip_prefix(mount) else {
        return Vec::new();
    };
    let mut cur = mount.to_path_buf();
    rel.components()
        .map(|c| {
            cur.push(c);
            cur.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeKernel, Fixture};
    use super::*;

    #[test]
    fn roots_under_each_mount() {
        let root = Path::new("/sys/fs/cgroup/execgo-runtime");
        assert_eq!(
            root_under(Path::new("/sys/fs/cgroup"), root),
            PathBuf::from("/sys/fs/cgroup/execgo-runtime")
        );
        assert_eq!(
            root_under(Path::new("/sys/fs/cgroup/memory"), root),
            PathBuf::from("/sys/fs/cgroup/memory/execgo-runtime")
        );
        assert_eq!(
            root_under(Path::new("/sys/fs/cgroup/unified"), root),
            PathBuf::from("/sys/fs/cgroup/unified/execgo-runtime")
        );
        assert_eq!(
            root_under(
                Path::new("/sys/fs/cgroup/memory"),
                Path::new("/sys/fs/cgroup/memory/a/b")
            ),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            levels_below(Path::new("/m"), Path::new("/m/a/b")),
            [PathBuf::from("/m/a"), PathBuf::from("/m/a/b")]
        );
        assert!(levels_below(Path::new("/m"), Path::new("/m")).is_empty());
    }

    #[test]
    fn detects_a_pure_v2_host() {
        let f = Fixture::v2(&["cpuset", "cpu", "io", "memory", "pids"]);
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        assert_eq!(layout.version(), CgroupVersion::V2);
        assert!(layout.v1.is_empty());
        let u = layout.unified.as_ref().unwrap();
        assert_eq!(u.mount_point, f.path("cgroup"));
        for c in Controller::ALL {
            assert_eq!(layout.serving(c), Some(CgroupVersion::V2));
            let b = layout.backend(c, &f.path("cgroup/execgo-runtime"), &f.kernel);
            let b = b.unwrap();
            assert_eq!(b.version(), CgroupVersion::V2);
            assert_eq!(b.root(), f.path("cgroup/execgo-runtime"));
        }
    }

    #[test]
    fn detects_a_hybrid_host_like_the_development_machines() {
        let f = Fixture::hybrid();
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        assert_eq!(layout.version(), CgroupVersion::Hybrid);
        assert_eq!(layout.unified.as_ref().unwrap().controllers, ["hugetlb"]);
        // name=systemd has no controller and is not listed.
        let points: Vec<_> = layout.v1.iter().map(|h| h.mount_point.clone()).collect();
        assert!(!points.contains(&f.path("cgroup/systemd")), "{points:?}");
        let root = f.path("cgroup/execgo-runtime");
        for (c, dir) in [
            (Controller::Memory, "cgroup/memory/execgo-runtime"),
            (Controller::Pids, "cgroup/pids/execgo-runtime"),
            (Controller::Cpu, "cgroup/cpu/execgo-runtime"),
        ] {
            assert_eq!(layout.serving(c), Some(CgroupVersion::V1));
            let b = layout.backend(c, &root, &f.kernel).unwrap();
            assert_eq!(b.version(), CgroupVersion::V1);
            assert_eq!(b.root(), f.path(dir));
        }
    }

    #[test]
    fn detects_v1_only_and_nothing() {
        let f = Fixture::v1_only();
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        assert_eq!(layout.version(), CgroupVersion::V1);
        assert_eq!(layout.serving(Controller::Pids), None);
        // cpu co-mounted with cpuacct, and the same hierarchy bind-mounted
        // a second time: the first mount point serves.
        let b = layout
            .backend(Controller::Cpu, Path::new("/etc/execgo"), &f.kernel)
            .unwrap();
        assert_eq!(b.root(), f.path("cgroup/cpu,cpuacct/execgo"));
        assert_eq!(layout.v1.len(), 2);

        let f = Fixture::none();
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        assert_eq!(layout.version(), CgroupVersion::None);
        assert!(layout
            .backend(Controller::Memory, Path::new("/x/y"), &f.kernel)
            .is_none());
    }

    #[test]
    fn a_missing_mounts_file_is_an_error() {
        let e = Layout::detect(Path::new("/nonexistent/mountinfo"), &FakeKernel::default())
            .unwrap_err();
        assert_eq!(
            crate::logging::chain(&e),
            "reading /nonexistent/mountinfo: no such file or directory"
        );
    }

    #[test]
    fn keyed_and_max_values() {
        let p = Path::new("/x");
        assert_eq!(parse_max(p, "max\n").unwrap(), None);
        assert_eq!(parse_max(p, "64\n").unwrap(), Some(64));
        assert!(parse_max(p, "lots").is_err());
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n";
        assert_eq!(keyed(p, events, "oom_kill").unwrap(), 1);
        assert_eq!(keyed(p, events, "oom").unwrap(), 2);
        assert!(keyed(p, "oom_kill_disable 0\n", "oom_kill").is_err());
    }
}
