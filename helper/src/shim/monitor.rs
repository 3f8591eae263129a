//! The shim's event loop, from the exec to the main process's exit: poll(2)
//! on the SIGCHLD signalfd and the control FIFO, with a timeout to the next
//! deadline.
//!
//! * Wall deadline (exec + `wall_time_ms`): `timed_out`, SIGTERM (and
//!   SIGCONT, so a stopped task can act on it) to the whole process group
//!   and every process in the task's cgroups, and the grace deadline
//!   starts.
//! * `K` on the FIFO: `kill_requested`, the same SIGTERM, and the grace
//!   deadline unless one is already running.
//! * Grace deadline: SIGKILL to the group and the cgroups.
//! * SIGCHLD: reap everything reapable (we are the subreaper, so orphaned
//!   grandchildren land here too) until the main process is among them.
//! * The report of a pid namespace's init (a `linux_sandbox` task with a
//!   pid namespace): the task and everything else of the namespace are
//!   dead and reaped, so the loop ends on it, with the task's status and
//!   usage, while the init itself still exits (see [`Ended::init`]).
//!
//! The main process is first *observed* dead with `waitid(WNOWAIT)`, then
//! its group is SIGKILLed, and only then is it reaped: while it is an
//! unreaped zombie its pid, and so the group id, cannot be reused by an
//! unrelated process that the group kill would hit.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::ExitKind;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::control::{self, ControlError};
use crate::cgroup::task::TaskCgroups;
use crate::cgroup::HostFs;
use crate::sys::{self, Rusage};
use crate::{deadline, logging};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("poll failed")]
    Poll(#[source] Errno),
    #[error("reading the SIGCHLD signalfd failed")]
    SignalFd(#[source] Errno),
    #[error("waiting for children failed")]
    Wait(#[source] Errno),
    #[error("the task process vanished without being reaped by the shim")]
    Lost,
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// How the main process ended and what the loop did to it.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub exit: ExitKind,
    pub usage: Rusage,
    pub timed_out: bool,
    pub kill_requested: bool,
    /// The OOM killer killed a process of the task's cgroup (set by the
    /// shim from the cgroup, after the loop).
    pub oom_killed: bool,
    /// Monotonic time of the reap.
    pub at: Instant,
    /// The namespace's init, when the loop ended on its report: it exits
    /// by itself, and is still to be reaped.
    pub init: Option<Pid>,
}

pub struct Monitor<'a> {
    pub pid: Pid,
    /// The task's cgroups, where it has them: every signal goes to all of
    /// their processes too, wherever they moved their group or session.
    pub cgroups: Option<&'a TaskCgroups>,
    pub started: Instant,
    pub wall_time: Duration,
    pub grace: Duration,
    pub sigchld: &'a SignalFd,
    pub control: &'a File,
    /// Read end of the pid namespace init's report pipe, when `pid` is
    /// such an init.
    pub report: Option<&'a OwnedFd>,
}

/// Loop state: what was asked and sent so far.
#[derive(Debug, Default)]
struct State {
    timed_out: bool,
    kill_requested: bool,
    /// Set once SIGTERM went out; SIGKILL follows when it passes.
    grace_deadline: Option<Instant>,
    killed: bool,
}

impl Monitor<'_> {
    pub fn run(&self) -> Result<Ended, MonitorError> {
        let wall_deadline = deadline::after(self.started, self.wall_time);
        let mut st = State::default();
        let mut report = self.report;
        loop {
            let now = Instant::now();
            if !st.timed_out && st.grace_deadline.is_none() && deadline::reached(now, wall_deadline)
            {
                st.timed_out = true;
                self.log("wall time limit reached; terminating the task");
                self.terminate(&mut st, now);
            }
            if !st.killed && deadline::reached(now, st.grace_deadline) {
                self.log("grace period over; killing the task");
                self.signal_group(Signal::SIGKILL);
                st.killed = true;
            }
            let next = if st.killed {
                None
            } else if st.grace_deadline.is_some() {
                st.grace_deadline
            } else {
                wall_deadline
            };
            let timeout = deadline::poll_timeout_ms(Instant::now(), next);
            let (chld, ctl, rep) = {
                let mut fds = vec![
                    PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(report.map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN)));
                match poll(
                    &mut fds,
                    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
                ) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(MonitorError::Poll(e)),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    fds.get(2).is_some_and(ready),
                )
            };
            if rep {
                match report.and_then(read_report) {
                    Some(r) => {
                        return Ok(Ended {
                            exit: exit_kind(r.status),
                            usage: r.usage,
                            timed_out: st.timed_out,
                            kill_requested: st.kill_requested,
                            oom_killed: false,
                            at: Instant::now(),
                            init: Some(self.pid),
                        })
                    }
                    // The init is gone without a report (killed): its own
                    // exit, by SIGCHLD, is all there is.
                    None => report = None,
                }
            }
            if ctl && control::take_kill(self.control)? && !st.kill_requested {
                st.kill_requested = true;
                self.log("kill requested; terminating the task");
                if st.grace_deadline.is_none() {
                    self.terminate(&mut st, Instant::now());
                }
            }
            if chld {
                drain_signalfd(self.sigchld)?;
                if let Some((status, usage)) = self.reap()? {
                    return Ok(Ended {
                        exit: exit_kind(status),
                        usage,
                        timed_out: st.timed_out,
                        kill_requested: st.kill_requested,
                        oom_killed: false,
                        at: Instant::now(),
                        init: None,
                    });
                }
            }
        }
    }

    fn terminate(&self, st: &mut State, now: Instant) {
        self.signal_group(Signal::SIGTERM);
        self.signal_group(Signal::SIGCONT);
        // An unrepresentable grace is "never"; SIGKILL then never comes,
        // exactly as asked.
        st.grace_deadline = deadline::after(now, self.grace).or(Some(far_future(now)));
    }

    /// Signals the task's process group and cgroups. ESRCH (the group is
    /// gone) is fine.
    fn signal_group(&self, sig: Signal) {
        if let Some(cg) = self.cgroups {
            match sig {
                Signal::SIGKILL => cg.kill_now(&HostFs),
                sig => cg.signal(sig, &HostFs),
            }
        }
        if let Err(e) = killpg(self.pid, sig) {
            if e != Errno::ESRCH {
                tracing::warn!(
                    target: logging::TARGET,
                    signal = sig.as_str(),
                    error = %e,
                    "signalling the task's process group failed"
                );
            }
        }
    }

    /// Reaps every exited child. Returns the main process's status and
    /// usage once it is among them.
    fn reap(&self) -> Result<Option<(i32, Rusage)>, MonitorError> {
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peek {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(ws) => match ws.pid() {
                    Some(pid) => pid,
                    None => return Ok(None),
                },
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Err(MonitorError::Lost),
                Err(e) => return Err(MonitorError::Wait(e)),
            };
            if pid == self.pid {
                // Still a zombie: the group id is pinned, kill what is left.
                self.signal_group(Signal::SIGKILL);
                return match sys::wait4(pid.as_raw(), false).map_err(MonitorError::Wait)? {
                    Some((_, status, usage)) => Ok(Some((status, usage))),
                    None => Err(MonitorError::Lost),
                };
            }
            sys::wait4(pid.as_raw(), true).map_err(MonitorError::Wait)?;
        }
    }

    fn log(&self, message: &str) {
        logging::shim_info!("{message}");
    }
}

