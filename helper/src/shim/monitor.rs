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
//! * The task's output pipes: relayed into the logs ([`Relay`]), so the
//!   task never blocks on them.
//! * The report of a pid namespace's init (a `linux_sandbox` task with a
//!   pid namespace): the task and everything else of the namespace are
//!   dead and reaped, so the loop ends on it, with the task's status and
//!   usage, while the init itself still exits (see [`Ended::init`]).
//!
//! The main process is first *observed* dead with `waitid(WNOWAIT)`, then
//! its group is SIGKILLed, and only then is it reaped: while it is an
//! unreaped zombie its pid, and so the group id, cannot be reused by an
//! unrelated process that the group kill would hit.
//!
//! A task that keeps its descendants (`LaunchSpec::keep_descendants`, for
//! OpenSandbox's bootstrap pattern) is not group-killed when its main
//! process exits on its own; [`Leftovers::keep`] then watches what it left
//! running until a kill byte (or until nothing is left).

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
use super::relay::Relay;
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
    /// Leave what the main process left running when it exits on its own
    /// (a kill or a timeout still kills the whole task).
    pub keep_descendants: bool,
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
    /// Follows the task to its end, relaying its output meanwhile.
    pub fn run(&self, relay: &mut Relay) -> Result<Ended, MonitorError> {
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
            let (chld, ctl, rep, output) = {
                let mut fds = vec![
                    PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                ];
                let has_report = report.is_some();
                fds.extend(report.map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN)));
                let first_output = fds.len();
                let streams: Vec<usize> = relay
                    .open_fds()
                    .map(|(i, fd)| {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        i
                    })
                    .collect();
                match poll(
                    &mut fds,
                    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
                ) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(MonitorError::Poll(e)),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                let output: Vec<usize> = streams
                    .iter()
                    .zip(&fds[first_output..])
                    .filter(|(_, f)| ready(f))
                    .map(|(i, _)| *i)
                    .collect();
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    has_report && ready(&fds[2]),
                    output,
                )
            };
            for i in output {
                relay.pump(i);
            }
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
                if let Some((status, usage)) = self.reap(&st)? {
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
    fn reap(&self, st: &State) -> Result<Option<(i32, Rusage)>, MonitorError> {
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
                // Still a zombie: the group id is pinned, kill what is left
                // (unless it is to be kept: it ended by itself).
                if !self.keep_descendants || st.kill_requested || st.timed_out {
                    self.signal_group(Signal::SIGKILL);
                }
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

/// How often, while killing what a task left running, the shim sweeps its
/// children again for orphans that came to it since (their parents died).
const SWEEP: Duration = Duration::from_millis(50);

/// How often the shim looks whether the main process's group has emptied
/// when none of its members is its child.
const GROUP_POLL: Duration = Duration::from_millis(200);

/// What a task that keeps its descendants (`LaunchSpec::keep_descendants`)
/// left running after its main process exited: the shim's children (every
/// orphan of the task comes to it, the subreaper), the main process's
/// group, the task's cgroups.
pub struct Leftovers<'a> {
    /// The main process's pid, which is its group's id.
    pub pgid: Pid,
    /// The shim's `/proc/thread-self`, opened before it joined any mount
    /// namespace (sidecar mode), whose `children` lists its children.
    pub thread_dir: Option<std::os::fd::BorrowedFd<'a>>,
    pub cgroups: Option<&'a TaskCgroups>,
    pub grace: Duration,
    pub sigchld: &'a SignalFd,
    pub control: &'a File,
}

impl Leftovers<'_> {
    /// Waits until nothing of the task is left, or until a kill byte, and
    /// then stops what is left like a task (SIGTERM and SIGCONT, the grace,
    /// SIGKILL) until nothing is. `kill_now`: the task was killed or timed
    /// out already, so its leftovers are killed at once.
    pub fn keep(&self, kill_now: bool, relay: &mut Relay) -> Result<(), MonitorError> {
        let mut grace_deadline: Option<Instant> = None;
        let mut killing = kill_now;
        if kill_now {
            self.log("the task was stopped; killing what it left running");
        }
        loop {
            // Orphans come to us (the subreaper), except in a pid namespace
            // we are not in (sidecar mode): they go to its init, and only
            // the main process's group still finds them.
            let children_left = reap_all()?;
            let group_left = killpg(self.pgid, None).is_ok();
            if !children_left && !group_left {
                return Ok(());
            }
            let now = Instant::now();
            if !killing && deadline::reached(now, grace_deadline) {
                self.log("grace period over; killing what the task left running");
                killing = true;
            }
            if killing {
                // Again on every pass: an orphan of a killed process comes
                // to us after the sweep before.
                self.signal(Signal::SIGKILL);
            }
            let next = if killing {
                deadline::after(now, SWEEP)
            } else if !children_left {
                // No SIGCHLD tells when the group empties: look again.
                [grace_deadline, deadline::after(now, GROUP_POLL)]
                    .into_iter()
                    .flatten()
                    .min()
            } else {
                grace_deadline
            };
            let timeout = deadline::poll_timeout_ms(now, next);
            let (chld, ctl, output) = {
                let mut fds = vec![
                    PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.control.as_fd(), PollFlags::POLLIN),
                ];
                let streams: Vec<usize> = relay
                    .open_fds()
                    .map(|(i, fd)| {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        i
                    })
                    .collect();
                match poll(
                    &mut fds,
                    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
                ) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(MonitorError::Poll(e)),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                let output: Vec<usize> = streams
                    .iter()
                    .zip(&fds[2..])
                    .filter(|(_, f)| ready(f))
                    .map(|(i, _)| *i)
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), output)
            };
            // What the task left running writes on: relayed as before.
            for i in output {
                relay.pump(i);
            }
            if ctl && control::take_kill(self.control)? && !killing && grace_deadline.is_none() {
                self.log("kill requested; terminating what the task left running");
                self.signal(Signal::SIGTERM);
                self.signal(Signal::SIGCONT);
                let now = Instant::now();
                grace_deadline = deadline::after(now, self.grace).or(Some(far_future(now)));
            }
            if chld {
                drain_signalfd(self.sigchld)?;
            }
        }
    }

    /// Signals the cgroups, the shim's children and the main process's
    /// group while it has members (a group id is not reused while it has;
    /// the check comes right before the signal).
    fn signal(&self, sig: Signal) {
        if let Some(cg) = self.cgroups {
            match sig {
                Signal::SIGKILL => cg.kill_now(&HostFs),
                sig => cg.signal(sig, &HostFs),
            }
        }
        let children = self.thread_dir.map(own_children).unwrap_or_default();
        let mut group_alive = false;
        for child in &children {
            // Our children: their pids are pinned until we reap them.
            let _ = nix::sys::signal::kill(*child, sig);
            group_alive |= nix::unistd::getpgid(Some(*child)) == Ok(self.pgid);
        }
        if group_alive || killpg(self.pgid, None).is_ok() {
            let _ = killpg(self.pgid, sig);
        }
    }

    fn log(&self, message: &str) {
        logging::shim_info!("{message}");
    }
}

/// Reaps every exited child; whether any child is left.
fn reap_all() -> Result<bool, MonitorError> {
    loop {
        match sys::wait4(-1, true) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(true),
            Err(Errno::ECHILD) => return Ok(false),
            Err(e) => return Err(MonitorError::Wait(e)),
        }
    }
}

/// The shim's children, from `children` in its `/proc/thread-self` (it is
/// single-threaded: its one thread's list is all of them).
fn own_children(thread_dir: std::os::fd::BorrowedFd<'_>) -> Vec<Pid> {
    use std::io::Read;
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let Ok(fd) = sys::openat(thread_dir, "children", flags, nix::sys::stat::Mode::empty()) else {
        return Vec::new();
    };
    let mut text = String::new();
    if File::from(fd).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
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
