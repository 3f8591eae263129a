//! The throwaway child of the capability probe. Probes that change process
//! state (unshare, chroot, pivot_root, seccomp, rlimits, the process group)
//! run in a forked child, so the helper itself is never changed by them; the
//! child reports by its exit status (0: it worked), and on failure also
//! writes the failed [`Step`] and its errno to a close-on-exec pipe, so the
//! warning can say which call failed and why.
//!
//! Every child is bounded in time: the parent waits on the pipe with
//! poll(2) until the child's end closes (it exited) or the deadline passes,
//! then SIGKILLs it.
//!
//! What a child may do: the helper is single-threaded, but the probe also
//! runs under the multi-threaded test harness, so a child's function makes
//! only async-signal-safe calls on values prepared before the fork (no
//! allocation, no logging) and ends with `_exit` (see fork(2)).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::os_error::OsError;
use crate::sys;

/// A call a probe child makes; sent to the parent as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Unshare = 1,
    MakeRootPrivate = 2,
    BindMount = 3,
    Chdir = 4,
    PivotRoot = 5,
    DetachOldRoot = 6,
    Chroot = 7,
    Fork = 8,
    Wait = 9,
    NotPidOne = 10,
    SetHostname = 11,
    LoadSeccomp = 12,
    SetPgid = 13,
    SetRlimitCpu = 14,
    SetRlimitAs = 15,
    UnshareMountNs = 16,
}

impl Step {
    const ALL: [Step; 16] = [
        Step::Unshare,
        Step::MakeRootPrivate,
        Step::BindMount,
        Step::Chdir,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Chroot,
        Step::Fork,
        Step::Wait,
        Step::NotPidOne,
        Step::SetHostname,
        Step::LoadSeccomp,
        Step::SetPgid,
        Step::SetRlimitCpu,
        Step::SetRlimitAs,
        Step::UnshareMountNs,
    ];

    fn from_u8(b: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Unshare => "unshare",
            Step::MakeRootPrivate => "mount --make-rprivate /",
            Step::BindMount => "bind mount of the scratch directory",
            Step::Chdir => "chdir",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "umount2 of the old root",
            Step::Chroot => "chroot into the scratch directory",
            Step::Fork => "fork",
            Step::Wait => "waitpid",
            Step::NotPidOne => "the first child in the new pid namespace is not pid 1",
            Step::SetHostname => "sethostname",
            Step::LoadSeccomp => "loading the seccomp filter",
            Step::SetPgid => "setpgid",
            Step::SetRlimitCpu => "setrlimit RLIMIT_CPU",
            Step::SetRlimitAs => "setrlimit RLIMIT_AS",
            Step::UnshareMountNs => "unshare(CLONE_NEWNS)",
        }
    }
}

/// The step a child failed at, and the errno (none for a failed check
/// that is not a call, like [`Step::NotPidOne`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFailed {
    pub step: Step,
    pub errno: Option<Errno>,
}

/// What a child function returns.
pub type ChildResult = Result<(), StepFailed>;

/// Maps a failed call to the step it belongs to.
pub fn at<T>(step: Step, r: nix::Result<T>) -> Result<T, StepFailed> {
    r.map_err(|e| StepFailed {
        step,
        errno: Some(e),
    })
}

