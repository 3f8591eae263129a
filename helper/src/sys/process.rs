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
/// One read into a buffer the whole file fits in (it is ~1.5 KiB), as it is
/// asked before every launch.
pub fn thread_count() -> std::io::Result<usize> {
    use std::io::Read;
    let mut buf = [0u8; 8192];
    let mut file = std::fs::File::open("/proc/self/status")?;
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if len == buf.len() {
            break;
        }
    }
    let status = String::from_utf8_lossy(&buf[..len]);
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

/// Empties the calling thread's capability bounding set: one
/// `PR_CAPBSET_DROP` per capability the kernel knows (dropping one not in
/// the set is a no-op), up to the first it does not (`EINVAL`). Needs
/// `CAP_SETPCAP`.
pub fn drop_bounding_set() -> Result<(), nix::errno::Errno> {
    for cap in 0..64 {
        // SAFETY: prctl(2) with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return match nix::errno::Errno::last() {
                nix::errno::Errno::EINVAL if cap > 0 => Ok(()),
                e => Err(e),
            };
        }
    }
    Ok(())
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

    /// The bounding set is per thread: a thread of its own empties its own.
    #[test]
    fn the_bounding_set_is_emptied() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: dropping from the bounding set needs CAP_SETPCAP");
            return;
        }
        let bnd = std::thread::spawn(|| {
            drop_bounding_set().unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .map(|v| v.trim().to_string())
        })
        .join()
        .unwrap();
        assert_eq!(bnd.as_deref(), Some("0000000000000000"));
    }

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
