//! Every `unsafe` call of the helper and the shim, in one place: fork and
//! `_exit`, adopting raw descriptors, `close_range`, `wait4` with its
//! rusage, signal dispositions, the shim's detached start
//! ([`spawn_detached`]), and the task child: its vfork-style start
//! ([`spawn_task`]) and the code it runs until execve ([`exec_child`]).
//! Everything else goes through nix's safe wrappers.
//!
//! Why fork is sound here: neither the helper nor the shim ever starts a
//! thread, so a child never inherits a lock held by another thread. The
//! shim's intermediate and the task child are not forked but cloned
//! sharing the caller's memory, and run async-signal-safe calls only, on
//! values prepared before (see [`spawn_detached`] and [`spawn_task`]).
#![allow(unsafe_code)]

use std::ffi::{c_char, CString, NulError};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::Resource;
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};

/// Which side of a [`fork`] we are on.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2).
pub fn fork() -> nix::Result<Forked> {
    // SAFETY: the helper and the shim are single-threaded (they never spawn
    // a thread), so the child's copy of memory holds no lock that another
    // thread would have released; where a caller may be multi-threaded (the
    // capability probe under the test harness) its child makes only
    // async-signal-safe calls. Every child either execs or ends with
    // `exit_now`, so no destructor of the parent's objects runs twice.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// _exit(2): ends the process at once, without unwinding, destructors or
/// atexit handlers, all of which belong to the process we were forked from.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; it touches no memory of
    // ours.
    unsafe { libc::_exit(code) }
}

/// openat(2) of one name under `dir`, returning an owned descriptor.
pub fn openat(dir: BorrowedFd<'_>, name: &str, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// open(2) of an absolute path, returning an owned descriptor.
pub fn open(path: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let raw = nix::fcntl::open(path, flags, mode)?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of a descriptor number handed to us by our parent
/// (`--inherited-fd`). Fails unless it is open.
pub fn adopt_fd(fd: RawFd) -> nix::Result<OwnedFd> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
    // SAFETY: the descriptor is open (checked just above) and was passed to
    // this process for its sole use; start-up adopts it exactly once, before
    // anything else could have wrapped the same number.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every descriptor from 3 up except those in `keep`, with
/// close_range(2) where the kernel has it and /proc/self/fd otherwise.
///
/// Only called where no live Rust object relies on the closed numbers: at
/// helper start-up (nothing is open yet) and as the shim's first step (the
/// forked copies of the helper's sockets belong to stack frames that are
/// never returned to, since the shim ends with `exit_now`; the one global,
/// the journal socket of journald mode, is in the shim's `keep`).
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: u32 = 3;
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    for &fd in &keep {
        let fd = fd as u32;
        if fd > first {
            ranges.push((first, fd - 1));
        }
        first = fd + 1;
    }
    ranges.push((first, u32::MAX));
    for (lo, hi) in ranges {
        // SAFETY: close_range takes two integers and flags; it only closes
        // descriptors, none of which is owned by a live object (see above).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::EINVAL) => close_fds_by_proc(&keep),
                _ => Err(err),
            };
        }
    }
    Ok(())
}

/// Fallback of [`close_fds_except`] for kernels before 5.9.
fn close_fds_by_proc(keep: &[RawFd]) -> io::Result<()> {
    // Collect first: the directory stream has a descriptor of its own.
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            open.push(fd);
        }
    }
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // EBADF is the directory stream's own, already closed, descriptor.
            // SAFETY: closes a bare descriptor number that no live object
            // owns (see close_fds_except).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Ignores SIGPIPE, so a peer that hung up is an EPIPE, not our death.
/// The one disposition the helper (and so every shim) sets to "ignore":
/// see [`IGNORED_BY_US`].
pub fn ignore_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so nothing can run in
    // signal context.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map(drop)
}