/// Why a probe found its capability missing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("{}", step.name())]
    Step {
        step: Step,
        #[source]
        source: Option<OsError>,
    },
    #[error("the probe child did not finish within {} ms and was killed", .0.as_millis())]
    TimedOut(Duration),
    #[error("the probe child was killed by {0}")]
    Signaled(Signal),
    #[error("the probe child exited with status {0} without a report")]
    Exited(i32),
    #[error("skipped: the probe's time budget is spent")]
    BudgetSpent,
    #[error("creating the report pipe failed")]
    Pipe(#[source] OsError),
    #[error("forking the probe child failed")]
    Fork(#[source] OsError),
    #[error("waiting for the probe child failed")]
    Wait(#[source] OsError),
}

/// Length of a report: the step, then the errno as 4 little-endian bytes
/// (0: no errno).
const REPORT_LEN: usize = 5;

/// Runs `f` in a forked child for at most `timeout` and says how it went.
pub fn run(timeout: Duration, f: impl FnOnce() -> ChildResult) -> Result<(), ProbeFailure> {
    if timeout.is_zero() {
        return Err(ProbeFailure::BudgetSpent);
    }
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ProbeFailure::Pipe(e.into()))?;
    let pid = match sys::fork().map_err(|e| ProbeFailure::Fork(e.into()))? {
        sys::Forked::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(failed) => {
                    report(&write, failed);
                    1
                }
            };
            sys::exit_now(code)
        }
        sys::Forked::Parent(pid) => pid,
    };
    // Our copy of the write end must go, or the pipe never reaches EOF.
    drop(write);
    let deadline = Instant::now() + timeout;
    let message = match read_report(&read, deadline) {
        Some(m) => m,
        None => {
            kill_and_reap(pid);
            return Err(ProbeFailure::TimedOut(timeout));
        }
    };
    let status = loop {
        match waitpid(pid, None) {
            Ok(s) => break s,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ProbeFailure::Wait(e.into())),
        }
    };
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        WaitStatus::Exited(_, code) => match parse_report(&message) {
            Some(failed) => Err(ProbeFailure::Step {
                step: failed.step,
                source: failed.errno.map(OsError),
            }),
            None => Err(ProbeFailure::Exited(code)),
        },
        WaitStatus::Signaled(_, sig, _) => Err(ProbeFailure::Signaled(sig)),
        other => Err(ProbeFailure::Wait(OsError(match other {
            WaitStatus::StillAlive => Errno::EAGAIN,
            _ => Errno::EINVAL,
        }))),
    }
}

/// In the child: the failed step and errno, in one write(2).
fn report(fd: &OwnedFd, failed: StepFailed) {
    let errno = failed.errno.map_or(0, |e| e as i32).to_le_bytes();
    let msg: [u8; REPORT_LEN] = [failed.step as u8, errno[0], errno[1], errno[2], errno[3]];
    // Nothing to do if it fails: the exit status still says "failed".
    let _ = nix::unistd::write(fd, &msg);
}

fn parse_report(msg: &[u8]) -> Option<StepFailed> {
    let msg: &[u8; REPORT_LEN] = msg.try_into().ok()?;
    let step = Step::from_u8(msg[0])?;
    let errno = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
    Some(StepFailed {
        step,
        errno: (errno != 0).then(|| Errno::from_raw(errno)),
    })
}

/// Reads the pipe until EOF (every write end closed: the child is gone)
/// or the deadline. `None` on the deadline.
fn read_report(read: &OwnedFd, deadline: Instant) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        // Rounded up, so a sub-millisecond remainder still waits.
        let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return None;
                }
                continue;
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            // poll on one valid descriptor does not fail otherwise; treat it
            // as the end of the report and let waitpid tell the outcome.
            Err(_) => return Some(got),
        }
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(read), &mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(_) => return Some(got),
        }
    }
}

/// SIGKILLs a child that overran, then reaps it, waiting at most one more
/// second (a child stuck in an uninterruptible sleep is left as a zombie
/// rather than hanging the helper).
fn kill_and_reap(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(1);
    let mut pause = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            _ => return,
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging;

    #[test]
    fn success_failure_and_timeout() {
        assert!(run(Duration::from_secs(5), || Ok(())).is_ok());

        let e = run(Duration::from_secs(5), || {
            Err(StepFailed {
                step: Step::Chroot,
                errno: Some(Errno::EPERM),
            })
        })
        .unwrap_err();
        assert_eq!(
            logging::chain(&e),
            "chroot into the scratch directory: operation not permitted"
        );

        let e = run(Duration::from_secs(5), || {
            Err(StepFailed {
                step: Step::NotPidOne,
                errno: None,
            })
        })
        .unwrap_err();
        assert_eq!(
            logging::chain(&e),
            "the first child in the new pid namespace is not pid 1"
        );

        let started = Instant::now();
        let e = run(Duration::from_millis(100), || loop {
            // pause(2) until the SIGKILL: async-signal-safe, allocates nothing.
            nix::unistd::pause();
        })
        .unwrap_err();
        assert!(matches!(e, ProbeFailure::TimedOut(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3));

        assert!(matches!(
            run(Duration::ZERO, || Ok(())),
            Err(ProbeFailure::BudgetSpent)
        ));
    }

    #[test]
    fn steps_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::from_u8(s as u8), Some(s));
        }
        assert_eq!(Step::from_u8(0), None);
        assert_eq!(parse_report(&[1, 2]), None);
        assert_eq!(
            parse_report(&[Step::Fork as u8, 11, 0, 0, 0]),
            Some(StepFailed {
                step: Step::Fork,
                errno: Some(Errno::EAGAIN)
            })
        );
    }
}
