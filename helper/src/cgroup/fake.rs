//! Test fixtures: a fake cgroup kernel over a tempdir and mountinfo texts
//! describing it. [`FakeKernel`] does what cgroupfs does on the calls the
//! backends make: mkdir fills a new cgroup with its controllers' files
//! (v2: those its parent enabled in `cgroup.subtree_control`; v1: those of
//! the hierarchy), rmdir removes them and refuses a cgroup with children,
//! writes go only to existing files and `+ctrl` in `cgroup.subtree_control`
//! needs the controller in `cgroup.controllers`. Unit tests never touch the
//! real /sys/fs/cgroup.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::CgroupFs;
use crate::os_error::OsError;

/// The kernel's order of v2 controllers in `cgroup.controllers`.
const V2_ORDER: [&str; 8] = [
    "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc",
];

#[derive(Debug, Clone)]
enum Kind {
    V1(Vec<String>),
    V2,
}

#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    mounts: Vec<(PathBuf, Kind)>,
    /// mkdir of these paths fails with EACCES, as for an unprivileged user.
    pub deny_mkdir: Vec<PathBuf>,
    /// rmdir of these paths fails with EBUSY.
    pub busy: Vec<PathBuf>,
}

fn io(e: std::io::Error) -> Errno {
    OsError::from_io(&e).0
}

fn put(dir: &Path, name: &str, content: &str) {
    std::fs::write(dir.join(name), content).unwrap();
}

/// The files a new cgroup gets for controller `c`, with their defaults.
fn controller_files(dir: &Path, v2: bool, c: &str) {
    match (v2, c) {
        (true, "memory") => {
            put(dir, "memory.max", "max\n");
            put(
                dir,
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            );
        }
        (true, "cpu") => put(dir, "cpu.max", "max 100000\n"),
        (false, "memory") => {
            put(dir, "memory.limit_in_bytes", "9223372036854771712\n");
            put(
                dir,
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            );
        }
        (false, "cpu") => {
            put(dir, "cpu.cfs_quota_us", "-1\n");
            put(dir, "cpu.cfs_period_us", "100000\n");
        }
        (_, "pids") => put(dir, "pids.max", "max\n"),
        _ => {}
    }
}

impl FakeKernel {
    /// Mounts a v1 hierarchy with `controllers` at `path`.
    pub fn mount_v1(&mut self, path: &Path, controllers: &[&str]) {
        std::fs::create_dir_all(path).unwrap();
        put(path, "cgroup.procs", "");
        put(path, "tasks", "");
        let list: Vec<String> = controllers.iter().map(|c| c.to_string()).collect();
        for c in &list {
            controller_files(path, false, c);
        }
        self.mounts.push((path.to_path_buf(), Kind::V1(list)));
    }

    /// Mounts the v2 hierarchy at `path`, offering `controllers`.
    pub fn mount_v2(&mut self, path: &Path, controllers: &[&str]) {
        std::fs::create_dir_all(path).unwrap();
        put(path, "cgroup.procs", "");
        put(
            path,
            "cgroup.controllers",
            &format!("{}\n", controllers.join(" ")),
        );
        put(path, "cgroup.subtree_control", "\n");
        self.mounts.push((path.to_path_buf(), Kind::V2));
    }

    fn kind_of(&self, path: &Path) -> Option<&Kind> {
        self.mounts
            .iter()
            .filter(|(m, _)| path.starts_with(m))
            .max_by_key(|(m, _)| m.components().count())
            .map(|(_, k)| k)
    }

    fn write_subtree_control(&self, path: &Path, value: &str) -> Result<(), Errno> {
        let dir = path.parent().ok_or(Errno::EINVAL)?;
        let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(io)?;
        let current = std::fs::read_to_string(path).map_err(io)?;
        let mut on: Vec<String> = current.split_whitespace().map(str::to_string).collect();
        for tok in value.split_whitespace() {
            let (add, name) = match tok.split_at(1) {
                ("+", n) => (true, n),
                ("-", n) => (false, n),
                _ => return Err(Errno::EINVAL),
            };
            if !offered.split_whitespace().any(|c| c == name) {
                return Err(Errno::ENOENT);
            }
            on.retain(|c| c != name);
            if add {
                on.push(name.to_string());
            }
        }
        on.sort_by_key(|c| V2_ORDER.iter().position(|o| o == c));
        let list = format!("{}\n", on.join(" "));
        std::fs::write(path, &list).map_err(io)?;
        // The children's cgroup.controllers follow, and they get the
        // files of what was just enabled.
        for e in std::fs::read_dir(dir).map_err(io)? {
            let child = e.map_err(io)?.path();
            if child.is_dir() {
                put(&child, "cgroup.controllers", &list);
                for c in &on {
                    if !child.join(format!("{c}.max")).exists() {
                        controller_files(&child, true, c);
                    }
                }
            }
        }
        Ok(())
    }
}

