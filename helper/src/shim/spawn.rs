//! Starting the task process. Everything it needs (C strings, pointer
//! arrays, descriptors, rlimit values) is prepared first; the child runs
//! [`sys::spawn_task`]'s code, which makes only async-signal-safe calls.
//! Whether the exec happened is learned from a close-on-exec "exec status"
//! pipe: end-of-file means execve succeeded, five bytes mean a step failed
//! (which one, and its errno).
//!
//! The child is started posix_spawn-style, not forked: clone with
//! `CLONE_VM | CLONE_VFORK` on a stack of its own, so no page table is
//! copied and no copy-on-write fault follows in either process.
//!
//! The claim's directory fsync comes before the spawn, on the shim's only
//! thread, where it overlaps nothing: with CLONE_VFORK the shim is
//! suspended while its child sets up, so only a second thread could fsync
//! meanwhile, and starting one costs more than the set-up it would hide.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::Resource;

use crate::rlimits;
use crate::sys::{self, ChildSetup, ChildStep, ExecImage, CHILD_STATUS_LEN};
use execgo_runtime_protocol::SandboxSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("building the task's argv and environment failed")]
    Image(#[source] std::ffi::NulError),
    #[error("creating the exec status pipe failed")]
    Pipe(#[source] Errno),
    #[error("starting the task process failed")]
    Clone(#[source] Errno),
    #[error("reading the exec status pipe failed")]
    Status(#[source] Errno),
    /// The message the contract shows for a program that cannot run.
    #[error("failed to execute '{program}': {}", std::io::Error::from_raw_os_error(*errno))]
    Exec { program: String, errno: i32 },
    #[error("setting up the task process failed at {}: {}", step.name(), std::io::Error::from_raw_os_error(*errno))]
    Setup { step: ChildStep, errno: i32 },
    /// The claim could not be made durable while the sandbox was set up:
    /// the task was stopped at the gate, before it could exec.
    #[error("making the claim durable failed; the task was not started")]
    Durable(#[source] super::claim::ClaimError),
}

impl SpawnError {
    /// A step of the sandbox's own set-up failed (`sandbox_setup_failed`,
    /// not `launch_failed`).
    pub fn is_sandbox_setup(&self) -> bool {
        matches!(
            self,
            SpawnError::Setup {
                step: ChildStep::Mounts
                    | ChildStep::Hostname
                    | ChildStep::Loopback
                    | ChildStep::NetNamespace
                    | ChildStep::Fork
                    | ChildStep::Seccomp,
                ..
            }
        )
    }
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

/// Everything prepared for the spawn.
pub struct Plan {
    pub image: ExecImage,
    pub program: String,
    pub cpu: Option<(u64, u64)>,
    pub address_space: Option<(u64, u64)>,
    /// (uid, gid) the task runs as; `None`: as the shim.
    pub identity: Option<(u32, u32)>,
    /// The seccomp filters of the task's profile, loaded last before exec;
    /// `None`: none (a process task where the host has no seccomp).
    pub seccomp: Option<[seccompiler::BpfProgram; 2]>,
    /// `linux_sandbox`: its namespaces.
    pub sandbox: Option<SandboxPlan>,
    /// The task starts in a pid namespace the shim joined for its children
    /// (sidecar mode), where its parent, outside, shows as pid 0.
    pub joined_pid_ns: bool,
}

/// What a `linux_sandbox` task gets beyond a process task's set-up.
pub struct SandboxPlan {
    pub spec: SandboxSpec,
    /// The rootfs directory the helper opened, when the task has one.
    pub rootfs: Option<RawFd>,
    /// The spare network namespace the helper handed over, if any.
    pub netns: Option<RawFd>,
}

impl Plan {
    pub fn new(
        resolved: &[PathBuf],
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
            identity: None,
            seccomp: None,
            sandbox: None,
            joined_pid_ns: false,
        })
    }
}

/// Starts the task. Returns once it has exec'd, or failed to. The caller
/// has SIGCHLD blocked (and a signalfd for it), so the child's exit cannot
/// be missed.
///
/// `claim_dir`, for a sandbox only: the task directory whose fsync makes
/// the claim durable. It is done here, while the sandbox child sets up
/// (namespaces, mounts), which waits at a gate for it before it starts the
/// task: the task still never execs before its claim is durable.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    plan: &Plan,
    io: &super::stdio::TaskStdio,
    cwd: &OwnedFd,
    cgroup_join: &[OwnedFd],
    report: Option<&OwnedFd>,
    claim_dir: Option<BorrowedFd<'_>>,
) -> Result<Started, SpawnError> {
    let cgroup_join: Vec<RawFd> = cgroup_join.iter().map(AsRawFd::as_raw_fd).collect();
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let gate = match (&plan.sandbox, claim_dir) {
        (Some(_), Some(_)) => Some(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?),
        _ => None,
    };
    let setup = ChildSetup {
        image: &plan.image,
        stdin: io.stdin.as_raw_fd(),
        stdout: io.stdout.as_raw_fd(),
        stderr: io.stderr.as_raw_fd(),
        script: io.script.as_ref().map(AsRawFd::as_raw_fd),
        cwd: cwd.as_raw_fd(),
        cpu: plan.cpu,
        address_space: plan.address_space,
        nofile: rlimits::task_nofile(),
        identity: plan.identity,
        // getppid(2) answers 0 for a parent outside the caller's pid
        // namespace.
        parent: if plan.joined_pid_ns {
            0
        } else {
            nix::unistd::getpid().as_raw()
        },
        cgroup_join: &cgroup_join,
        own_group: true,
        seccomp: plan.seccomp.as_ref().map_or(&[], |s| &s[..]),
        status_fd: status_w.as_raw_fd(),
    };
    // Back here, the child has exec'd or exited.
    let pid = match &plan.sandbox {
        None => sys::spawn_task(&setup),
        Some(sb) => sys::spawn_sandboxed(
            &setup,
            &sys::SandboxSetup {
                mount: sb.spec.mount,
                pid: sb.spec.pid,
                uts: sb.spec.uts,
                ipc: sb.spec.ipc,
                net: sb.spec.net,
                report_fd: report.map_or(-1, AsRawFd::as_raw_fd),
                rootfs: sb.rootfs,
                netns: sb.netns,
                gate: gate.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd())),
            },
        ),
    }
    .map_err(SpawnError::Clone)?;
    drop(status_w);
    // The claim's fsync, while the sandbox child sets up; then the gate
    // opens (one byte), or closes unopened (end of file) if it failed.
    let durable = match (gate, claim_dir) {
        (Some((gate_r, gate_w)), Some(dir)) => {
            drop(gate_r);
            let synced = super::claim::make_durable(dir);
            if synced.is_ok() {
                // EPIPE only if the child is gone already: its status says
                // why.
                let _ = nix::unistd::write(&gate_w, b"1");
            }
            synced
        }
        _ => Ok(()),
    };
    // Usually end-of-file at once; the exec closes the pipe a little after
    // the moment it lets us go on.
    let status = read_status(&status_r)?;
    if let Err(e) = durable {
        // Stopped at the gate (or exec'd before? impossible: it waits).
        let _ = sys::wait4(pid.as_raw(), false);
        return Err(SpawnError::Durable(e));
    }
    let at = Instant::now();
    match status.map(|b| decode_status(&b)) {
        None => Ok(Started {
            pid: pid.as_raw(),
            started_at: execgo_runtime_protocol::taskdir::now_rfc3339(),
            at,
        }),
        Some((step, errno)) => {
            // The child exits 127 right after writing; reap it here so the
            // event loop never sees it.
            let _ = sys::wait4(pid.as_raw(), false);
            Err(match step {
                ChildStep::Exec => SpawnError::Exec {
                    program: plan.program.clone(),
                    errno,
                },
                step => SpawnError::Setup { step, errno },
            })
        }
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
    use crate::shim::stdio::TaskStdio;
    use nix::sys::stat::Mode;
    use std::path::Path;

    /// `path` opened close-on-exec (created 0600 with `O_CREAT`).
    fn open(path: &Path, flags: OFlag) -> OwnedFd {
        sys::open(
            path,
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .unwrap()
    }

    /// Spawns `program` with `argv` in a fresh directory, its stdout in
    /// `out` there.
    fn spawn_in_tmp(
        program: &str,
        argv: &[&str],
    ) -> (Result<Started, SpawnError>, tempfile::TempDir) {
        spawn_filtered(program, argv, None)
    }

    /// [`spawn_in_tmp`], the task under `seccomp`.
    fn spawn_filtered(
        program: &str,
        argv: &[&str],
        seccomp: Option<[seccompiler::BpfProgram; 2]>,
    ) -> (Result<Started, SpawnError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let mut plan = Plan::new(&[PathBuf::from(program)], &argv, &[], None, None).unwrap();
        plan.seccomp = seccomp;
        let null = || open(Path::new("/dev/null"), OFlag::O_RDWR);
        let out = open(&tmp.path().join("out"), OFlag::O_WRONLY | OFlag::O_CREAT);
        let cwd = open(tmp.path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        let io = TaskStdio {
            stdin: null(),
            stdout: out,
            stderr: null(),
            script: None,
        };
        (spawn(&plan, &io, &cwd, &[], None, None), tmp)
    }

    /// A sandbox (uts namespace only: its child allocates nothing, so it is
    /// sound to clone from the test harness's threads) whose claim's fsync
    /// runs during the spawn: the task starts only when it succeeded.
    fn spawn_gated(claim_dir_flags: OFlag) -> (Result<Started, SpawnError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["sh", "-c", "hostname > ran"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let mut plan = Plan::new(&[PathBuf::from("/bin/sh")], &argv, &[], None, None).unwrap();
        plan.seccomp = Some(crate::seccomp::sandbox_filters().unwrap());
        plan.sandbox = Some(SandboxPlan {
            spec: SandboxSpec {
                mount: false,
                pid: false,
                uts: true,
                ipc: false,
                net: false,
                rootfs: None,
            },
            rootfs: None,
            netns: None,
        });
        let null = || open(Path::new("/dev/null"), OFlag::O_RDWR);
        let cwd = open(tmp.path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        let claim_dir = open(tmp.path(), claim_dir_flags | OFlag::O_DIRECTORY);
        let io = TaskStdio {
            stdin: null(),
            stdout: null(),
            stderr: null(),
            script: None,
        };
        let started = spawn(&plan, &io, &cwd, &[], None, Some(claim_dir.as_fd()));
        (started, tmp)
    }

    #[test]
    fn a_sandbox_task_starts_once_its_claim_is_durable() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a uts namespace needs root");
            return;
        }
        let (started, tmp) = spawn_gated(OFlag::O_RDONLY);
        let started = started.unwrap();
        assert_eq!(exit_code(started.pid), 0);
        let ran = std::fs::read_to_string(tmp.path().join("ran")).unwrap();
        assert_eq!(ran.trim_end(), "execgo-sandbox");
    }

    #[test]
    fn a_sandbox_task_never_starts_when_its_claim_cannot_be_made_durable() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a uts namespace needs root");
            return;
        }
        // fsync(2) of an O_PATH descriptor fails (EBADF).
        let (started, tmp) = spawn_gated(OFlag::O_PATH);
        assert!(
            matches!(started, Err(SpawnError::Durable(_))),
            "{started:?}"
        );
        assert!(
            !tmp.path().join("ran").exists(),
            "the task ran without a durable claim"
        );
    }

    fn exit_code(pid: i32) -> i32 {
        let (_, status, _) = sys::wait4(pid, false).unwrap().unwrap();
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_task_runs_set_up_as_asked() {
        let (started, tmp) = spawn_in_tmp(
            "/bin/sh",
            &[
                "sh",
                "-c",
                // The mask is read by the shell's own image (exec): dash
                // blocks every signal while it vforks a child, so a child
                // reading /proc/$$ can catch it in that window.
                "pwd; cut -d' ' -f5 /proc/$$/stat; exec grep -E '^Sig(Blk|Ign)' /proc/self/status",
            ],
        );
        let started = started.unwrap();
        assert_eq!(exit_code(started.pid), 0);
        let out = std::fs::read_to_string(tmp.path().join("out")).unwrap();
        let mut lines = out.lines();
        assert_eq!(
            Path::new(lines.next().unwrap()).canonicalize().unwrap(),
            tmp.path().canonicalize().unwrap()
        );
        assert_eq!(
            lines.next().unwrap().trim(),
            started.pid.to_string(),
            "own group"
        );
        assert_eq!(lines.next(), Some("SigBlk:\t0000000000000000"));
        // Whatever the test runner ignores stays ignored; SIGPIPE, which
        // std ignores (as the helper does), is back to the default.
        let ign = lines.next().unwrap().strip_prefix("SigIgn:\t").unwrap();
        let ign = u64::from_str_radix(ign, 16).unwrap();
        assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "{ign:x}");
    }

    #[test]
    fn a_process_task_runs_under_its_filter() {
        let (started, tmp) = spawn_filtered(
            "/bin/sh",
            &[
                "sh",
                "-c",
                "grep '^Seccomp:' /proc/self/status
                 unshare -U true 2>/dev/null && echo unshared || echo refused
                 sh -c 'echo forked' && ls / >/dev/null && echo listed",
            ],
            Some(crate::seccomp::process_filters().unwrap()),
        );
        let started = started.unwrap();
        assert_eq!(exit_code(started.pid), 0);
        let out = std::fs::read_to_string(tmp.path().join("out")).unwrap();
        assert_eq!(out, "Seccomp:\t2\nrefused\nforked\nlisted\n");
    }

    #[test]
    fn a_failed_exec_is_reported() {
        let (started, tmp) = spawn_in_tmp("/no/such/program", &["nope"]);
        assert!(
            matches!(
                started,
                Err(SpawnError::Exec {
                    errno: libc::ENOENT,
                    ..
                })
            ),
            "{started:?}"
        );
        drop(tmp);
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