/// A deadline far enough away to never matter, for a grace too large to
/// add to the clock.
fn far_future(now: Instant) -> Instant {
    deadline::after(now, Duration::from_secs(100 * 365 * 24 * 3600)).unwrap_or(now)
}

fn drain_signalfd(sfd: &SignalFd) -> Result<(), MonitorError> {
    loop {
        match sfd.read_signal() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(MonitorError::SignalFd(e)),
        }
    }
}

/// The init's report, when a whole one is on the pipe (it is written
/// whole, in one write, before the init exits).
pub fn read_report(pipe: &OwnedFd) -> Option<sys::Report> {
    let mut buf = [0u8; sys::Report::LEN];
    match nix::unistd::read(pipe.as_raw_fd(), &mut buf) {
        Ok(n) if n == buf.len() => Some(sys::Report::decode(&buf)),
        _ => None,
    }
}

/// Reaps, without blocking, whatever children are left after the main
/// process: members of its group just SIGKILLed may still be dying; those
/// go to init when the shim exits.
pub fn reap_leftovers() {
    while let Ok(Some(_)) = sys::wait4(-1, true) {}
}

/// Exit code or terminating signal of a wait status.
pub fn exit_kind(status: i32) -> ExitKind {
    if libc::WIFSIGNALED(status) {
        ExitKind::Signal(libc::WTERMSIG(status))
    } else {
        ExitKind::Code(libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        // Encodings from wait(2): exit code in bits 8-15, signal in 0-6.
        assert_eq!(exit_kind(3 << 8), ExitKind::Code(3));
        assert_eq!(exit_kind(0), ExitKind::Code(0));
        assert_eq!(exit_kind(9), ExitKind::Signal(9));
        assert_eq!(exit_kind(15 | 0x80), ExitKind::Signal(15), "core dumped");
    }

    #[test]
    fn far_future_is_far() {
        let now = Instant::now();
        assert!(far_future(now) > now + Duration::from_secs(3600 * 24 * 365));
    }
}
