//! Signal dispositions: what start-up resets, what the helper ignores, and
//! which handlers a task child must put back to the default before it
//! unblocks signals in the shim's memory.
#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};

/// Runs `clone` (a fork or clone of this thread) with every signal
/// blocked, then puts our mask back; the child starts with all of them
/// blocked and unblocks them itself, once no handler of ours can run in
/// it. Returns what `clone` returned (`Ok(child pid)`, or the errno).
pub fn clone_with_signals_blocked(
    clone: impl FnOnce() -> libc::c_long,
) -> nix::Result<nix::unistd::Pid> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let pid = clone();
    let cloned = if pid < 0 {
        Err(Errno::last())
    } else {
        Ok(nix::unistd::Pid::from_raw(pid as libc::pid_t))
    };
    // The old mask is valid, so this cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    cloned
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
/// these back to the default before it unblocks any (see
/// [`super::task_child`]).
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
/// started that way would otherwise pass them on to every task. Not on MIPS, whose kernel `struct sigaction`
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
