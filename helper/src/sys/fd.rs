//! Descriptors: owning what open(2) and openat(2) return, adopting one
//! handed over by the parent, and closing every inherited one.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// openat(2) of one name under `dir`, returning an owned descriptor.
pub fn openat(dir: BorrowedFd<'_>, name: &str, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Whether a resolution may cross into another mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounts {
    /// Stay on `dir`'s mount (EXDEV otherwise).
    Stay,
    /// Mounts below `dir` may be crossed.
    Cross,
}

/// openat2(2) of the directory `rel` beneath `dir` with `flags` (plus
/// `O_DIRECTORY|O_CLOEXEC`): never above `dir`, never through a symlink,
/// and with [`Mounts::Stay`] never into another mount. ENOSYS on kernels
/// without it (before 5.6).
pub fn open_dir_beneath(
    dir: BorrowedFd<'_>,
    rel: &str,
    flags: OFlag,
    mounts: Mounts,
) -> nix::Result<OwnedFd> {
    let path = std::ffi::CString::new(rel).map_err(|_| Errno::EINVAL)?;
    let xdev = if mounts == Mounts::Stay {
        RESOLVE_NO_XDEV
    } else {
        0
    };
    let how = OpenHow {
        flags: (flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits() as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | xdev,
    };
    // SAFETY: openat2(2) with a NUL-terminated path and a live open_how of
    // the size passed.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// open(2) of an absolute path, returning an owned descriptor.
pub fn open(path: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = nix::fcntl::open(path, flags, mode)?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of a descriptor number handed to us by our parent
/// (`--inherited-fd`). Fails unless it is open.
pub fn adopt_fd(fd: RawFd) -> nix::Result<OwnedFd> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: the descriptor is open (checked just above) and was passed to
    // this process for its sole use; start-up adopts it exactly once, before
    // anything else could have wrapped the same number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every descriptor from 3 up except those in `keep`, with
/// close_range(2) where the kernel has it and /proc/self/fd otherwise.
///
/// Only called where no live Rust object relies on the closed numbers: at
/// helper start-up (nothing is open yet) and as the shim's first step (the
/// forked copies of the helper's sockets belong to stack frames that are
/// never returned to, since the shim ends with `exit_now`; the one global,
/// the journal socket of journald mode, is in the shim's `keep`).
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: u32 = 3;
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    for &fd in &keep {
        let fd = fd as u32;
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    for (lo, hi) in ranges {
        // SAFETY: close_range takes two integers and flags; it only closes
        // descriptors, none of which is owned by a live object (see above).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::EINVAL) => close_fds_by_proc(&keep),
                _ => Err(err),
            };
        }
    }
    Ok(())
}

/// Fallback of [`close_fds_except`] for kernels before 5.9.
fn close_fds_by_proc(keep: &[RawFd]) -> io::Result<()> {
    // Collect first: the directory stream has a descriptor of its own.
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            open.push(fd);
        }
    }
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // EBADF is the directory stream's own, already closed, descriptor.
            // SAFETY: closes a bare descriptor number that no live object
            // owns (see close_fds_except).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
