//! A spare network namespace, made ahead of the sandbox launch that takes
//! it. A new network namespace is the dearest part of a sandbox's clone
//! (the kernel runs every per-namespace init of the network stack; figures
//! in docs/benchmarks.md), so the helper makes the next
//! one while it has nothing else to do, with `lo` already up, and the
//! sandbox child joins it with `setns(2)` instead of cloning its own.
//!
//! A spare is fresh: made by `unshare(CLONE_NEWNET)` in the helper, which
//! keeps only a descriptor to it and goes straight back to its own
//! namespace; no process has ever run in it, and each spare goes to one
//! task, whose init is the first and only process to enter it. When no
//! spare is ready (a burst of launches, or none was ever wanted), the
//! sandbox child clones a namespace of its own, as before.
//!
//! Spares are made only once a sandbox launch has asked for a network
//! namespace, so a helper that never runs one holds none.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::logging;

/// Why no spare could be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("unshare(CLONE_NEWNET) failed")]
    Unshare(#[source] Errno),
    #[error("opening the new network namespace failed")]
    Open(#[source] Errno),
    #[error("bringing up lo in the new network namespace failed")]
    Loopback(#[source] Errno),
    /// The helper could not go back to its own network namespace: it stays
    /// in a new, empty one. Its sockets were made before and are not
    /// affected; it makes no more spares.
    #[error("returning to the helper's own network namespace failed")]
    Return(#[source] Errno),
}

/// The helper's spare network namespace, if it makes them.
pub struct NetnsSpare {
    /// The helper's own network namespace, to return to; `None` when
    /// spares are not made (not privileged, or no network namespaces).
    home: Option<OwnedFd>,
    spare: RefCell<Option<OwnedFd>>,
    /// A launch has asked for a network namespace.
    wanted: Cell<bool>,
    /// Making one failed: none is made any more (the failure was logged).
    stopped: Cell<bool>,
}

impl NetnsSpare {
    /// Spares are made only when `enabled` (the helper is privileged and
    /// its probe found network namespaces) and the helper's own namespace
    /// can be opened to come back to.
    pub fn new(enabled: bool) -> NetnsSpare {
        let home = if enabled {
            open_current()
                .inspect_err(|e| {
                    tracing::warn!(
                        target: logging::TARGET,
                        error = %e,
                        "no spare network namespaces: opening our own failed"
                    )
                })
                .ok()
        } else {
            None
        };
        NetnsSpare {
            home,
            spare: RefCell::new(None),
            wanted: Cell::new(false),
            stopped: Cell::new(false),
        }
    }

    /// Spares never made.
    #[cfg(test)]
    pub fn disabled() -> NetnsSpare {
        NetnsSpare::new(false)
    }

    /// The spare, for a launch that asks for a network namespace; from now
    /// on the helper keeps one ready.
    pub fn take(&self) -> Option<OwnedFd> {
        self.home.as_ref()?;
        self.wanted.set(true);
        self.spare.borrow_mut().take()
    }

    /// Whether a spare should be made now.
    pub fn wants_one(&self) -> bool {
        self.home.is_some()
            && self.wanted.get()
            && !self.stopped.get()
            && self.spare.borrow().is_none()
    }

    /// Makes the spare. A failure is logged and ends the making of spares.
    pub fn refill(&self) {
        let Some(home) = &self.home else {
            return;
        };
        match make(home.as_fd()) {
            Ok(fd) => *self.spare.borrow_mut() = Some(fd),
            Err(e) => {
                self.stopped.set(true);
                tracing::error!(
                    target: logging::TARGET,
                    error = %logging::chain(&e),
                    "making a spare network namespace failed; sandboxes clone their own from now on"
                );
            }
        }
    }
}

/// `/proc/thread-self/ns/net`: the calling thread's network namespace.
fn open_current() -> Result<OwnedFd, Errno> {
    // SAFETY: open(2) of a static NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new network namespace with `lo` up, made by this thread and left
/// again for `home`. Sound only in a single-threaded process, or on a
/// thread that makes no socket meanwhile: unshare(2) moves the calling
/// thread only.
pub fn make(home: BorrowedFd<'_>) -> Result<OwnedFd, NetnsError> {
    // SAFETY: unshare(2) with a flag constant.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Unshare(Errno::last()));
    }
    let made = open_current()
        .map_err(NetnsError::Open)
        .and_then(|fd| match loopback_up() {
            Ok(()) => Ok(fd),
            Err(e) => Err(NetnsError::Loopback(e)),
        });
    // Back home whatever happened in between.
    // SAFETY: setns(2) on a descriptor we own, with its type.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Return(Errno::last()));
    }
    made
}

/// Joins the network namespace `fd` (in the sandbox child).
pub fn enter(fd: libc::c_int) -> Result<(), Errno> {
    // SAFETY: setns(2) on a descriptor the caller owns, with its type.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Brings `lo` up in a new network namespace, where it starts down.
/// Async-signal-safe: the sandbox child calls it too.
pub fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2), ioctl(2) on a zeroed, then filled, local ifreq,
    // close(2) of the socket we made.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Errno::last());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let result = if r == 0 { Ok(()) } else { Err(Errno::last()) };
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn ns_ino(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd.as_raw_fd())
            .map(|s| s.st_ino)
            .unwrap_or(0)
    }

    #[test]
    fn nothing_is_made_or_handed_out_when_disabled() {
        let s = NetnsSpare::disabled();
        assert!(s.take().is_none());
        assert!(!s.wants_one(), "a disabled spare never wants one");
        s.refill();
        assert!(s.take().is_none());
    }

    /// unshare(2) moves only the calling thread, so this runs on a thread
    /// of its own, where the test harness's other threads cannot see it.
    #[test]
    fn a_spare_is_a_fresh_namespace_with_lo_up_and_we_stay_home() {
        if !is_root() {
            eprintln!("skipped: making a network namespace needs root");
            return;
        }
        std::thread::spawn(|| {
            let home_ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            let s = NetnsSpare::new(true);
            assert!(!s.wants_one(), "no spare before a launch asked for one");
            assert!(s.take().is_none(), "none made yet");
            assert!(s.wants_one(), "asked once: one is kept ready");
            s.refill();
            assert!(!s.wants_one());
            let spare = s.take().expect("a spare after the refill");
            assert_ne!(ns_ino(&spare), home_ino, "a namespace of its own");
            let back = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            assert_eq!(back, home_ino, "the maker went back home");
            assert!(s.wants_one(), "taken: the next one is wanted");
            // Inside it, lo is up and is the only interface.
            enter(spare.as_raw_fd()).unwrap();
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            let ifaces: Vec<&str> = dev
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(str::trim)
                .collect();
            assert_eq!(ifaces, ["lo"], "{dev}");
            // SAFETY: socket(2) and ioctl(2) on a zeroed local ifreq.
            let up = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                let mut req: libc::ifreq = std::mem::zeroed();
                for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
                    *dst = *src as libc::c_char;
                }
                let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
                libc::close(fd);
                r == 0 && (req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short) != 0
            };
            assert!(up, "lo is up in the spare");
        })
        .join()
        .unwrap();
    }
}
