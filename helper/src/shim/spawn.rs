//! Forking the task process, in two halves. Everything it needs (C strings,
//! pointer arrays, descriptors, rlimit values) is prepared before the fork;
//! the child runs [`sys::exec_child`], which makes only async-signal-safe
//! calls.
//!
//! [`start`] forks the child, which does its whole set-up and then waits,
//! right before execve, for one byte on a close-on-exec "go" pipe. The shim
//! meanwhile makes its claim durable (a directory fsync), so the fsync and
//! the fork and the child's set-up overlap instead of following each other.
//! Then [`Held::release`] sends the go, or [`Held::abort`] kills the child,
//! which never exec'd. A child whose shim dies before the go reads
//! end-of-file and exits without exec'ing: no task runs unclaimed.
//!
//! Whether the exec happened is learned from a close-on-exec "exec status"
//! pipe: end-of-file means execve succeeded, five bytes mean a step failed
//! (which one, and its errno).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::Resource;
use nix::unistd::Pid;

use crate::rlimits;
use crate::sys::{self, ChildSetup, ChildStep, ExecImage, Forked, CHILD_STATUS_LEN};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("building the task's argv and environment failed")]
    Image(#[source] std::ffi::NulError),
    #[error("creating the exec status or go pipe failed")]
    Pipe(#[source] Errno),
    #[error("forking the task process failed")]
    Fork(#[source] Errno),
    #[error("reading the exec status pipe failed")]
    Status(#[source] Errno),
    /// The message the contract shows for a program that cannot run.
    #[error("failed to execute '{program}': {}", std::io::Error::from_raw_os_error(*errno))]
    Exec { program: String, errno: i32 },
    #[error("setting up the task process failed at {}: {}", step.name(), std::io::Error::from_raw_os_error(*errno))]
    Setup { step: ChildStep, errno: i32 },
}

/// What is known once the task runs.
#[derive(Debug, Clone)]
pub struct Started {
    /// Pid of the task, also its process group id.
    pub pid: i32,
    /// RFC 3339 time of the exec.
    pub started_at: String,
    /// Monotonic time of the exec; wall time and duration count from it.
    pub at: Instant,
}

/// Everything prepared for the fork.
pub struct Plan {
    pub image: ExecImage,
    pub program: String,
    pub cpu: Option<(u64, u64)>,
    pub address_space: Option<(u64, u64)>,
}

impl Plan {
    pub fn new(
        resolved: &Path,
        argv: &[String],
        env: &[(String, String)],
        cpu_time_sec: Option<u64>,
        memory_bytes: Option<u64>,
    ) -> Result<Plan, SpawnError> {
        Ok(Plan {
            image: ExecImage::new(resolved, argv, env).map_err(SpawnError::Image)?,
            program: argv.first().cloned().unwrap_or_default(),
            cpu: cpu_time_sec
                .map(|s| rlimits::cpu_pair(s, rlimits::current_hard(Resource::RLIMIT_CPU))),
            address_space: memory_bytes.map(|b| {
                rlimits::address_space_pair(b, rlimits::current_hard(Resource::RLIMIT_AS))
            }),
        })
    }
}

/// A task child that did (or is doing) its set-up and waits for the go
/// before its execve.
#[derive(Debug)]
pub struct Held {
    pid: Pid,
    status: OwnedFd,
    go: OwnedFd,
    program: String,
}

/// Forks the task child, which sets itself up and waits for the go. The
/// caller has SIGCHLD blocked (and a signalfd for it), so the child's exit
/// cannot be missed.
pub fn start(
    plan: &Plan,
    stdin: &OwnedFd,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    cwd: &OwnedFd,
) -> Result<Held, SpawnError> {
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let setup = ChildSetup {
        image: &plan.image,
        stdin: stdin.as_raw_fd(),
        stdout: stdout.as_raw_fd(),
        stderr: stderr.as_raw_fd(),
        cwd: cwd.as_raw_fd(),
        cpu: plan.cpu,
        address_space: plan.address_space,
        status_fd: status_w.as_raw_fd(),
        go_fd: go_r.as_raw_fd(),
        go_write_fd: go_w.as_raw_fd(),
    };
    let pid = match sys::fork().map_err(SpawnError::Fork)? {
        Forked::Child => sys::exec_child(&setup),
        Forked::Parent(pid) => pid,
    };
    drop(status_w);
    drop(go_r);
    // The child does the same; whichever runs first wins, and the other
    // gets ESRCH (the child already died). Any other failure would also
    // show in the child's own setpgid, which reports it over the pipe.
    let _ = nix::unistd::setpgid(pid, pid);
    Ok(Held {
        pid,
        status: status_r,
        go: go_w,
        program: plan.program.clone(),
    })
}

impl Held {
    /// Lets the child exec, and learns whether it did.
    pub fn release(self) -> Result<Started, SpawnError> {
        // EPIPE: the child already failed a set-up step and exited; the
        // status pipe says which. Whatever else goes wrong, closing the go
        // pipe just below stops the child before its exec, and the status
        // pipe says that too.
        let _ = nix::unistd::write(&self.go, &[sys::GO]);
        drop(self.go);
        let status = read_status(&self.status)?;
        let at = Instant::now();
        match status.map(|b| decode_status(&b)) {
            None => Ok(Started {
                pid: self.pid.as_raw(),
                started_at: crate::clock::now_rfc3339(),
                at,
            }),
            Some((step, errno)) => {
                // The child exits 127 right after writing; reap it here so
                // the event loop never sees it.
                let _ = sys::wait4(self.pid.as_raw(), false);
                Err(match step {
                    ChildStep::Exec => SpawnError::Exec {
                        program: self.program,
                        errno,
                    },
                    step => SpawnError::Setup { step, errno },
                })
            }
        }
    }

    /// Stops the child before its exec, for good, and reaps it: it is
    /// killed, and the go pipe closes with no go in it.
    pub fn abort(self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        drop(self.go);
        let _ = sys::wait4(self.pid.as_raw(), false);
    }
}

/// Reads the exec-status pipe to end-of-file: `None` when it stayed empty.
fn read_status(pipe: &OwnedFd) -> Result<Option<[u8; CHILD_STATUS_LEN]>, SpawnError> {
    let mut buf = [0u8; CHILD_STATUS_LEN];
    let mut got = 0;
    loop {
        match nix::unistd::read(pipe.as_fd().as_raw_fd(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == buf.len() {
                    break;
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SpawnError::Status(e)),
        }
    }
    Ok(if got == 0 { None } else { Some(buf) })
}

/// Decodes an exec-status message into the failed step and its errno. An
/// unknown step reads as the exec itself.
pub fn decode_status(buf: &[u8; CHILD_STATUS_LEN]) -> (ChildStep, i32) {
    let step = ChildStep::from_u8(buf[0]).unwrap_or(ChildStep::Exec);
    let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
    (step, errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;

    /// A held `sh -c ': > ran'` in a fresh directory, and that directory.
    fn held_child() -> (Held, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let argv = ["sh".to_string(), "-c".into(), ": > ran".into()];
        let plan = Plan::new(Path::new("/bin/sh"), &argv, &[], None, None).unwrap();
        let null = || {
            sys::open(
                Path::new("/dev/null"),
                OFlag::O_RDWR | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        let cwd = sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let held = start(&plan, &null(), &null(), &null(), &cwd).unwrap();
        (held, tmp)
    }

    fn exit_code(pid: Pid) -> i32 {
        let (_, status, _) = sys::wait4(pid.as_raw(), false).unwrap().unwrap();
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn a_held_child_execs_only_on_the_go() {
        let (held, tmp) = held_child();
        // Held: set up, but not run, however long we wait.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!tmp.path().join("ran").exists());
        let pid = held.pid;
        let started = held.release().unwrap();
        assert_eq!(started.pid, pid.as_raw());
        assert_eq!(exit_code(pid), 0);
        assert!(tmp.path().join("ran").exists());
    }

    #[test]
    fn an_aborted_child_never_execs() {
        let (held, tmp) = held_child();
        held.abort();
        assert!(!tmp.path().join("ran").exists());
    }

    #[test]
    fn a_child_whose_shim_is_gone_never_execs() {
        let (held, tmp) = held_child();
        let pid = held.pid;
        // What the shim's death does: its end of the go pipe closes.
        drop(held);
        assert_eq!(exit_code(pid), 127);
        assert!(!tmp.path().join("ran").exists());
    }

    #[test]
    fn status_messages() {
        let e = (libc::ENOENT).to_le_bytes();
        let msg = [ChildStep::Exec as u8, e[0], e[1], e[2], e[3]];
        assert_eq!(decode_status(&msg), (ChildStep::Exec, libc::ENOENT));
        let msg = [ChildStep::Chdir as u8, 13, 0, 0, 0];
        assert_eq!(decode_status(&msg), (ChildStep::Chdir, 13));
    }

    #[test]
    fn messages_read_like_the_contract() {
        let e = SpawnError::Exec {
            program: "nope".into(),
            errno: libc::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "failed to execute 'nope': No such file or directory (os error 2)"
        );
        let e = SpawnError::Setup {
            step: ChildStep::Chdir,
            errno: libc::EACCES,
        };
        assert!(e
            .to_string()
            .starts_with("setting up the task process failed at fchdir: "));
    }
}
