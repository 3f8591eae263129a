//! Resource limits of the `process` profile (setrlimit(2)): RLIMIT_CPU with
//! a hard limit one second above the soft one, so the task first gets
//! SIGXCPU (classified as `cpu_limit_exceeded`) and only then SIGKILL, and
//! RLIMIT_AS for memory.
//!
//! A limit can be lowered by anyone but raised above the current hard limit
//! only with CAP_SYS_RESOURCE, so requested values are clamped to the hard
//! limit the shim itself runs under: the task is never given more than
//! asked, and the launch does not fail because the host is stricter.
//!
//! RLIMIT_NOFILE is the helper's own: it holds a descriptor per connection
//! and per launch in flight, so start-up raises its soft limit to the hard
//! one ([`raise_nofile`]). Tasks must not inherit that: the limit found at
//! start is recorded here, and the task child puts the soft limit back
//! before its exec. The record is a process global on purpose: every shim
//! is a forked copy of the helper's memory and finds it there.

use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// (soft, hard) RLIMIT_NOFILE as the helper found it at start.
static TASK_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises our RLIMIT_NOFILE soft limit to the hard one (always allowed),
/// recording the limit found for tasks. Returns the new limit.
pub fn raise_nofile() -> Result<u64, Errno> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = TASK_NOFILE.set((soft, hard));
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// (soft, hard) RLIMIT_NOFILE for a task: the soft limit the helper was
/// started with. `None` when start-up did not record one (unit tests).
pub fn task_nofile() -> Option<(u64, u64)> {
    TASK_NOFILE.get().copied()
}

/// (soft, hard) RLIMIT_CPU for `seconds`, within `current_hard`.
pub fn cpu_pair(seconds: u64, current_hard: u64) -> (u64, u64) {
    let hard = seconds.saturating_add(1).min(current_hard);
    (seconds.min(hard), hard)
}

/// (soft, hard) RLIMIT_AS for `bytes`, within `current_hard`.
pub fn address_space_pair(bytes: u64, current_hard: u64) -> (u64, u64) {
    let v = bytes.min(current_hard);
    (v, v)
}

/// Our own hard limit for `resource`; unlimited when it cannot be read.
pub fn current_hard(resource: Resource) -> u64 {
    getrlimit(resource).map_or(u64::MAX, |(_, hard)| hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_soft_below_hard() {
        assert_eq!(cpu_pair(10, u64::MAX), (10, 11));
        assert_eq!(cpu_pair(10, 5), (5, 5));
        assert_eq!(cpu_pair(10, 10), (10, 10));
        assert_eq!(cpu_pair(u64::MAX, u64::MAX), (u64::MAX, u64::MAX));
    }

    #[test]
    fn address_space_clamped() {
        assert_eq!(address_space_pair(1 << 30, u64::MAX), (1 << 30, 1 << 30));
        assert_eq!(address_space_pair(1 << 30, 1 << 20), (1 << 20, 1 << 20));
    }
}
