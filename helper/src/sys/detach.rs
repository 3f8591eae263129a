//! The shim's detached start: a new process that is nobody's child, in a
//! session of its own, made the way a double fork makes one but with one
//! copy of the helper's memory instead of two.
//!
//! ```text
//! helper ── clone(CLONE_VM|CLONE_VFORK) ──► intermediate (shares our memory)
//!   │ suspended until it exits               setsid; pid = _Fork()
//!   │                                        stores pid in our memory; _exit(0)
//!   │ waitpid(intermediate), reads pid            │
//!   ▼                                             └──► new process: own copy of
//!                                                      our memory, runs `child`
//! ```
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::process::exit_now;
use super::stack::ChildStack;

/// Why [`spawn_detached`] has no process to hand back.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error("mapping the intermediate's stack failed")]
    Stack(#[source] Errno),
    #[error("blocking signals for the clone failed")]
    Mask(#[source] Errno),
    #[error("cloning the intermediate process failed")]
    Clone(#[source] Errno),
    #[error("forking the new process failed")]
    Fork(#[source] Errno),
    /// Only a SIGKILL between its `_Fork` and its store can do this: the
    /// new process may exist, and nobody knows its pid.
    #[error("the intermediate process ended without handing over the new process's pid ({0})")]
    Lost(String),
}

/// Stack of the intermediate: it uses a few KiB, and the new process then
/// runs its whole life on its copy, so it is sized like a thread's default
/// stack. Pages never touched cost nothing.
const DETACHED_STACK: usize = 2 * 1024 * 1024;

/// Exit code of a new process that found no `child` to run (cannot happen:
/// each address space takes it once).
const NO_CHILD: i32 = 70;

/// What the intermediate works with, in the caller's stack frame.
struct Detach<F> {
    /// Taken by the new process, from its own copy.
    child: Option<F>,
    /// The caller's signal mask, restored in the new process.
    mask: SigSet,
    /// The new process's pid, stored by the intermediate into the caller's
    /// memory (0 until then).
    pid: AtomicI32,
}

/// Starts `child` in a new process and returns its pid. The process is
/// nobody's child (re-parented to init or the nearest subreaper at once)
/// and in the intermediate's session until it calls `setsid` itself; it
/// exits with what `child` returns. Returns once the intermediate has
/// exited and been reaped: the new process has been created by then, or
/// the error says why not.
///
/// Why this is sound: the intermediate is cloned sharing our memory
/// (`CLONE_VM | CLONE_VFORK`) on a stack of its own, with every signal
/// blocked, so no handler of ours runs in it. It makes only
/// async-signal-safe calls (`setsid`, `_Fork`, `_exit`) and writes nothing
/// of ours but its stack, this thread's `errno` and `Detach::pid`; this
/// thread is suspended until it has exited, so nothing reads those
/// meanwhile, and the kernel's wake-up of this thread orders its writes
/// before our reads. `_Fork` is the C library's fork without atfork
/// handlers; the helper has one thread, suspended, so the new process's
/// copy of memory holds no lock mid-update. Only the new process touches
/// `Detach::child`, in its own copy: it moves it out, so each value is
/// used once per address space (ours is dropped when this returns). It
/// runs on its copy of the stack, which stays mapped there after we unmap
/// ours.
pub fn spawn_detached<F: FnOnce() -> i32>(child: F) -> Result<Pid, DetachError> {
    let stack = ChildStack::new(DETACHED_STACK).map_err(DetachError::Stack)?;
    let mut detach = Detach {
        child: Some(child),
        mask: SigSet::empty(),
        pid: AtomicI32::new(0),
    };
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut detach.mask),
    )
    .map_err(DetachError::Mask)?;
    let arg: *mut Detach<F> = &mut detach;
    // SAFETY: see above. `intermediate_main::<F>` matches the `Detach<F>`
    // behind `arg`; `detach` and `stack` outlive the intermediate, since
    // CLONE_VFORK returns only once it has exited, and `stack` is unmapped
    // only after it has been reaped.
    let rc = unsafe {
        libc::clone(
            intermediate_main::<F>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg.cast(),
        )
    };
    let cloned = if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(Pid::from_raw(rc))
    };
    // The old mask is valid, so this cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&detach.mask), None);
    let intermediate = cloned.map_err(DetachError::Clone)?;
    let status = loop {
        match waitpid(intermediate, None) {
            Err(Errno::EINTR) => {}
            other => break other,
        }
    };
    drop(stack);
    match detach.pid.load(Ordering::Acquire) {
        pid if pid > 0 => Ok(Pid::from_raw(pid)),
        // Only a failed _Fork exits non-zero, with its errno.
        _ => match status {
            Ok(WaitStatus::Exited(_, errno)) if errno != 0 => {
                Err(DetachError::Fork(Errno::from_raw(errno)))
            }
            other => Err(DetachError::Lost(format!("{other:?}"))),
        },
    }
}

extern "C" {
    /// glibc's (and musl's) fork without atfork handlers: async-signal-safe.
    fn _Fork() -> libc::pid_t;
}

/// The intermediate of [`spawn_detached`], on its own stack, sharing our
/// memory; in the child of its `_Fork`, the new process's start.
extern "C" fn intermediate_main<F: FnOnce() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
    let detach = arg.cast::<Detach<F>>();
    // SAFETY: setsid(2) takes no argument and changes only this process's
    // session; it is async-signal-safe. Its one failure (EPERM, already a
    // group leader) cannot happen to a fresh process.
    unsafe { libc::setsid() };
    // SAFETY: _Fork takes no argument and runs no atfork handler, so it
    // touches no shared memory but errno; see spawn_detached for why the
    // copy it makes is sound.
    let pid = unsafe { _Fork() };
    if pid < 0 {
        exit_now(Errno::last_raw().clamp(1, 255));
    }
    if pid > 0 {
        // SAFETY: `detach` points at the caller's `Detach<F>` in the memory
        // we share; the caller's thread is suspended in clone until we exit,
        // so it is alive, and no other reference to it is in use. Only a
        // shared reference to the atomic field is made.
        let shared_pid = unsafe { &(*detach).pid };
        shared_pid.store(pid, Ordering::Release);
        exit_now(0);
    }
    // The new process, in a private copy of the caller's memory.
    // SAFETY: `detach` points into this process's copy of the caller's stack
    // frame, which nothing else here will ever use: the frame is never
    // returned to, as this process ends with `exit_now`.
    let detach = unsafe { &mut *detach };
    // The old mask is valid, so this cannot fail.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&detach.mask), None);
    let code = detach.child.take().map_or(NO_CHILD, |child| child());
    exit_now(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_detached_child_is_nobodys_child_in_a_session_of_its_own() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        // The child only makes system calls: the test harness has threads,
        // whose locks its copy of memory may hold.
        let returned = spawn_detached(move || {
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
        assert_eq!(returned.as_raw(), pid, "the pid handed back is the child's");
        let me = nix::unistd::getpid().as_raw();
        assert_ne!(pid, me);
        assert_ne!(ppid, me, "not our child");
        assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());
        assert_ne!(sid, pid, "the intermediate's session, not one it leads");
        // Already reparented, so not ours to reap.
        assert_eq!(
            waitpid(returned, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(Errno::ECHILD)
        );
    }
}
