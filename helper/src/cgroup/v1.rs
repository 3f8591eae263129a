//! cgroup v1 (Documentation/admin-guide/cgroup-v1/ in the kernel tree):
//! one hierarchy per mount, each serving the controllers named in its mount
//! options (`memory`, `pids`, `cpu,cpuacct`, ...). A child cgroup has its
//! controllers' files as soon as it is created, so preparing the root is
//! only creating it. Hybrid hosts mount memory and pids here next to a
//! cgroup v2 mount that serves few controllers or none.

use std::path::{Path, PathBuf};

use execgo_runtime_protocol::CgroupVersion;

use super::{keyed, mkdir_below, read, write, CgroupBackend, CgroupError, CgroupFs, Controller};

/// v1 reports "no memory limit" as the largest page-aligned counter value
/// (`PAGE_COUNTER_MAX` pages: 9223372036854771712 with 4 KiB pages); any
/// value this large means unlimited.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

pub struct V1<'a> {
    fs: &'a dyn CgroupFs,
    top: PathBuf,
    root: PathBuf,
}

impl<'a> V1<'a> {
    pub fn new(fs: &'a dyn CgroupFs, top: PathBuf, root: PathBuf) -> Self {
        V1 { fs, top, root }
    }

    fn number(&self, path: &Path) -> Result<i64, CgroupError> {
        let text = read(self.fs, path)?;
        text.trim().parse().map_err(|_| CgroupError::Unexpected {
            path: path.to_path_buf(),
            content: text.clone(),
            expected: "a number",
        })
    }
}

impl CgroupBackend for V1<'_> {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn prepare(&self, _c: Controller) -> Result<(), CgroupError> {
        mkdir_below(self.fs, &self.top, &self.root)
    }

    fn set_memory_max(&self, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
        write(
            self.fs,
            &dir.join("memory.limit_in_bytes"),
            &bytes.to_string(),
        )
    }

    fn memory_max(&self, dir: &Path) -> Result<Option<u64>, CgroupError> {
        let v = self.number(&dir.join("memory.limit_in_bytes"))?;
        Ok(u64::try_from(v).ok().filter(|v| *v < V1_UNLIMITED_FROM))
    }

    fn set_cpu_quota(&self, dir: &Path, quota_us: u64, period_us: u64) -> Result<(), CgroupError> {
        // Period first: the quota is checked against it.
        write(
            self.fs,
            &dir.join("cpu.cfs_period_us"),
            &period_us.to_string(),
        )?;
        write(
            self.fs,
            &dir.join("cpu.cfs_quota_us"),
            &quota_us.to_string(),
        )
    }

    fn cpu_quota(&self, dir: &Path) -> Result<(Option<u64>, u64), CgroupError> {
        let quota_path = dir.join("cpu.cfs_quota_us");
        let quota = self.number(&quota_path)?;
        let period_path = dir.join("cpu.cfs_period_us");
        let period = self.number(&period_path)?;
        let period = u64::try_from(period).map_err(|_| CgroupError::Unexpected {
            path: period_path,
            content: period.to_string(),
            expected: "a positive number",
        })?;
        // -1: no quota.
        Ok((u64::try_from(quota).ok(), period))
    }

    fn oom_kills(&self, dir: &Path) -> Result<u64, CgroupError> {
        // The oom_kill line exists since Linux 4.13.
        let path = dir.join("memory.oom_control");
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
    fn each_controller_in_its_own_tree() {
        let f = Fixture::hybrid();
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let root = f.path("cgroup/execgo-runtime");
        let mem = layout
            .backend(Controller::Memory, &root, &f.kernel)
            .unwrap();
        mem.prepare(Controller::Memory).unwrap();
        assert!(f.path("cgroup/memory/execgo-runtime").is_dir());
        assert!(!f.path("cgroup/pids/execgo-runtime").exists());
        let d = mem.create("t").unwrap();
        assert_eq!(d, f.path("cgroup/memory/execgo-runtime/t"));
        assert!(d.join("memory.limit_in_bytes").exists());
        assert!(!d.join("pids.max").exists());
        mem.remove(&d).unwrap();
        // The root stays, as the parent of future task cgroups.
        assert!(f.path("cgroup/memory/execgo-runtime").is_dir());
    }

    #[test]
    fn limits_read_back() {
        let f = Fixture::hybrid();
        let layout = Layout::detect(&f.mounts, &f.kernel).unwrap();
        let root = f.path("cgroup/execgo-runtime");
        let mut dirs = Vec::new();
        for c in Controller::ALL {
            let b = layout.backend(c, &root, &f.kernel).unwrap();
            b.prepare(c).unwrap();
            dirs.push((b.create("t").unwrap(), b));
        }
        let (d, mem) = &dirs[0];
        assert_eq!(mem.memory_max(d).unwrap(), None);
        mem.set_memory_max(d, 64 << 20).unwrap();
        assert_eq!(mem.memory_max(d).unwrap(), Some(64 << 20));
        assert_eq!(mem.oom_kills(d).unwrap(), 0);
        std::fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        )
        .unwrap();
        assert_eq!(mem.oom_kills(d).unwrap(), 4);
        let (d, pids) = &dirs[1];
        assert_eq!(pids.pids_max(d).unwrap(), None);
        pids.set_pids_max(d, 64).unwrap();
        assert_eq!(pids.pids_max(d).unwrap(), Some(64));
        let (d, cpu) = &dirs[2];
        assert_eq!(cpu.cpu_quota(d).unwrap(), (None, 100_000));
        cpu.set_cpu_quota(d, 50_000, 100_000).unwrap();
        assert_eq!(cpu.cpu_quota(d).unwrap(), (Some(50_000), 100_000));
    }

    #[test]
    fn an_old_kernel_without_the_oom_kill_line() {
        let f = Fixture::hybrid();
        let b = V1::new(
            &f.kernel,
            f.path("cgroup/memory"),
            f.path("cgroup/memory/x"),
        );
        b.prepare(Controller::Memory).unwrap();
        let d = b.create("t").unwrap();
        std::fs::write(
            d.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        let e = b.oom_kills(&d).unwrap_err();
        assert!(
            crate::logging::chain(&e).ends_with("expected oom_kill"),
            "{}",
            crate::logging::chain(&e)
        );
    }
}
