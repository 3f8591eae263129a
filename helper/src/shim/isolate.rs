//! The shim's first step, right after the fork: its own session, no
//! descriptor of the helper's but the ones it was given (the report pipe,
//! the task directory and, in journald mode, the journal socket), and 0/1
//! on /dev/null and 2 on `shim.log` for its own diagnostics.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::fs_at::{self, Access, AtError};
use crate::sys;

pub const SHIM_LOG: &str = "shim.log";

#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    #[error("setsid failed")]
    Setsid(#[source] Errno),
    #[error("closing the helper's descriptors failed")]
    CloseFds(#[source] std::io::Error),
    #[error("opening /dev/null failed")]
    DevNull(#[source] Errno),
    #[error("opening {SHIM_LOG} failed")]
    Log(#[source] AtError),
    #[error("redirecting the shim's stdio failed")]
    Dup(#[source] Errno),
}

/// `keep`: the report pipe, the task directory and the journal socket, if
/// any (all close-on-exec, so the task gets none of them).
pub fn isolate(task_dir: BorrowedFd<'_>, keep: &[RawFd]) -> Result<(), IsolateError> {
    // A session of our own: the shim outlives the helper's session and no
    // terminal signal of it reaches us.
    nix::unistd::setsid().map_err(IsolateError::Setsid)?;
    sys::close_fds_except(keep).map_err(IsolateError::CloseFds)?;
    let null = sys::open(
        Path::new("/dev/null"),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(IsolateError::DevNull)?;
    let log = fs_at::open_file(task_dir, SHIM_LOG, Access::AppendOrCreate(0o644))
        .map_err(IsolateError::Log)?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (null.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        nix::unistd::dup2(from, to).map_err(IsolateError::Dup)?;
    }
    Ok(())
}
