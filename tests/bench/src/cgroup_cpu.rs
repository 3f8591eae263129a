//! A cgroup of the bench's own that counts the CPU time of everything in
//! it: processes join it as they start (before `exec`, so their children
//! inherit it), its counter is read, and at the end whatever is still in
//! it is killed and the cgroup removed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cgroup_mounts::{Hierarchy, Version};

pub struct CpuCgroup {
    dir: PathBuf,
    version: Version,
    /// `<dir>/cgroup.procs`, ready for a `pre_exec` (no allocation there).
    procs: CString,
}

/// Total CPU time of the cgroup at `dir` so far, in ns.
pub fn usage_ns(version: Version, dir: &Path) -> Result<u64, String> {
    let file = dir.join(match version {
        Version::V1 => "cpuacct.usage",
        Version::V2 => "cpu.stat",
    });
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    parse_usage(version, &text).ok_or_else(|| format!("no usage in {}: {text:?}", file.display()))
}

/// `cpuacct.usage` is one number of ns; `cpu.stat` has a `usage_usec`
/// line among others.
fn parse_usage(version: Version, text: &str) -> Option<u64> {
    match version {
        Version::V1 => text.trim().parse().ok(),
        Version::V2 => text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us * 1000),
    }
}

/// Processes in the cgroup at `dir` (threads' group leaders).
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl CpuCgroup {
    /// A new cgroup `name` under this process's own, whose counter reads.
    pub fn create(h: &Hierarchy, name: &str) -> Result<CpuCgroup, String> {
        let dir = h.own_dir.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let cg = CpuCgroup {
            dir,
            version: h.version,
            procs,
        };
        cg.usage_ns()?;
        Ok(cg)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn usage_ns(&self) -> Result<u64, String> {
        usage_ns(self.version, &self.dir)
    }

    pub fn contains(&self, pid: i32) -> bool {
        pids(&self.dir).contains(&pid)
    }

    /// A hook that makes the process `Command` starts join this cgroup
    /// before its `exec` (race-free: it forks nothing before). It never
    /// fails the spawn; check with [`CpuCgroup::contains`].
    pub fn join_on_exec(&self) -> impl FnOnce(&mut Command) + 'static {
        let procs = self.procs.clone();
        move |cmd| join_on_exec(cmd, procs)
    }
}

#[allow(unsafe_code)]
fn join_on_exec(cmd: &mut Command, procs: CString) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, and makes
    // only async-signal-safe calls (open, write, close) on memory allocated
    // before the fork: the path, and a static "0", which cgroup.procs
    // takes for "the writing process" in v1 and v2 alike.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        })
    };
}

impl Drop for CpuCgroup {
    /// Kills what is left in the cgroup (detached shims and their tasks
    /// outlive the runtime) and removes it once it is empty.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut killed = std::collections::HashSet::new();
        loop {
            let left = pids(&self.dir);
            if left.is_empty() {
                match std::fs::remove_dir(&self.dir) {
                    Ok(()) => break,
                    // Emptied, but the kernel has not let go of it yet.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {}
                    Err(e) => {
                        eprintln!("removing cgroup {}: {e}", self.dir.display());
                        break;
                    }
                }
            } else if Instant::now() >= deadline {
                eprintln!(
                    "cgroup {} not removed: processes {left:?} survived SIGKILL",
                    self.dir.display()
                );
                break;
            }
            for pid in left {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed.insert(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !killed.is_empty() {
            println!(
                "  killed {} process(es) left in cgroup {}",
                killed.len(),
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_usage_is_ns() {
        assert_eq!(parse_usage(Version::V1, "96778358\n"), Some(96_778_358));
        assert_eq!(parse_usage(Version::V1, ""), None);
    }

    #[test]
    fn v2_usage_is_usec_in_cpu_stat() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
                    nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(parse_usage(Version::V2, stat), Some(1_234_567_000));
        assert_eq!(parse_usage(Version::V2, "user_usec 5\n"), None);
    }
}