/// The signals with a handler in the helper, and so in the shim: std's
/// stack-overflow handlers, installed before `main`. Nothing of ours
/// installs one, and no thread is ever started (glibc would add handlers
/// for its own real-time signals); a test reads the shim's `SigCgt` to
/// keep it so. The task child shares the shim's memory until its exec, so
/// it must never run them: it starts with every signal blocked and puts
/// these back to the default before it unblocks any (see [`exec_child`]).
pub const HANDLED_BY_STD: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// The signals the helper itself ignores ([`ignore_sigpipe`]). Only
/// "ignore" survives execve(2) (handlers are reset by it), so after
/// [`unignore_inherited_signals`] at start-up these are the only
/// dispositions a task child must put back to the default.
pub const IGNORED_BY_US: [libc::c_int; 1] = [libc::SIGPIPE];

/// Start-up: every signal our parent left ignored goes back to its default
/// (an ignored SIGTERM, say, would otherwise reach every task, since "ignore"
/// survives fork and execve), and the signal mask, which survives both too,
/// is emptied. Handlers are left alone (std's stack-overflow handlers).
pub fn unignore_inherited_signals() -> nix::Result<()> {
    // The real-time signals below SIGRTMIN() are the C library's own (glibc:
    // 32 and 33), which its sigaction() refuses; see `unignore_reserved`.
    let reserved = KERNEL_SIGRTMIN..libc::SIGRTMIN();
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if reserved.contains(&sig) {
            unignore_reserved(sig)?;
            continue;
        }
        // SAFETY: sigaction is plain old data; all-zero is a valid value.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: only reads the current action into a live local struct.
        // EINVAL (numbers libc reserves for itself) reads as "leave it".
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            // SAFETY: all-zero sigaction is valid; SIG_DFL with no flags and
            // an empty mask installs no handler code.
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: installs the default action from a live local struct.
            if unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) } != 0 {
                return Err(Errno::last());
            }
        }
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// The first real-time signal of the kernel (`SIGRTMIN()` is the C
/// library's, above the ones it reserves).
const KERNEL_SIGRTMIN: libc::c_int = 32;

/// Sets a signal the C library reserves back to its default if it is
/// ignored, through the raw rt_sigaction(2). glibc's posix_spawn (which
/// std's and tokio's `Command` use) starts its child with these ignored
/// (its `spawni.c` blocks every signal around the clone and ignores the
/// internal ones in the child), and "ignore" survives execve: a helper
/// started that way would otherwise pass them on to every task, as it did
/// before this reset existed. Not on MIPS, whose kernel `struct sigaction`
/// starts with the flags instead of the handler.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
fn unignore_reserved(sig: libc::c_int) -> nix::Result<()> {
    // Room for the kernel's struct sigaction on every architecture
    // (handler, flags, restorer, mask: at most 4 words with an 8-byte
    // mask); all zero is SIG_DFL with no flags and an empty mask.
    let mut old = [0usize; 8];
    let dfl = [0usize; 8];
    // The kernel's sigset_t size (the last argument) is 8 bytes here.
    // SAFETY: the kernel writes at most sizeof(struct sigaction) bytes into
    // `old`, a live local buffer larger than that; reading needs no `act`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<usize>(),
            old.as_mut_ptr(),
            8usize,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    if old[0] != libc::SIG_IGN {
        return Ok(());
    }
    // SAFETY: installs SIG_DFL (all zero) from a live local buffer; no
    // handler code is involved, so nothing runs in signal context.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            dfl.as_ptr(),
            std::ptr::null_mut::<usize>(),
            8usize,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
fn unignore_reserved(_sig: libc::c_int) -> nix::Result<()> {
    Ok(())
}

/// Resource usage of a reaped child, as wait4(2) reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rusage {
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    pub max_rss_bytes: u64,
}