impl CgroupFs for FakeKernel {
    fn mkdir(&self, path: &Path) -> Result<(), Errno> {
        if self.deny_mkdir.iter().any(|d| d == path) {
            return Err(Errno::EACCES);
        }
        std::fs::create_dir(path).map_err(io)?;
        put(path, "cgroup.procs", "");
        match self.kind_of(path) {
            Some(Kind::V2) => {
                let parent = path.parent().ok_or(Errno::EINVAL)?;
                let enabled =
                    std::fs::read_to_string(parent.join("cgroup.subtree_control")).map_err(io)?;
                put(path, "cgroup.controllers", &enabled);
                put(path, "cgroup.subtree_control", "\n");
                for c in enabled.split_whitespace() {
                    controller_files(path, true, c);
                }
            }
            Some(Kind::V1(list)) => {
                put(path, "tasks", "");
                for c in list {
                    controller_files(path, false, c);
                }
            }
            None => {}
        }
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> Result<(), Errno> {
        if self.busy.iter().any(|d| d == path) {
            return Err(Errno::EBUSY);
        }
        let mut files = Vec::new();
        for e in std::fs::read_dir(path).map_err(io)? {
            let e = e.map_err(io)?;
            if e.file_type().map_err(io)?.is_dir() {
                return Err(Errno::EBUSY);
            }
            files.push(e.path());
        }
        for f in files {
            std::fs::remove_file(f).map_err(io)?;
        }
        std::fs::remove_dir(path).map_err(io)
    }

    fn read(&self, path: &Path) -> Result<String, Errno> {
        std::fs::read_to_string(path).map_err(io)
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Errno> {
        if !path.is_file() {
            return Err(Errno::ENOENT);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name {
            "cgroup.subtree_control" => self.write_subtree_control(path, value),
            "cpu.max" => {
                let current = std::fs::read_to_string(path).map_err(io)?;
                let mut parts = value.split_whitespace();
                let quota = parts.next().ok_or(Errno::EINVAL)?;
                let period = parts
                    .next()
                    .or_else(|| current.split_whitespace().nth(1))
                    .ok_or(Errno::EINVAL)?;
                std::fs::write(path, format!("{quota} {period}\n")).map_err(io)
            }
            _ => {
                let v = value.trim();
                if v != "max" && v.parse::<i64>().is_err() {
                    return Err(Errno::EINVAL);
                }
                std::fs::write(path, format!("{v}\n")).map_err(io)
            }
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// A tempdir holding a fake cgroup tree under `cgroup/` and a mountinfo
/// file (`mountinfo`) describing it.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub mounts: PathBuf,
    pub kernel: FakeKernel,
}

impl Fixture {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn build(lines: &[(&str, &str, &str)], setup: impl FnOnce(&Path, &mut FakeKernel)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = String::from(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n",
        );
        for (i, (point, fs_type, opts)) in lines.iter().enumerate() {
            let mp = tmp.path().join(point);
            text.push_str(&format!(
                "{id} 31 0:{id} / {mp} rw,nosuid,nodev,noexec,relatime shared:{id} - {fs_type} {fs_type} {opts}\n",
                id = 40 + i,
                mp = mp.display(),
            ));
        }
        let mounts = tmp.path().join("mountinfo");
        std::fs::write(&mounts, text).unwrap();
        let mut kernel = FakeKernel::default();
        setup(tmp.path(), &mut kernel);
        Fixture {
            tmp,
            mounts,
            kernel,
        }
    }

    /// A pure cgroup v2 host: the unified hierarchy at `cgroup/`, offering
    /// `controllers`.
    pub fn v2(controllers: &[&str]) -> Self {
        let controllers: Vec<&str> = controllers.to_vec();
        Fixture::build(&[("cgroup", "cgroup2", "rw,nsdelegate")], |t, k| {
            k.mount_v2(&t.join("cgroup"), &controllers)
        })
    }

    /// A hybrid host like the development machines: every v1 controller in
    /// its own hierarchy (memory, pids and cpu among them), systemd's named
    /// hierarchy, and a v2 mount at `cgroup/unified` offering only hugetlb.
    pub fn hybrid() -> Self {
        let v1 = [
            "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        ];
        let mut lines: Vec<(String, &str, String)> =
            vec![("cgroup".into(), "tmpfs", "rw,mode=755".into())];
        for c in v1 {
            lines.push((format!("cgroup/{c}"), "cgroup", format!("rw,{c}")));
        }
        lines.push((
            "cgroup/systemd".into(),
            "cgroup",
            "rw,xattr,name=systemd".into(),
        ));
        lines.push(("cgroup/unified".into(), "cgroup2", "rw".into()));
        let refs: Vec<(&str, &str, &str)> = lines
            .iter()
            .map(|(a, b, c)| (a.as_str(), *b, c.as_str()))
            .collect();
        Fixture::build(&refs, |t, k| {
            for c in v1 {
                k.mount_v1(&t.join(format!("cgroup/{c}")), &[c]);
            }
            k.mount_v1(&t.join("cgroup/systemd"), &[]);
            k.mount_v2(&t.join("cgroup/unified"), &["hugetlb"]);
        })
    }

    /// A v1-only host: cpu co-mounted with cpuacct (and bind-mounted a
    /// second time elsewhere), memory, no pids, no v2 mount.
    pub fn v1_only() -> Self {
        Fixture::build(
            &[
                ("cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
                ("cgroup/memory", "cgroup", "rw,memory"),
                ("other/cpu", "cgroup", "rw,cpu,cpuacct"),
                ("cgroup/systemd", "cgroup", "rw,name=systemd"),
            ],
            |t, k| {
                k.mount_v1(&t.join("cgroup/cpu,cpuacct"), &["cpu", "cpuacct"]);
                k.mount_v1(&t.join("cgroup/memory"), &["memory"]);
                k.mount_v1(&t.join("other/cpu"), &["cpu", "cpuacct"]);
                k.mount_v1(&t.join("cgroup/systemd"), &[]);
            },
        )
    }

    /// No cgroup mounted at all.
    pub fn none() -> Self {
        Fixture::build(&[], |_, _| {})
    }
}
