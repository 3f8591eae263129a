//! The task child: its posix_spawn-style start from the shim
//! ([`spawn_task`]) and the code it runs, in the shim's memory, until
//! execve ([`exec_child`]).
#![allow(unsafe_code)]

use std::ffi::{c_char, CString, NulError};
use std::os::fd::RawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::resource::Resource;
use nix::unistd::Pid;

use super::process::exit_now;
use super::signals::{HANDLED_BY_STD, IGNORED_BY_US};
use super::stack::ChildStack;
use execgo_runtime_protocol::SCRIPT_FD;

/// The program's candidate paths (tried in order, see
/// [`exec_candidates`]), its argv and its envp as C strings, with the
/// pointer arrays execve(2) wants, all built before the spawn so the child
/// allocates nothing.
pub struct ExecImage {
    paths: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

impl ExecImage {
    pub fn new(
        paths: &[impl AsRef<Path>],
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<Self, NulError> {
        use std::os::unix::ffi::OsStrExt;
        let paths = paths
            .iter()
            .map(|p| CString::new(p.as_ref().as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        // The pointers stay valid while the CStrings live: a CString's bytes
        // are on the heap and do not move when the vectors holding them do.
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(ExecImage {
            paths,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }
}

/// The step of the task child's set-up that failed, sent to the shim over
/// the exec-status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChildStep {
    SetPgid = 1,
    SignalMask = 2,
    RlimitCpu = 3,
    RlimitAs = 4,
    Stdio = 5,
    Chdir = 6,
    Exec = 7,
    Groups = 8,
    Gid = 9,
    Uid = 10,
    Capabilities = 11,
    NoNewPrivs = 12,
    ParentDeath = 13,
    Cgroup = 14,
    Mounts = 15,
    Hostname = 16,
    Loopback = 17,
    Fork = 18,
    Seccomp = 19,
    RlimitNofile = 20,
    NetNamespace = 21,
    ClaimGate = 22,
    Script = 23,
}

impl ChildStep {
    pub fn from_u8(b: u8) -> Option<Self> {
        [
            ChildStep::SetPgid,
            ChildStep::SignalMask,
            ChildStep::RlimitCpu,
            ChildStep::RlimitAs,
            ChildStep::Stdio,
            ChildStep::Chdir,
            ChildStep::Exec,
            ChildStep::Groups,
            ChildStep::Gid,
            ChildStep::Uid,
            ChildStep::Capabilities,
            ChildStep::NoNewPrivs,
            ChildStep::ParentDeath,
            ChildStep::Cgroup,
            ChildStep::Mounts,
            ChildStep::Hostname,
            ChildStep::Loopback,
            ChildStep::Fork,
            ChildStep::Seccomp,
            ChildStep::RlimitNofile,
            ChildStep::NetNamespace,
            ChildStep::ClaimGate,
            ChildStep::Script,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            ChildStep::SetPgid => "setpgid",
            ChildStep::SignalMask => "signal reset (sigaction, sigprocmask)",
            ChildStep::RlimitCpu => "setrlimit RLIMIT_CPU",
            ChildStep::RlimitAs => "setrlimit RLIMIT_AS",
            ChildStep::Stdio => "dup2",
            ChildStep::Chdir => "fchdir",
            ChildStep::Exec => "execve",
            ChildStep::Groups => "setgroups",
            ChildStep::Gid => "setresgid",
            ChildStep::Uid => "setresuid",
            ChildStep::Capabilities => "capset",
            ChildStep::NoNewPrivs => "prctl PR_SET_NO_NEW_PRIVS",
            ChildStep::ParentDeath => "prctl PR_SET_PDEATHSIG (or the shim is gone)",
            ChildStep::Cgroup => "joining the task's cgroup",
            ChildStep::Mounts => "setting up the sandbox's mounts",
            ChildStep::Hostname => "sethostname",
            ChildStep::Loopback => "bringing up lo",
            ChildStep::Fork => "fork of the task by the sandbox's init",
            ChildStep::Seccomp => "loading the seccomp filter",
            ChildStep::RlimitNofile => "setrlimit RLIMIT_NOFILE",
            ChildStep::NetNamespace => "joining the spare network namespace (setns)",
            ChildStep::Script => "putting the script at descriptor 3",
            ChildStep::ClaimGate => {
                "waiting for the shim to make the claim durable (it failed, or the shim is gone)"
            }
        }
    }
}

/// Length of a message on the exec-status pipe: the step, then the errno
/// as 4 little-endian bytes.
pub const CHILD_STATUS_LEN: usize = 5;

/// Everything the task child needs, prepared before [`spawn_task`].
#[derive(Clone, Copy)]
pub struct ChildSetup<'a> {
    pub image: &'a ExecImage,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// A script task's script, put at [`SCRIPT_FD`] without close-on-exec.
    pub script: Option<RawFd>,
    pub cwd: RawFd,
    /// (soft, hard) RLIMIT_CPU in seconds.
    pub cpu: Option<(u64, u64)>,
    /// (soft, hard) RLIMIT_AS in bytes.
    pub address_space: Option<(u64, u64)>,
    /// (soft, hard) RLIMIT_NOFILE: the limit the helper found at start,
    /// before it raised its own.
    pub nofile: Option<(u64, u64)>,
    /// (uid, gid) to switch to, with no supplementary groups; `None`
    /// keeps ours.
    pub identity: Option<(u32, u32)>,
    /// The shim's pid: the child dies with it (PR_SET_PDEATHSIG) and
    /// checks it is still its parent once that is armed.
    pub parent: i32,
    /// The join file of each of the task's cgroups, open for writing
    /// (see `TaskCgroups::join_fds`).
    pub cgroup_join: &'a [RawFd],
    /// Make a process group of its own (false: stay in the sandbox
    /// init's, made before).
    pub own_group: bool,
    /// seccomp filters to load last, in order.
    pub seccomp: &'a [seccompiler::BpfProgram],
    /// Write end of the close-on-exec exec-status pipe.
    pub status_fd: RawFd,
}

/// Writes the failed step and errno to the exec-status pipe and exits 127.
pub(super) fn child_fail(status_fd: RawFd, step: ChildStep) -> ! {
    let errno = Errno::last_raw().to_le_bytes();
    let msg: [u8; CHILD_STATUS_LEN] = [step as u8, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: write(2) reads CHILD_STATUS_LEN bytes from a live stack array.
    unsafe { libc::write(status_fd, msg.as_ptr().cast(), msg.len()) };
    exit_now(127)
}

/// Size of the stack the task child runs on until its exec: [`exec_child`]
/// and the libc wrappers it calls need a few KiB; debug builds more.
const CHILD_STACK: usize = 64 * 1024;

/// Starts the task child the way posix_spawn does: clone(2) with
/// `CLONE_VM | CLONE_VFORK` on a stack of its own, so no page table is
/// copied and no copy-on-write fault follows. The child runs
/// [`exec_child`] in the shim's memory, and this returns once it has
/// exec'd or exited (the calling thread is suspended until then); its
/// outcome is on the exec-status pipe.
///
/// Why this is sound: the child touches no memory but its own stack, the
/// prepared `setup` (read only) and the calling thread's `errno` (that
/// thread is suspended, and the shim has no other), and makes only
/// async-signal-safe libc calls, which are thin wrappers of system calls:
/// no allocation, no lock, no unwinding (nothing in it can panic), so
/// nothing it could leave half-changed in memory the shim then uses. Every
/// signal is blocked across the clone, so no handler of ours ever runs in
/// the child, which puts the dispositions back before it unblocks them
/// (glibc leaves its own two real-time signals unblocked; the shim has no
/// handler for them, see [`HANDLED_BY_STD`]). It has its own descriptor
/// table, signal dispositions, rlimits and working directory (no
/// `CLONE_FILES`, `CLONE_SIGHAND`, `CLONE_FS`), so its set-up changes
/// nothing of ours. Its stack is ours to free once this returns: the child
/// has exec'd (a new address space) or exited by then.
pub fn spawn_task(setup: &ChildSetup<'_>) -> nix::Result<Pid> {
    let stack = ChildStack::new(CHILD_STACK)?;
    let arg: *const ChildSetup<'_> = setup;
    let cloned = super::signals::clone_with_signals_blocked(|| {
        // SAFETY: see above. `child_main` never returns; `stack` and
        // `setup` outlive the child's use of them, since CLONE_VFORK
        // returns only once the child has exec'd or exited.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg.cast_mut().cast(),
            )
        };
        libc::c_long::from(pid)
    });
    drop(stack);
    cloned
}

/// The task child's entry point, on its own stack.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&ChildSetup` that `spawn_task` passed to clone;
    // its thread is suspended until we exec or exit, so it is alive and
    // unchanged.
    let setup = unsafe { &*arg.cast_const().cast::<ChildSetup<'_>>() };
    exec_child(setup)
}

/// Runs in the task child, started by [`spawn_task`] with every signal
/// blocked: its cgroups, own process group, default dispositions ([`IGNORED_BY_US`],
/// [`HANDLED_BY_STD`]), rlimits, stdio, working directory, identity and
/// privileges ([`drop_privileges`]), an empty signal mask, then execve. Only async-signal-safe calls on prepared values; no
/// allocation, no logging. On failure the step and errno go to the
/// exec-status pipe.
pub(super) fn exec_child(s: &ChildSetup<'_>) -> ! {
    // Into the task's cgroups first, so nothing it ever starts is outside
    // them.
    if let Err(step) = join_cgroups(s) {
        child_fail(s.status_fd, step);
    }
    // Own group next, so a group-wide kill by the shim covers the task even
    // if it dies in a later step.
    if s.own_group && nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
        child_fail(s.status_fd, ChildStep::SetPgid);
    }
    // Dispositions set to "ignore" survive execve. The helper started with
    // none but its own (start-up undid whatever its parent ignored), so
    // only those go back to the default; and the handlers, which execve
    // would reset, are reset now, so that none can run here.
    // SAFETY: sigaction is plain old data; all-zero is a valid value, and
    // SIG_DFL with no flags and an empty mask is what we install.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in IGNORED_BY_US.into_iter().chain(HANDLED_BY_STD) {
        // SAFETY: installs the default action from a live local struct.
        if unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) } != 0 {
            child_fail(s.status_fd, ChildStep::SignalMask);
        }
    }
    if let Some((soft, hard)) = s.cpu {
        if nix::sys::resource::setrlimit(Resource::RLIMIT_CPU, soft, hard).is_err() {
            child_fail(s.status_fd, ChildStep::RlimitCpu);
        }
    }
    if let Some((soft, hard)) = s.address_space {
        if nix::sys::resource::setrlimit(Resource::RLIMIT_AS, soft, hard).is_err() {
            child_fail(s.status_fd, ChildStep::RlimitAs);
        }
    }
    if let Some((soft, hard)) = s.nofile {
        if nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, soft, hard).is_err() {
            child_fail(s.status_fd, ChildStep::RlimitNofile);
        }
    }
    for (from, to) in [(s.stdin, 0), (s.stdout, 1), (s.stderr, 2)] {
        if nix::unistd::dup2(from, to).is_err() {
            child_fail(s.status_fd, ChildStep::Stdio);
        }
    }
    if nix::unistd::fchdir(s.cwd).is_err() {
        child_fail(s.status_fd, ChildStep::Chdir);
    }
    if let Err(step) = drop_privileges(s) {
        child_fail(s.status_fd, step);
    }
    // After every step that uses a descriptor of the shim's: the script
    // takes its fixed number, moving the status pipe if that was it.
    let status_fd = match place_script(s) {
        Ok(fd) => fd,
        Err(()) => child_fail(s.status_fd, ChildStep::Script),
    };
    // Last: from here on the filters refuse what they list, to us too.
    for filter in s.seccomp {
        if seccompiler::apply_filter(filter).is_err() {
            child_fail(status_fd, ChildStep::Seccomp);
        }
    }
    // The task starts with an empty mask (the shim blocks SIGCHLD, and
    // everything was blocked for the way here). Last, so that no signal is
    // handled in the shim's memory: the handlers were reset above, and
    // execve follows.
    let empty = nix::sys::signal::SigSet::empty();
    if nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    )
    .is_err()
    {
        child_fail(status_fd, ChildStep::SignalMask);
    }
    exec_candidates(s.image);
    child_fail(status_fd, ChildStep::Exec)
}