fn timeval_ms(tv: libc::timeval) -> u64 {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let usecs = u64::try_from(tv.tv_usec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(usecs / 1000)
}

/// wait4(2). `pid` -1 means any child. With `nohang`, `Ok(None)` when no
/// child has changed state. Returns the pid, the raw status and the usage.
pub fn wait4(pid: i32, nohang: bool) -> nix::Result<Option<(i32, i32, Rusage)>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and ru are valid, writable locals for the call.
        let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if rc < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        if rc == 0 {
            return Ok(None);
        }
        let usage = Rusage {
            user_cpu_ms: timeval_ms(ru.ru_utime),
            system_cpu_ms: timeval_ms(ru.ru_stime),
            // ru_maxrss is in kilobytes on Linux.
            max_rss_bytes: u64::try_from(ru.ru_maxrss)
                .unwrap_or(0)
                .saturating_mul(1024),
        };
        return Ok(Some((rc, status, usage)));
    }
}

/// A program, its argv and its envp as C strings, with the pointer arrays
/// execve(2) wants, all built before the spawn so the child allocates
/// nothing.
pub struct ExecImage {
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

impl ExecImage {
    pub fn new(path: &Path, argv: &[String], env: &[(String, String)]) -> Result<Self, NulError> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(path.as_os_str().as_bytes())?;
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
            path,
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
        }
    }
}

/// Length of a message on the exec-status pipe: the step, then the errno
/// as 4 little-endian bytes.
pub const CHILD_STATUS_LEN: usize = 5;

/// Everything the task child needs, prepared before [`spawn_task`].
pub struct ChildSetup<'a> {
    pub image: &'a ExecImage,
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub cwd: RawFd,
    /// (soft, hard) RLIMIT_CPU in seconds.
    pub cpu: Option<(u64, u64)>,
    /// (soft, hard) RLIMIT_AS in bytes.
    pub address_space: Option<(u64, u64)>,
    /// Write end of the close-on-exec exec-status pipe.
    pub status_fd: RawFd,
}

/// Writes the failed step and errno to the exec-status pipe and exits 127.
fn child_fail(status_fd: RawFd, step: ChildStep) -> ! {
    let errno = Errno::last_raw().to_le_bytes();
    let msg: [u8; CHILD_STATUS_LEN] = [step as u8, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: write(2) reads CHILD_STATUS_LEN bytes from a live stack array.
    unsafe { libc::write(status_fd, msg.as_ptr().cast(), msg.len()) };
    exit_now(127)
}

/// Size of the stack the task child runs on until its exec: [`exec_child`]
/// and the libc wrappers it calls need a few KiB; debug builds more.
const CHILD_STACK: usize = 64 * 1024;

/// An anonymous mapping for the task child's stack, with a `PROT_NONE`
/// guard page below it, so an overflow faults instead of writing into
/// the shim's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// `size` usable bytes above the guard page.
    fn new(size: usize) -> nix::Result<ChildStack> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let len = size + page;
        // SAFETY: a fresh anonymous private mapping at an address of the
        // kernel's choosing; it aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of our own fresh mapping, which nothing
        // uses yet.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(Errno::last());
        }
        Ok(stack)
    }

    /// The highest address: stacks grow down. Page-aligned, so 16-byte
    /// aligned as the ABIs want.
    fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; the child that ran on it
        // has exec'd or exited (CLONE_VFORK returns only then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

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
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let stack = ChildStack::new(CHILD_STACK)?;
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let arg: *const ChildSetup<'_> = setup;
    // SAFETY: see above. `child_main` never returns; `stack` and `setup`
    // outlive the child's use of them, since CLONE_VFORK returns only once
    // the child has exec'd or exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg.cast_mut().cast(),
        )
    };
    let cloned = if pid < 0 {
        Err(Errno::last())
    } else {
        Ok(Pid::from_raw(pid))
    };
    // The old mask is valid, so this cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    drop(stack);
    cloned
}

