//! The runtime's few direct syscalls: a pidfd on a shim (which is not our
//! child), so its exit arrives as an event on the async reactor, an
//! inotify instance registered with that reactor, and any other owned
//! descriptor registered with it (the sock_diag socket of
//! `crate::peer_uid`).
#![allow(unsafe_code)]

use nix::sys::inotify::{InitFlags, Inotify};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// `pidfd_open(2)`: a file descriptor that becomes readable when `pid`
/// exits. Works for any process, not only children.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` has exited.
pub async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it for its
    // whole life, so the descriptor stays open and always the same one.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
    let _guard = afd.readable().await?;
    Ok(())
}

/// A non-blocking descriptor, registered with the reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it for its
    // whole life, so the descriptor stays open and always the same one
    // while registered.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// A non-blocking inotify instance, as the reactor needs it.
pub struct InotifyFd(pub Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A new non-blocking inotify instance, registered with the reactor.
pub fn async_inotify() -> io::Result<AsyncFd<InotifyFd>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // SAFETY: the Inotify owns its descriptor and is moved into the
    // AsyncFd, which owns it for its whole life: the descriptor stays open
    // and is always the same one while registered.
    unsafe { AsyncFd::register(InotifyFd(inotify)) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_pidfd() {
        let me = std::process::id() as i32;
        assert!(pidfd_open(me).is_ok());
    }
}
