//! wait4(2): a child's exit status together with its resource usage.
#![allow(unsafe_code)]

use nix::errno::Errno;

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

/// The figures we keep of a `struct rusage`.
pub fn usage_of(ru: &libc::rusage) -> Rusage {
    Rusage {
        user_cpu_ms: timeval_ms(ru.ru_utime),
        system_cpu_ms: timeval_ms(ru.ru_stime),
        // ru_maxrss is in kilobytes on Linux.
        max_rss_bytes: u64::try_from(ru.ru_maxrss)
            .unwrap_or(0)
            .saturating_mul(1024),
    }
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
        return Ok(Some((rc, status, usage_of(&ru))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeval_to_ms() {
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 345_678,
        };
        assert_eq!(timeval_ms(tv), 2345);
    }
}