/// Stack of a detached child ([`spawn_detached`]): the intermediate uses a
/// few KiB of it, and the shim then runs its whole life on its copy, so it
/// is sized like a thread's default stack. Pages never touched cost
/// nothing.
const DETACHED_STACK: usize = 2 * 1024 * 1024;

/// What the intermediate of [`spawn_detached`] reads: the child to run in
/// the new process, and the signal mask to give it.
struct Detach<F> {
    child: Option<F>,
    mask: nix::sys::signal::SigSet,
}

/// Starts `child` in a new process that is nobody's child, in a session
/// of its own (the intermediate's), the way a double fork does but with one
/// copy of our memory instead of two: an intermediate is cloned sharing
/// our memory (`CLONE_VM | CLONE_VFORK`, as [`spawn_task`] does), calls
/// `setsid` and `_Fork`, and exits; its child, with a private copy of our
/// memory as of that moment, runs `child` and is at once orphaned. Returns
/// once the intermediate has exited and been reaped; `Err` is why the
/// child could not be created (it then never ran). `Ok` does not promise
/// that it runs (the intermediate may have been SIGKILLed): the caller
/// learns that from its channel to the child.
///
/// Why this is sound: the intermediate runs with every signal blocked, on
/// a stack of its own, makes only async-signal-safe calls (`setsid`,
/// `_Fork`, `_exit`), and writes nothing of ours but its stack and the
/// suspended thread's `errno`. `_Fork` is glibc's fork without the atfork
/// handlers; the helper is single-threaded and suspended, so no lock in the
/// copy is held. Only the new process touches `Detach::child`: it moves it
/// out of its own copy, so each value is used once per address space (ours
/// drops it when this returns). The new process restores our signal mask
/// before `child` runs, on its copy of the stack, which stays mapped there
/// after we unmap ours, and exits with what `child` returns, at once.
pub fn spawn_detached<F: FnOnce() -> i32>(child: F) -> nix::Result<()> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let stack = ChildStack::new(DETACHED_STACK)?;
    let mut detach = Detach {
        child: Some(child),
        mask: SigSet::empty(),
    };
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut detach.mask),
    )?;
    let arg: *mut Detach<F> = &mut detach;
    // SAFETY: see above. `intermediate_main` only reads `detach`, which
    // outlives it (CLONE_VFORK returns once it has exited), and `stack`
    // is unmapped only after that.
    let pid = unsafe {
        libc::clone(
            intermediate_main::<F>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg.cast(),
        )
    };
    let cloned = if pid < 0 { Err(Errno::last()) } else { Ok(pid) };
    // The old mask is valid, so this cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&detach.mask), None);
    let pid = cloned?;
    // The intermediate has exited; its status is 0 or the errno of _Fork.
    let status = loop {
        match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => {}
            other => break other,
        }
    };
    drop(stack);
    match status {
        // Only a failed _Fork exits non-zero: no child exists.
        Ok(nix::sys::wait::WaitStatus::Exited(_, errno)) if errno != 0 => {
            Err(Errno::from_raw(errno))
        }
        // Exited 0, killed (SIGKILL is the one signal it could not block)
        // before or after its _Fork, or reaped by someone else: a child may
        // exist, so the caller's channel to it, not this status, decides.
        _ => Ok(()),
    }
}

extern "C" {
    /// glibc's (and musl's) fork without atfork handlers: async-signal-safe.
    fn _Fork() -> libc::pid_t;
}