/// Puts the script at [`SCRIPT_FD`], inherited across exec. Returns the
/// status pipe's descriptor from here on: moved up first when it was at
/// [`SCRIPT_FD`]. Nothing else of the shim's is used after this.
fn place_script(s: &ChildSetup<'_>) -> Result<RawFd, ()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Some(script) = s.script else {
        return Ok(s.status_fd);
    };
    let status = if s.status_fd == SCRIPT_FD {
        fcntl(s.status_fd, FcntlArg::F_DUPFD_CLOEXEC(SCRIPT_FD + 1)).map_err(drop)?
    } else {
        s.status_fd
    };
    if script == SCRIPT_FD {
        fcntl(script, FcntlArg::F_SETFD(FdFlag::empty())).map_err(drop)?;
    } else {
        nix::unistd::dup2(script, SCRIPT_FD).map_err(drop)?;
    }
    Ok(status)
}

/// execve of each candidate path in turn, returning only when none could
/// be executed, with errno set as execvp(3) would: past a candidate that is
/// missing or that the task's user may not execute to the next; EACCES
/// when one was refused and no later one ran.
fn exec_candidates(image: &ExecImage) {
    let mut refused = false;
    for path in &image.paths {
        // SAFETY: path, argv and envp are NUL-terminated C strings and
        // NULL-terminated pointer arrays owned by `image`, alive for the
        // call.
        unsafe {
            libc::execve(
                path.as_ptr(),
                image.argv_ptrs.as_ptr(),
                image.envp_ptrs.as_ptr(),
            )
        };
        match Errno::last_raw() {
            libc::EACCES => refused = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return,
        }
    }
    if refused {
        Errno::set_raw(libc::EACCES);
    }
}

