//! Task cgroups inside the helper unit's own cgroup, as systemd's cgroup
//! delegation asks of a service that manages cgroups
//! (<https://systemd.io/CGROUP_DELEGATION/>, systemd.resource-control(5)
//! `Delegate=`): `--cgroup-root delegated`.
//!
//! With `Delegate=yes` systemd hands the unit's cgroup `U` (say
//! `/system.slice/execgo-runtime-helper.service`) to the service, in the
//! unified hierarchy and in every v1 hierarchy whose controller systemd
//! manages (cpu, cpuacct, blkio, memory, devices, pids), all at the same
//! path. v1 controllers systemd does not manage (freezer, cpuset, ...) are
//! "up for grabs": the service is at the root there, and the document asks
//! for the same path to be replicated. So, per mounted hierarchy, from
//! `/proc/self/cgroup`:
//!
//! * our cgroup is `U` or `U/supervisor`: delegated, the base is
//!   `<mount>/U`;
//! * our cgroup is `/`: a hierarchy systemd leaves alone, `U` is made
//!   there (the base again `<mount>/U`);
//! * anything else: not ours; the hierarchy is not used.
//!
//! The helper then moves itself into `<base>/supervisor` everywhere
//! ([`Delegation::enter_supervisor`]) before it probes or serves: v2's "no
//! internal processes" rule forbids enabling controllers in
//! `U/cgroup.subtree_control` while `U` holds a process. The shims it forks
//! stay in `supervisor` with it; task cgroups go in `<base>/<scope>/<id>`,
//! siblings of `supervisor`. A restarted helper finds `supervisor` (and the
//! old shims in it) and joins it again.
//!
//! One case cannot be made restart-safe before systemd 254: the unified
//! hierarchy serving the task controllers (a pure v2 host) with the helper
//! started in `U` itself. Once `U` enables controllers for its children,
//! the kernel refuses any process in `U` (EBUSY), and systemd starts a
//! restarted helper in `U`: the restart would fail while tasks run.
//! `DelegateSubgroup=supervisor` (systemd ≥ 254) starts the helper in
//! `U/supervisor` instead; without it, [`choose`] keeps the default root
//! and says why. Hybrid and v1 hosts are safe: v1 has no such rule, and in
//! hybrid mode systemd ignores a failed attach to the unified hierarchy.

use std::path::{Path, PathBuf};

use super::mountinfo::{self, Mount};
use super::{mkdir_below, CgroupError, CgroupFs, Controller, Layout, TaskRoot, V1_CONTROLLERS};
use crate::os_error::OsError;

/// The sub-cgroup the helper (and its shims) live in.
pub const SUPERVISOR: &str = "supervisor";

/// The v1 controllers task cgroups use (see `task.rs`).
const TASK_V1: [&str; 4] = ["memory", "pids", "cpu", "freezer"];

/// The `--cgroup-root` value that asks for delegated placement.
pub const DELEGATED: &str = "delegated";

/// Where `--cgroup-root delegated` falls back to when delegation cannot
/// be used safely (the default `--cgroup-root`).
pub const FALLBACK_ROOT: &str = "/sys/fs/cgroup/execgo-runtime";

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("reading {path}")]
    Read {
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
    #[error("{path}: line {line}: not \"ID:CONTROLLERS:PATH\"")]
    ProcSyntax { path: PathBuf, line: usize },
    #[error("{path} names no cgroup of systemd's hierarchy (neither \"name=systemd\" nor the unified one)")]
    NoUnitHierarchy { path: PathBuf },
    #[error("--cgroup-root delegated: the helper's cgroup is the root cgroup, so nothing is delegated to it; run it as a systemd service with Delegate=yes, or give --cgroup-root a path")]
    RootCgroup,
    #[error("--cgroup-root delegated: the helper's cgroup {unit} is not a systemd service's or scope's; run it as a systemd service with Delegate=yes, or give --cgroup-root a path")]
    NotAUnit { unit: String },
    #[error("--cgroup-root delegated: none of the mounted cgroup hierarchies shows the helper's cgroup {unit}")]
    NotMounted { unit: String },
}

