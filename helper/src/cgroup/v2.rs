//! cgroup v2, the unified hierarchy (Documentation/admin-guide/cgroup-v2.rst
//! in the kernel tree). One tree serves every controller the mount lists in
//! `cgroup.controllers`; a cgroup has a controller's files only when its
//! parent enabled that controller in `cgroup.subtree_control`, so
//! [`CgroupBackend::prepare`] enables it at every level from the mount
//! point down to the root. (The "no internal processes" rule makes that
//! fail with EBUSY on a level that holds processes, other than the mount
//! point; the warning says so.)

use std::path::{Path, PathBuf};

use execgo_runtime_protocol::CgroupVersion;

use super::{
    keyed, levels_below, mkdir_below, parse_max, read, write, CgroupBackend, CgroupError, CgroupFs,
    Controller,
};

pub struct V2<'a> {
    fs: &'a dyn CgroupFs,
    top: PathBuf,
    root: PathBuf,
}

impl<'a> V2<'a> {
    pub fn new(fs: &'a dyn CgroupFs, top: PathBuf, root: PathBuf) -> Self {
        V2 { fs, top, root }
    }

    /// Adds `c` to `dir/cgroup.subtree_control` unless it is there already.
    fn enable(&self, dir: &Path, c: Controller) -> Result<(), CgroupError> {
        let file = dir.join("cgroup.subtree_control");
        let current = read(self.fs, &file)?;
        if current.split_whitespace().any(|x| x == c.name()) {
            return Ok(());
        }
        write(self.fs, &file, &format!("+{}", c.name()))
    }
}

impl CgroupBackend for V2<'_> {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn prepare(&self, c: Controller) -> Result<(), CgroupError> {
        // Top down: a level can enable only what its parent enabled for it.
        self.enable(&self.top, c)?;
        for dir in levels_below(&self.top, &self.root) {
            mkdir_below(self.fs, &self.top, &dir)?;
            self.enable(&dir, c)?;
        }
        Ok(())
    }

    fn set_memory_max(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
        write(self.fs, &dir.join("memory.max"), &bytes.to_string())
    }

    fn memory_max(&self, dir: &Path) -> Result<Option<u64>, CgroupError> {
        let path = dir.join("memory.max");
        let text = read(self.fs, &path)?;
        parse_max(&path, &text)
    }

    fn set_cpu_quota(&self, dir: &Path, quota_us: u64, period_us: u64) -> Result<(), CgroupError> {
        write(
            self.fs,
            &dir.join("cpu.max"),
            &format!("{quota_us} {period_us}"),
        )
    }

    fn cpu_quota(&self, dir: &Path) -> Result<(Option<u64>, u64), CgroupError> {
        let path = dir.join("cpu.max");
        let text = read(self.fs, &path)?;
        let bad = || CgroupError::Unexpected {
            path: path.clone(),
            content: text.clone(),
            expected: "\"QUOTA PERIOD\" with QUOTA a number or \"max\"",
        };
        let (quota, period) = text.trim().split_once(' ').ok_or_else(bad)?;
        let period = period.parse().map_err(|_| bad())?;
        let quota = parse_max(&path, quota).map_err(|_| bad())?;
        Ok((quota, period))
    }

    fn oom_kills(&self, dir: &Path) -> Result<u64, CgroupError> {
        let path = dir.join("memory.events");
        let text = read(self.fs, &path)?;
        keyed(&path, &text, "oom_kill")
    }

    fn fs(&self) -> &dyn CgroupFs {
        self.fs
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fixture;
    use super::super::Layout;
    use super::*;

    #[test]
    fn prepare_enables_the_controller_at_every_level() {
        let f = Fixture::v2(&["cpu", "memory", "pids"]);
        let root = f.path("cgroup/a/execgo-runtime");
        let b = V2::new(&f.kernel, f.path("cgroup"), root.clone());
        b.prepare(Controller::Memory).unwrap();
        b.prepare(Controller::Pids).unwrap();
        // Twice is harmless.
        b.prepare(Controller::Memory).unwrap();
        for dir in ["cgroup", "cgroup/a", "cgroup/a/execgo-runtime"] {
            let sc = std::fs::read_to_string(f.path(dir).join("cgroup.subtree_control")).unwrap();
            assert_eq!(sc.trim(), "memory pids", "{dir}");
        }
        let child = b.create("probe-1").unwrap();
        assert_eq!(child, root.join("probe-1"));
        assert!(child.join("memory.max").exists());
        assert!(child.join("pids.max").exists());
        assert!(!child.join("cpu.max").exists());
        b.remove(&child).unwrap();
        assert!(!child.exists());
    }

    #[test]
    fn prepare_fails_for_a_controller_the_mount_lacks() {
        let f = Fixture::v2(&["memory"]);
        let b = V2::new(&f.kernel, f.path("cgroup"), f.path("cgroup/x"));
        let e = b.prepare(Controller::Pids).unwrap_err();
        assert_eq!(
            crate::logging::chain(&e),
            format!(
                "writing \"+pids\" to {}: no such file or directory",
                f.path("cgroup/cgroup.subtree_control").display()
            )
        );
    }

    #[test]
    fn limits_read_back() {
        let f = Fixture::v2(&["cpu", "memory", "pids"]);
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let root = f.path("cgroup/execgo-runtime");
        let b = layout
            .backend(Controller::Memory, &root, &f.kernel)
            .unwrap();
        for c in Controller::ALL {
            b.prepare(c).unwrap();
        }
        let d = b.create("t").unwrap();
        assert_eq!(b.memory_max(&d).unwrap(), None);
        b.set_memory_max(&d, 64 << 20).unwrap();
        assert_eq!(b.memory_max(&d).unwrap(), Some(64 << 20));
        assert_eq!(b.pids_max(&d).unwrap(), None);
        b.set_pids_max(&d, 64).unwrap();
        assert_eq!(b.pids_max(&d).unwrap(), Some(64));
        assert_eq!(b.cpu_quota(&d).unwrap(), (None, 100_000));
        b.set_cpu_quota(&d, 50_000, 100_000).unwrap();
        assert_eq!(b.cpu_quota(&d).unwrap(), (Some(50_000), 100_000));
        assert_eq!(b.oom_kills(&d).unwrap(), 0);
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(b.oom_kills(&d).unwrap(), 2);
    }
}
