//! The shim's first step, right after the fork: its own session, no
//! descriptor of the helper's but the ones it was given (the task
//! directory and, in journald mode, the journal socket), and 0, 1 and 2 on
//! /dev/null. Its diagnostics go to `shim.log` (see [`crate::logging`]).

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    #[error("setsid failed")]
    Setsid(#[source] Errno),
    #[error("closing the helper's descriptors failed")]
    CloseFds(#[source] std::io::Error),
    #[error("opening /dev/null failed")]
    DevNull(#[source] Errno),
    #[error("redirecting the shim's stdio failed")]
    Dup(#[source] Errno),
}

/// `keep`: the task directory and the journal socket, if any (both
/// close-on-exec, so the task gets neither).
pub fn isolate(keep: &[RawFd]) -> Result<(), IsolateError> {
    // A session of our own: the shim outlives the helper's session and no
    // terminal signal of it reaches us.
    nix::unistd::setsid().map_err(IsolateError::Setsid)?;
    drop_inherited(keep)
}

/// Every descriptor but `keep` closed, and 0, 1 and 2 on /dev/null: also
/// what a spare shim does at once (see [`crate::prefork`]), long before
/// its [`isolate`].
pub fn drop_inherited(keep: &[RawFd]) -> Result<(), IsolateError> {
    sys::close_fds_except(keep).map_err(IsolateError::CloseFds)?;
    // Nothing of the helper's stdio stays open here (its stderr may be the
    // runtime's pipe, whose reader waits for every writer to close).
    let null = sys::open(
        Path::new("/dev/null"),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(IsolateError::DevNull)?;
    for to in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), to).map_err(IsolateError::Dup)?;
    }
    Ok(())
}