/// One line of `/proc/<pid>/cgroup` (cgroups(7)): `ID:CONTROLLERS:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// v1: the hierarchy's controllers (`memory`, `cpu,cpuacct`,
    /// `name=systemd`); empty for the unified hierarchy (`0::PATH`).
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses the text of `/proc/self/cgroup`; `file` names it in errors.
pub fn parse_proc_cgroup(text: &str, file: &Path) -> Result<Vec<Membership>, DelegateError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = || DelegateError::ProcSyntax {
                path: file.to_path_buf(),
                line: i + 1,
            };
            // The path may itself hold ':'; the first two fields may not.
            let mut parts = l.splitn(3, ':');
            let (Some(id), Some(list), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            if id.parse::<u32>().is_err() || !path.starts_with('/') {
                return Err(bad());
            }
            let controllers = list
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Ok(Membership {
                controllers,
                path: path.to_string(),
            })
        })
        .collect()
}

/// How we came to own a hierarchy's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// systemd put us in the unit's cgroup there.
    Delegated,
    /// systemd leaves the hierarchy alone (we were at its root); the
    /// unit's path is replicated.
    Replicated,
}

/// The unit's cgroup in one mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// `<mount point>/<unit cgroup>`: the parent of `supervisor` and of the
    /// task cgroups' scope.
    pub base: PathBuf,
    pub ownership: Ownership,
    /// The v1 controllers (or `name=...`); empty for the unified one.
    pub controllers: Vec<String>,
}

/// The helper's delegated cgroup, in every hierarchy it can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The unit's cgroup path, e.g.
    /// `/system.slice/execgo-runtime-helper.service`.
    pub unit: String,
    /// systemd started the helper in `<unit>/supervisor` already
    /// (`DelegateSubgroup=supervisor`, systemd ≥ 254).
    pub started_in_supervisor: bool,
    pub hierarchies: Vec<Hierarchy>,
    /// Mounted hierarchies left out, each with the reason.
    pub skipped: Vec<String>,
}