/// The intermediate of [`spawn_detached`], on its own stack, sharing our
/// memory; in the child of its `_Fork`, the new process's start.
extern "C" fn intermediate_main<F: FnOnce() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: see spawn_detached: setsid and _Fork are async-signal-safe
    // system call wrappers; `arg` points at the suspended caller's Detach.
    unsafe {
        libc::setsid();
        match _Fork() {
            0 => {
                // The new process, in its own copy of memory.
                let detach = &mut *arg.cast::<Detach<F>>();
                libc::pthread_sigmask(
                    libc::SIG_SETMASK,
                    detach.mask.as_ref(),
                    std::ptr::null_mut(),
                );
                let code = detach.child.take().map_or(70, |child| child());
                libc::_exit(code)
            }
            pid if pid < 0 => libc::_exit(Errno::last_raw().clamp(1, 255)),
            _ => libc::_exit(0),
        }
    }
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
/// blocked: own process group, default dispositions ([`IGNORED_BY_US`],
/// [`HANDLED_BY_STD`]), rlimits, stdio, working directory, an empty signal
/// mask, then execve. Only async-signal-safe calls on prepared values; no
/// allocation, no logging. On failure the step and errno go to the
/// exec-status pipe.
fn exec_child(s: &ChildSetup<'_>) -> ! {
    // Own group first, so a group-wide kill by the shim covers the task even
    // if it dies in a later step.
    if nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
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
    for (from, to) in [(s.stdin, 0), (s.stdout, 1), (s.stderr, 2)] {
        if nix::unistd::dup2(from, to).is_err() {
            child_fail(s.status_fd, ChildStep::Stdio);
        }
    }
    if nix::unistd::fchdir(s.cwd).is_err() {
        child_fail(s.status_fd, ChildStep::Chdir);
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
        child_fail(s.status_fd, ChildStep::SignalMask);
    }
    // SAFETY: path, argv and envp are NUL-terminated C strings and
    // NULL-terminated pointer arrays owned by `s.image`, alive for the call.
    unsafe {
        libc::execve(
            s.image.path.as_ptr(),
            s.image.argv_ptrs.as_ptr(),
            s.image.envp_ptrs.as_ptr(),
        )
    };
    child_fail(s.status_fd, ChildStep::Exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_child_is_nobodys_child_in_a_session_of_its_own() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        // The child only makes system calls: the test harness has threads,
        // whose locks its copy of memory may hold.
        spawn_detached(move || {
            let ids = [
                nix::unistd::getpid().as_raw(),
                nix::unistd::getppid().as_raw(),
                nix::unistd::getsid(None).map_or(-1, |p| p.as_raw()),
            ];
            let mut bytes = [0u8; 12];
            for (i, id) in ids.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
            }
            match nix::unistd::write(&w, &bytes) {
                Ok(12) => 0,
                _ => 1,
            }
        })
        .unwrap();
        let mut bytes = [0u8; 12];
        let mut got = 0;
        while got < 12 {
            match nix::unistd::read(r.as_raw_fd(), &mut bytes[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, 12, "the detached child wrote its ids");
        let id = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        let (pid, ppid, sid) = (id(0), id(1), id(2));
        let me = nix::unistd::getpid().as_raw();
        assert_ne!(pid, me);
        assert_ne!(ppid, me, "not our child");
        assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());
        assert_ne!(sid, pid, "the intermediate's session, not one it leads");
        // Already reparented, so not ours to reap.
        assert_eq!(
            nix::sys::wait::waitpid(
                Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG)
            ),
            Err(Errno::ECHILD)
        );
    }

    #[test]
    fn child_steps_round_trip() {
        for b in 1..=7u8 {
            let step = ChildStep::from_u8(b).unwrap();
            assert_eq!(step as u8, b);
            assert!(!step.name().is_empty());
        }
        assert_eq!(ChildStep::from_u8(0), None);
        assert_eq!(ChildStep::from_u8(8), None);
    }

    #[test]
    fn exec_image_refuses_nul() {
        let ok = ExecImage::new(Path::new("/bin/true"), &["true".into()], &[]);
        assert!(ok.is_ok());
        let bad = ExecImage::new(Path::new("/bin/true"), &["a\0b".into()], &[]);
        assert!(bad.is_err());
    }

    #[test]
    fn timeval_to_ms() {
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 345_678,
        };
        assert_eq!(timeval_ms(tv), 2345);
    }
}
