//! Changing a process's root directory: chroot(2) and pivot_root(2). For
//! now only the probe lives here: each mechanism is tried in a throwaway
//! child on an empty scratch directory the helper creates in its own data
//! dir (`.execgo-helper-probe-root-<pid>`, mode 0700) and removes after.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, pivot_root, UnlinkatFlags};

use crate::os_error::OsError;
use crate::probe_child::{at, ChildResult, Step};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("creating the scratch directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: OsError,
    },
    #[error("the scratch directory path {path} contains a NUL byte")]
    Nul { path: PathBuf },
}

/// An empty directory in the data dir, removed on drop.
pub struct Scratch<'a> {
    dir: BorrowedFd<'a>,
    name: String,
    path: CString,
}

impl<'a> Scratch<'a> {
    /// Creates `<data_dir>/.execgo-helper-probe-root-<pid>`, through the
    /// data dir descriptor (`data_dir` is its canonical path, for the
    /// children, which need an absolute one).
    pub fn create(data_fd: BorrowedFd<'a>, data_dir: &Path) -> Result<Self, ScratchError> {
        let name = format!(".execgo-helper-probe-root-{}", std::process::id());
        let full = data_dir.join(&name);
        let path = CString::new(full.as_os_str().as_bytes())
            .map_err(|_| ScratchError::Nul { path: full.clone() })?;
        // A leftover of an earlier helper that had our pid goes first.
        let _ = nix::unistd::unlinkat(
            Some(data_fd.as_raw_fd()),
            name.as_str(),
            UnlinkatFlags::RemoveDir,
        );
        nix::sys::stat::mkdirat(
            Some(data_fd.as_raw_fd()),
            name.as_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(|e| ScratchError::Create {
            path: full,
            source: e.into(),
        })?;
        Ok(Scratch {
            dir: data_fd,
            name,
            path,
        })
    }

    /// The absolute path, prepared for the children.
    pub fn path(&self) -> &CStr {
        &self.path
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = nix::unistd::unlinkat(
            Some(self.dir.as_raw_fd()),
            self.name.as_str(),
            UnlinkatFlags::RemoveDir,
        );
    }
}

/// Runs in a probe child: chroot(2) into `dir`, then chdir("/") inside it,
/// as a launch into a rootfs would.
pub fn try_chroot(dir: &CStr) -> ChildResult {
    at(Step::Chdir, chdir(dir))?;
    at(Step::Chroot, chroot("."))?;
    at(Step::Chdir, chdir("/"))
}

/// Runs in a probe child: the pivot_root(2) sequence a launch into a rootfs
/// uses, on `dir`. In a fresh mount namespace whose mounts are made private
/// first, so nothing reaches the host and everything vanishes when the
/// child exits. `dir` becomes a mount point by a bind mount onto itself
/// (pivot_root needs one); `pivot_root(".", ".")` stacks the old root on
/// the new one, and a lazy unmount of "." drops it (see the pivot_root(2)
/// man page's NOTES).
pub fn try_pivot_root(dir: &CStr) -> ChildResult {
    at(Step::UnshareMountNs, unshare(CloneFlags::CLONE_NEWNS))?;
    at(
        Step::MakeRootPrivate,
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    at(
        Step::BindMount,
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    at(Step::Chdir, chdir(dir))?;
    at(Step::PivotRoot, pivot_root(".", "."))?;
    at(Step::DetachOldRoot, umount2(".", MntFlags::MNT_DETACH))?;
    at(Step::Chdir, chdir("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use nix::fcntl::OFlag;
    use std::os::fd::AsFd;

    #[test]
    fn scratch_is_created_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        {
            let s = Scratch::create(fd.as_fd(), tmp.path()).unwrap();
            let p = Path::new(std::ffi::OsStr::from_bytes(s.path().to_bytes()));
            assert!(p.is_dir());
            assert!(p.starts_with(tmp.path()));
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