impl Delegation {
    /// Reads `proc_cgroup` (`/proc/self/cgroup`) and `mounts`
    /// (`/proc/self/mountinfo`).
    pub fn detect(proc_cgroup: &Path, mounts: &Path) -> Result<Delegation, DelegateError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| DelegateError::Read {
                path: path.to_path_buf(),
                source: OsError::from_io(&e),
            })
        };
        let memberships = parse_proc_cgroup(&read(proc_cgroup)?, proc_cgroup)?;
        let parsed =
            mountinfo::parse(&read(mounts)?).map_err(|source| DelegateError::MountsSyntax {
                path: mounts.to_path_buf(),
                source,
            })?;
        Delegation::resolve(&memberships, &parsed, proc_cgroup)
    }

    /// The pure part of [`Delegation::detect`].
    pub fn resolve(
        memberships: &[Membership],
        mounts: &[Mount],
        proc_cgroup: &Path,
    ) -> Result<Delegation, DelegateError> {
        // systemd's own view of the unit: its named hierarchy on hybrid and
        // v1 hosts, else the unified one.
        let unit_line = memberships
            .iter()
            .find(|m| m.controllers == ["name=systemd"])
            .or_else(|| memberships.iter().find(|m| m.controllers.is_empty()))
            .ok_or_else(|| DelegateError::NoUnitHierarchy {
                path: proc_cgroup.to_path_buf(),
            })?;
        let (unit, started_in_supervisor) = split_supervisor(&unit_line.path);
        if unit == "/" {
            return Err(DelegateError::RootCgroup);
        }
        let last = unit.rsplit('/').next().unwrap_or("");
        if !(last.ends_with(".service") || last.ends_with(".scope")) {
            return Err(DelegateError::NotAUnit {
                unit: unit.to_string(),
            });
        }
        let mut d = Delegation {
            unit: unit.to_string(),
            started_in_supervisor,
            hierarchies: Vec::new(),
            skipped: Vec::new(),
        };
        // The hierarchies met so far (their controllers; empty: unified),
        // used or not: the first mount of each serves, as in Layout.
        let mut met: Vec<Vec<String>> = Vec::new();
        for m in mounts {
            let controllers: Vec<String> = match m.fs_type.as_str() {
                "cgroup2" => Vec::new(),
                "cgroup" => m
                    .super_options
                    .iter()
                    .filter(|o| V1_CONTROLLERS.contains(&o.as_str()) || o.starts_with("name="))
                    .cloned()
                    .collect(),
                _ => continue,
            };
            let v2 = m.fs_type == "cgroup2";
            let seen = met.iter().any(|h| {
                (v2 && h.is_empty()) || (!v2 && h.iter().any(|c| controllers.contains(c)))
            });
            if seen || (!v2 && controllers.is_empty()) {
                continue;
            }
            met.push(controllers.clone());
            let Some(ours) = memberships
                .iter()
                .find(|x| same_set(&x.controllers, &controllers))
            else {
                continue;
            };
            let point = m.mount_point.display();
            // A mount of a subtree shows paths below its root only.
            let (Some(own), Some(unit_rel)) = (
                strip_root(&ours.path, &m.root),
                strip_root(&d.unit, &m.root),
            ) else {
                d.skipped.push(format!(
                    "{point}: mounted from {}, which does not hold {}",
                    m.root, d.unit
                ));
                continue;
            };
            let (own_unit, _) = split_supervisor(&ours.path);
            // Replicated only where tasks need it: a fresh v1 cpuset
            // cgroup, say, has no CPUs and would refuse the helper.
            let task_hierarchy = controllers.iter().any(|c| TASK_V1.contains(&c.as_str()));
            let ownership = if own_unit == d.unit {
                Ownership::Delegated
            } else if own == "/" && task_hierarchy {
                Ownership::Replicated
            } else if own == "/" {
                continue;
            } else {
                d.skipped.push(format!(
                    "{point}: the helper is in {}, not in {}",
                    ours.path, d.unit
                ));
                continue;
            };
            d.hierarchies.push(Hierarchy {
                mount_point: m.mount_point.clone(),
                base: m.mount_point.join(unit_rel.trim_start_matches('/')),
                ownership,
                controllers,
            });
        }
        if !d
            .hierarchies
            .iter()
            .any(|h| h.ownership == Ownership::Delegated)
        {
            return Err(DelegateError::NotMounted { unit: d.unit });
        }
        Ok(d)
    }

    /// The base for the hierarchy mounted at `mount`, if it is one of ours.
    pub fn base(&self, mount: &Path) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.mount_point == mount)
            .map(|h| h.base.as_path())
    }

    /// Moves the process `pid` (all its threads: `cgroup.procs`) into
    /// `<base>/supervisor` in every hierarchy, creating what is missing
    /// (`supervisor` exists after a restart, with the old shims in it).
    /// Replicated bases are created from the mount point down.
    pub fn enter_supervisor(&self, pid: u32, fs: &dyn CgroupFs) -> Result<(), CgroupError> {
        for h in &self.hierarchies {
            if h.ownership == Ownership::Replicated {
                mkdir_below(fs, &h.mount_point, &h.base)?;
            }
            let dir = h.base.join(SUPERVISOR);
            mkdir_below(fs, &h.base, &dir)?;
            super::write(fs, &dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Whether the unified hierarchy would need controllers enabled in the
    /// unit's cgroup while systemd starts the helper in it (see the module
    /// header).
    fn restart_unsafe(&self, layout: &Layout) -> bool {
        if self.started_in_supervisor {
            return false;
        }
        layout.unified.as_ref().is_some_and(|u| {
            self.base(&u.mount_point).is_some() && Controller::ALL.iter().any(|c| u.has(*c))
        })
    }
}

/// `path` without a trailing `/supervisor`, and whether it had one.
fn split_supervisor(path: &str) -> (&str, bool) {
    match path.strip_suffix(SUPERVISOR) {
        Some(rest) if rest.ends_with('/') && rest.len() > 1 => (&rest[..rest.len() - 1], true),
        _ => (path, false),
    }
}

/// `path` relative to a mount's `root` (still starting with `/`), if it
/// lies below it.
fn strip_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    match rest {
        "" => Some("/"),
        r if r.starts_with('/') => Some(r),
        _ => None,
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Decides the task root for `--cgroup-root delegated` on this `layout`:
/// the delegation, or the default root with the reason when a restart
/// would not survive it (see the module header).
pub fn choose(delegation: Delegation, layout: &Layout) -> (TaskRoot, Option<String>) {
    if delegation.restart_unsafe(layout) {
        let why = format!(
            "--cgroup-root delegated: the unified hierarchy serves the task controllers, and systemd started the helper in {unit} itself, not in {unit}/{SUPERVISOR}: a helper restart with tasks running would fail (the kernel refuses a process in a cgroup that enables controllers for its children); task cgroups stay under {FALLBACK_ROOT}. With systemd >= 254, add DelegateSubgroup={SUPERVISOR} to the unit",
            unit = delegation.unit
        );
        return (TaskRoot::Path(PathBuf::from(FALLBACK_ROOT)), Some(why));
    }
    (TaskRoot::Delegated(delegation), None)
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fixture;
    use super::super::task::{Need, Placement};
    use super::*;

    const UNIT: &str = "/system.slice/execgo-runtime-helper.service";

    /// /proc/self/cgroup of a helper started by systemd 252 on a hybrid
    /// host with Delegate=yes: in the unit's cgroup in systemd's and the
    /// managed v1 hierarchies, at the root of cpuset and freezer.
    fn hybrid_proc(unit_path: &str) -> String {
        format!(
            "13:cpuset:/\n12:freezer:/\n11:pids:{u}\n10:blkio:{u}\n9:devices:{u}\n\
             8:memory:{u}\n7:cpuacct:{u}\n6:cpu:{u}\n1:name=systemd:{u}\n0::{u}\n",
            u = unit_path
        )
    }

    fn resolve_on(f: &Fixture, proc_text: &str) -> Result<Delegation, DelegateError> {
        let file = Path::new("/proc/self/cgroup");
        let memberships = parse_proc_cgroup(proc_text, file)?;
        let text = std::fs::read_to_string(&f.mounts).unwrap();
        let mounts = mountinfo::parse(&text).unwrap();
        Delegation::resolve(&memberships, &mounts, file)
    }

    /// Makes `rel` (a cgroup path) in the hierarchy at `mount`, top down,
    /// as systemd does for the unit.
    fn make_unit(f: &Fixture, mount: &str, rel: &str) -> PathBuf {
        let mut dir = f.path(mount);
        for c in rel.trim_start_matches('/').split('/') {
            dir.push(c);
            if !dir.is_dir() {
                f.kernel.mkdir(&dir).unwrap();
            }
        }
        dir
    }

    #[test]
    fn parses_proc_self_cgroup() {
        let file = Path::new("/proc/self/cgroup");
        let m = parse_proc_cgroup("4:cpu,cpuacct:/a:b\n1:name=systemd:/x\n0::/\n", file).unwrap();
        assert_eq!(m[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[0].path, "/a:b");
        assert_eq!(m[1].controllers, ["name=systemd"]);
        assert!(m[2].controllers.is_empty());
        assert_eq!(m[2].path, "/");
        for (bad, line) in [("0:/x\n", 1), ("\nx::/a\n", 2), ("0::relative\n", 1)] {
            let e = parse_proc_cgroup(bad, file).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("/proc/self/cgroup: line {line}: not \"ID:CONTROLLERS:PATH\""),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn supervisor_suffix_and_mount_roots() {
        assert_eq!(
            split_supervisor("/a.service/supervisor"),
            ("/a.service", true)
        );
        assert_eq!(split_supervisor("/a.service"), ("/a.service", false));
        assert_eq!(
            split_supervisor("/a.service/xsupervisor"),
            ("/a.service/xsupervisor", false)
        );
        assert_eq!(split_supervisor("/supervisor"), ("/supervisor", false));
        assert_eq!(strip_root("/a/b", "/"), Some("/a/b"));
        assert_eq!(strip_root("/a/b", "/a"), Some("/b"));
        assert_eq!(strip_root("/a", "/a"), Some("/"));
        assert_eq!(strip_root("/ab", "/a"), None);
        assert_eq!(strip_root("/x", "/a"), None);
    }

    #[test]
    fn a_hybrid_host_under_systemd_252() {
        let f = Fixture::hybrid();
        let d = resolve_on(&f, &hybrid_proc(UNIT)).unwrap();
        assert_eq!(d.unit, UNIT);
        assert!(!d.started_in_supervisor);
        let rel = UNIT.trim_start_matches('/');
        let got: Vec<(PathBuf, Ownership)> = d
            .hierarchies
            .iter()
            .map(|h| (h.base.clone(), h.ownership))
            .collect();
        let want: Vec<(PathBuf, Ownership)> = [
            ("cpu", Ownership::Delegated),
            ("cpuacct", Ownership::Delegated),
            ("memory", Ownership::Delegated),
            ("devices", Ownership::Delegated),
            // systemd leaves freezer alone: the unit's path is replicated;
            // cpuset (no task uses it) is not touched.
            ("freezer", Ownership::Replicated),
            ("blkio", Ownership::Delegated),
            ("pids", Ownership::Delegated),
            ("systemd", Ownership::Delegated),
            ("unified", Ownership::Delegated),
        ]
        .into_iter()
        .map(|(h, o)| (f.path(&format!("cgroup/{h}/{rel}")), o))
        .collect();
        assert_eq!(got, want);
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);

        // Hybrid: the unified hierarchy serves none of the task
        // controllers, so a restart is safe.
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let (root, warning) = choose(d.clone(), &layout);
        assert_eq!(warning, None);
        assert_eq!(root, TaskRoot::Delegated(d.clone()));

        // systemd made the unit's cgroup in the hierarchies it manages.
        for h in [
            "cpu", "cpuacct", "memory", "devices", "blkio", "pids", "systemd", "unified",
        ] {
            make_unit(&f, &format!("cgroup/{h}"), UNIT);
        }
        d.enter_supervisor(4242, &f.kernel).unwrap();
        for h in &d.hierarchies {
            let procs = h.base.join("supervisor/cgroup.procs");
            assert_eq!(
                std::fs::read_to_string(&procs).unwrap().trim(),
                "4242",
                "{}",
                procs.display()
            );
        }
        assert!(!f.path("cgroup/cpuset/system.slice").exists());

        // Task cgroups: siblings of supervisor, in a scope directory.
        let (p, warnings) = Placement::prepare(&layout, &root, "d-1", &f.kernel);
        assert!(warnings.is_empty(), "{warnings:?}");
        let p = p.unwrap();
        let roots: Vec<PathBuf> = p.roots.iter().map(|r| r.root.clone()).collect();
        assert_eq!(
            roots,
            ["memory", "pids", "cpu", "freezer"].map(|h| f.path(&format!("cgroup/{h}/{rel}/d-1")))
        );
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
        assert_eq!(
            cg.dirs(),
            ["memory", "pids", "freezer"].map(|h| f.path(&format!("cgroup/{h}/{rel}/d-1/t-1")))
        );

        // A restart: systemd starts the new helper in the unit's cgroup
        // again; supervisor is there (the old shims in it), and the task
        // cgroups are found where they were.
        let again = resolve_on(&f, &hybrid_proc(UNIT)).unwrap();
        assert_eq!(again, d);
        again.enter_supervisor(4343, &f.kernel).unwrap();
        let swept = p.sweep(|id| id == "t-1", &f.kernel);
        assert!(swept.is_empty(), "{swept:?}");
        assert!(cg.remove(&f.kernel).is_empty());
        p.remove_empty_roots(&f.kernel);
        assert!(!f.path(&format!("cgroup/memory/{rel}/d-1")).exists());
        assert!(f.path(&format!("cgroup/memory/{rel}/supervisor")).is_dir());
    }

    #[test]
    fn started_in_supervisor_by_delegate_subgroup() {
        let f = Fixture::hybrid();
        let d = resolve_on(&f, &hybrid_proc(&format!("{UNIT}/supervisor"))).unwrap();
        assert_eq!(d.unit, UNIT);
        assert!(d.started_in_supervisor);
        assert_eq!(
            d.base(&f.path("cgroup/memory")),
            Some(f.path(&format!("cgroup/memory{UNIT}")).as_path())
        );
    }

    #[test]
    fn a_pure_v2_host() {
        let f = Fixture::v2(&["cpu", "memory", "pids"]);
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let mount = f.path("cgroup");

        // systemd 252: started in the unit's cgroup itself. Enabling the
        // controllers there would make a restart fail: the default root.
        let d = resolve_on(&f, &format!("0::{UNIT}\n")).unwrap();
        assert_eq!(d.base(&mount), Some(mount.join(&UNIT[1..]).as_path()));
        let (root, warning) = choose(d, &layout);
        assert_eq!(root, TaskRoot::Path(PathBuf::from(FALLBACK_ROOT)));
        let warning = warning.unwrap();
        assert!(warning.contains("DelegateSubgroup=supervisor"), "{warning}");

        // DelegateSubgroup=supervisor: delegated. The controllers are
        // enabled from the unit's cgroup down, which systemd made
        // available to it.
        let d = resolve_on(&f, &format!("0::{UNIT}/supervisor\n")).unwrap();
        let (root, warning) = choose(d.clone(), &layout);
        assert_eq!(warning, None);
        f.kernel
            .write(&mount.join("cgroup.subtree_control"), "+cpu +memory +pids")
            .unwrap();
        let slice = make_unit(&f, "cgroup", "/system.slice");
        f.kernel
            .write(&slice.join("cgroup.subtree_control"), "+cpu +memory +pids")
            .unwrap();
        let unit = make_unit(&f, "cgroup", UNIT);
        d.enter_supervisor(7, &f.kernel).unwrap();
        let (p, warnings) = Placement::prepare(&layout, &root, "d-1", &f.kernel);
        assert!(warnings.is_empty(), "{warnings:?}");
        let p = p.unwrap();
        assert_eq!(p.roots.len(), 1);
        assert_eq!(p.roots[0].root, unit.join("d-1"));
        assert_eq!(
            std::fs::read_to_string(unit.join("cgroup.subtree_control")).unwrap(),
            "cpu memory pids\n"
        );
        let cg = p.create("t", Need::Containment, &f.kernel).unwrap();
        assert_eq!(cg.dirs(), [unit.join("d-1/t")]);
        assert!(unit.join("supervisor").is_dir());
    }

    #[test]
    fn a_v1_only_host() {
        // Legacy mode: no unified mount; the kernel still lists "0::/".
        let f = Fixture::v1_only();
        let text = format!("3:cpu,cpuacct:{UNIT}\n2:memory:{UNIT}\n1:name=systemd:{UNIT}\n0::/\n");
        let d = resolve_on(&f, &text).unwrap();
        assert_eq!(d.unit, UNIT);
        let bases: Vec<PathBuf> = d.hierarchies.iter().map(|h| h.base.clone()).collect();
        // The second mount of the cpu hierarchy is not used.
        assert_eq!(
            bases,
            ["cgroup/cpu,cpuacct", "cgroup/memory", "cgroup/systemd"]
                .map(|m| f.path(&format!("{m}{UNIT}")))
        );
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let (root, warning) = choose(d.clone(), &layout);
        assert_eq!(warning, None);
        for m in ["cgroup/cpu,cpuacct", "cgroup/memory", "cgroup/systemd"] {
            make_unit(&f, m, UNIT);
        }
        d.enter_supervisor(11, &f.kernel).unwrap();
        let (p, warnings) = Placement::prepare(&layout, &root, "d-1", &f.kernel);
        assert!(warnings.is_empty(), "{warnings:?}");
        let roots: Vec<PathBuf> = p.unwrap().roots.iter().map(|r| r.root.clone()).collect();
        assert_eq!(
            roots,
            ["cgroup/memory", "cgroup/cpu,cpuacct"].map(|m| f.path(&format!("{m}{UNIT}/d-1")))
        );
    }

    #[test]
    fn not_delegated_is_a_start_up_error() {
        let f = Fixture::hybrid();
        // Not under systemd at all (a shell, a container's init).
        let e = resolve_on(&f, &hybrid_proc("/")).unwrap_err();
        assert!(matches!(e, DelegateError::RootCgroup), "{e:?}");
        assert!(e.to_string().contains("Delegate=yes"), "{e}");
        // A slice, not a service or scope.
        let e = resolve_on(&f, &hybrid_proc("/user.slice")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cgroup-root delegated: the helper's cgroup /user.slice is not a systemd service's or scope's; run it as a systemd service with Delegate=yes, or give --cgroup-root a path"
        );
        // Neither systemd's hierarchy nor the unified one listed.
        let e = resolve_on(&f, "4:memory:/x.service\n").unwrap_err();
        assert!(matches!(e, DelegateError::NoUnitHierarchy { .. }), "{e:?}");
        // Nothing mounted shows the unit.
        let none = Fixture::none();
        let e = resolve_on(&none, &format!("0::{UNIT}\n")).unwrap_err();
        assert!(matches!(e, DelegateError::NotMounted { .. }), "{e:?}");
    }

    #[test]
    fn a_hierarchy_where_the_helper_sits_elsewhere_is_left_out() {
        let f = Fixture::hybrid();
        let text = hybrid_proc(UNIT).replace(&format!("11:pids:{UNIT}"), "11:pids:/other.scope");
        let d = resolve_on(&f, &text).unwrap();
        assert_eq!(d.base(&f.path("cgroup/pids")), None);
        assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
        assert!(d.skipped[0].contains("/other.scope"), "{:?}", d.skipped);
        // The placement then says the pids controller is not delegated.
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        for h in [
            "memory", "cpu", "cpuacct", "devices", "blkio", "systemd", "unified",
        ] {
            make_unit(&f, &format!("cgroup/{h}"), UNIT);
        }
        d.enter_supervisor(9, &f.kernel).unwrap();
        let (p, warnings) = Placement::prepare(&layout, &TaskRoot::Delegated(d), "d-1", &f.kernel);
        assert!(p.is_some());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0]
            .starts_with("task cgroups: pids controller: its hierarchy is not delegated"));
    }

    #[test]
    fn detect_reads_both_files() {
        let f = Fixture::hybrid();
        let proc_file = f.path("proc-cgroup");
        std::fs::write(&proc_file, hybrid_proc(UNIT)).unwrap();
        let d = Delegation::detect(&proc_file, &f.mounts).unwrap();
        assert_eq!(d.unit, UNIT);
        let e = Delegation::detect(&f.path("missing"), &f.mounts).unwrap_err();
        assert_eq!(
            crate::logging::chain(&e),
            format!(
                "reading {}: no such file or directory",
                f.path("missing").display()
            )
        );
    }
}
