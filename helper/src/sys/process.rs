//! Forking a process and ending one: fork(2) for the probe's throwaway
//! children, `_exit(2)` for every process that must not run the code it
//! was forked from to its end.
//!
//! Why fork is sound here: neither the helper nor the shim ever starts a
//! thread, so a child never inherits a lock held by another thread.
#![allow(unsafe_code)]

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

/// How many threads this process has (`Threads:` of `/proc/self/status`).
pub fn thread_count() -> std::io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_threads(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/self/status has no Threads line",
        )
    })
}

fn parse_threads(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// _exit(2): ends the process at once, without unwinding, destructors or
/// atexit handlers, all of which belong to the process we were forked from.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; it touches no memory of
    // ours.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_counted() {
        assert_eq!(
            parse_threads("Name:\tx\nThreads:\t1\nSigQ:\t0/1\n"),
            Some(1)
        );
        assert_eq!(parse_threads("Name:\tx\n"), None);
        // The harness's main thread, this test's thread and one more.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().unwrap() >= 3);
        drop(tx);
        let _ = t.join();
    }
}
