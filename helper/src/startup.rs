//! Start-up clean-up, before anything is probed or served. The helper may be
//! started by a runtime we do not trust, so nothing it inherits (descriptors,
//! environment, umask, signal dispositions) is allowed to reach a task.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::{umask, Mode};

use crate::{rlimits, sys};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("opening /dev/null for descriptor {fd} failed")]
    StdFd {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    #[error("descriptor {fd} is still closed after opening /dev/null")]
    StdFdMismatch { fd: RawFd },
    #[error("closing inherited descriptors failed")]
    CloseFds(#[source] std::io::Error),
    #[error("setting PR_SET_NO_NEW_PRIVS failed")]
    NoNewPrivs(#[source] Errno),
    #[error("resetting inherited signal dispositions and mask failed")]
    Signals(#[source] Errno),
    #[error("ignoring SIGPIPE failed")]
    SigPipe(#[source] Errno),
    #[error("raising RLIMIT_NOFILE to its hard limit failed")]
    Nofile(#[source] Errno),
}

/// Runs the clean-up steps in order. `keep` is the inherited socket of
/// embedded mode, if any.
pub fn clean(keep: Option<RawFd>) -> Result<(), StartupError> {
    // 1. 0, 1 and 2 open (on /dev/null when closed), so no descriptor we open
    //    later lands on a number a task would treat as its stdio.
    ensure_std_fds()?;
    // 2. Close everything else we inherited, except the socket we were
    //    handed: a leaked descriptor would reach every task.
    let keep: Vec<RawFd> = keep.into_iter().collect();
    sys::close_fds_except(&keep).map_err(StartupError::CloseFds)?;
    // 3. Clear the environment (RUST_LOG was read already): a task's
    //    environment comes only from its launch request.
    clear_env();
    // 4. A known umask, so the files the shim creates for the runtime
    //    (result.json, shim.claim, shim.log) are readable by it, whatever
    //    umask we were started with.
    umask(Mode::from_bits_truncate(0o022));
    // 5. No new privileges, for us and everything we launch: exec of a
    //    setuid or file-capability binary grants nothing.
    nix::sys::prctl::set_no_new_privs().map_err(StartupError::NoNewPrivs)?;
    // 6. Signals our parent ignored or blocked back to normal: both survive
    //    fork and execve, so they would reach every task, and the task
    //    child only resets what we change ourselves (step 7).
    sys::unignore_inherited_signals().map_err(StartupError::Signals)?;
    // 7. A peer that hangs up must be an EPIPE, not our death.
    sys::ignore_sigpipe().map_err(StartupError::SigPipe)?;
    // 8. As many descriptors as we may have: each connection and each
    //    launch in flight holds some. The limit we found is recorded, and
    //    every task gets it back (see `rlimits`).
    rlimits::raise_nofile().map_err(StartupError::Nofile)?;
    Ok(())
}

fn ensure_std_fds() -> Result<(), StartupError> {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            // The lowest free number is `fd`, since the ones below are open.
            // Deliberately never closed: it *is* the process's stdio now.
            let got = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())
                .map_err(|source| StartupError::StdFd { fd, source })?;
            if got != fd {
                return Err(StartupError::StdFdMismatch { fd });
            }
        }
    }
    Ok(())
}

fn clear_env() {
    let keys: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in keys {
        // Single-threaded at this point (and always): no concurrent reader.
        std::env::remove_var(k);
    }
}