/// Writes "0" (the writer itself) to each join file of the setup.
pub(super) fn join_cgroups(s: &ChildSetup<'_>) -> Result<(), ChildStep> {
    for fd in s.cgroup_join {
        // SAFETY: write(2) of a one-byte static string to a descriptor
        // owned by the shim, open for the duration of the spawn.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(ChildStep::Cgroup);
        }
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3` and its two-word data, see capget(2).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The task child's identity, last before the signal mask and exec: the
/// task user (no supplementary groups, then gid, then uid, each real,
/// effective and saved), every capability set empty, no new privileges,
/// and death with the shim. The shim cleared the bounding, ambient and
/// inheritable sets before the spawn (see `shim::host`); the uid switch
/// empties permitted and effective, and the capset here makes sure of it
/// for a task that stays uid 0.
///
/// Raw system calls, not libc's wrappers: glibc's set*id wrappers may
/// signal every thread of the process to apply the change, and in this
/// child the process's threads are the shim's.
fn drop_privileges(s: &ChildSetup<'_>) -> Result<(), ChildStep> {
    // SAFETY (each call below): plain system calls on integers and on
    // live stack values; none touches memory the shim uses.
    if let Some((uid, gid)) = s.identity {
        // SAFETY: see above; a zero-length list needs no pointer.
        if unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) } != 0 {
            return Err(ChildStep::Groups);
        }
        // SAFETY: see above.
        if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
            return Err(ChildStep::Gid);
        }
        // SAFETY: see above.
        if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
            return Err(ChildStep::Uid);
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: see above; the header and the two data words are live.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, none.as_ptr()) } != 0 {
        return Err(ChildStep::Capabilities);
    }
    // SAFETY: see above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ChildStep::NoNewPrivs);
    }
    // After the uid switch, which clears the parent-death signal.
    // SAFETY: see above.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(ChildStep::ParentDeath);
    }
    // The shim may have died before the signal was armed: then nobody
    // would enforce the task's limits, so it must not start.
    // SAFETY: see above.
    if unsafe { libc::getppid() } != s.parent {
        Errno::set_raw(libc::ESRCH);
        return Err(ChildStep::ParentDeath);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_steps_round_trip() {
        for b in 1..=23u8 {
            let step = ChildStep::from_u8(b).unwrap();
            assert_eq!(step as u8, b);
            assert!(!step.name().is_empty());
        }
        assert_eq!(ChildStep::from_u8(0), None);
        assert_eq!(ChildStep::from_u8(24), None);
    }

    #[test]
    fn exec_image_refuses_nul() {
        let ok = ExecImage::new(&["/bin/true"], &["true".into()], &[]);
        assert!(ok.is_ok());
        let bad = ExecImage::new(&["/bin/true"], &["a\0b".into()], &[]);
        assert!(bad.is_err());
        let bad = ExecImage::new(&["/bin/tr\0ue"], &["true".into()], &[]);
        assert!(bad.is_err());
    }
}
