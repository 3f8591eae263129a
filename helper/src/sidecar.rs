//! Sidecar mode: finding the main container's process, whose namespaces a
//! task joins. The runtime names the container only; the helper finds the
//! process itself, as OpenSandbox's task-executor does: the first process,
//! in pid order, whose environment holds exactly
//! `SANDBOX_MAIN_CONTAINER=<name>`. It is pinned with a pidfd
//! (pidfd_open(2)), and its environment is read again after the open while
//! the pidfd says the process is alive, so what was checked is the process
//! the pidfd names (a pid reused between the scan and the open fails the
//! second check or the liveness one). The shim joins its namespaces through
//! that pidfd (setns(2) with a pidfd, Linux 5.8) after it has opened the
//! task's files.

// pidfd_open and pidfd_send_signal have no wrapper in nix 0.29.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use execgo_runtime_protocol::SIDECAR_MARKER;
use nix::errno::Errno;

/// The main container's process.
#[derive(Debug)]
pub struct Target {
    pub pid: i32,
    /// Close-on-exec (pidfds always are).
    pub pidfd: OwnedFd,
    /// Its environment, the base of the task's.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(
        "sidecar mode: main container '{0}' not found: no process has {SIDECAR_MARKER}={0} in its environment"
    )]
    NotFound(String),
    #[error("sidecar mode: listing /proc to find main container '{name}' failed")]
    Scan {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sidecar mode: pidfd_open of main container '{name}' (pid {pid}) failed")]
    Pidfd {
        name: String,
        pid: i32,
        #[source]
        source: Errno,
    },
}

/// Finds the process of main container `name`.
pub fn find(name: &str) -> Result<Target, SidecarError> {
    let want = format!("{SIDECAR_MARKER}={name}");
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map_err(|source| SidecarError::Scan {
            name: name.to_string(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let me = std::process::id() as i32;
    for pid in pids.into_iter().filter(|p| *p != me) {
        if !read_environ(pid).is_some_and(|env| holds(&env, &want)) {
            continue;
        }
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            // Gone since the scan.
            Err(Errno::ESRCH) => continue,
            Err(source) => {
                return Err(SidecarError::Pidfd {
                    name: name.to_string(),
                    pid,
                    source,
                })
            }
        };
        // Read again through /proc while the pidfd pins the process: if it
        // is still alive afterwards, the pid was not reused in between.
        let Some(env) = read_environ(pid).filter(|env| holds(env, &want)) else {
            continue;
        };
        if !alive(&pidfd) {
            continue;
        }
        return Ok(Target {
            pid,
            pidfd,
            env: parse(&env),
        });
    }
    Err(SidecarError::NotFound(name.to_string()))
}

fn read_environ(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

/// Whether one NUL-separated entry is exactly `want`.
fn holds(environ: &[u8], want: &str) -> bool {
    environ.split(|b| *b == 0).any(|e| e == want.as_bytes())
}

/// `KEY=VALUE` entries; entries that are not UTF-8 or have no `=` are left
/// out (the shim passes only strings).
fn parse(environ: &[u8]) -> Vec<(String, String)> {
    environ
        .split(|b| *b == 0)
        .filter_map(|e| std::str::from_utf8(e).ok())
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new fd or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(rc).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signal 0 through the pidfd: the process it names has not exited.
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: a valid pidfd, signal 0 (a check only), no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_must_be_a_whole_entry() {
        let env = b"A=1\0SANDBOX_MAIN_CONTAINER=main\0B=x=y\0";
        assert!(holds(env, "SANDBOX_MAIN_CONTAINER=main"));
        assert!(!holds(env, "SANDBOX_MAIN_CONTAINER=mai"));
        assert!(!holds(
            b"SANDBOX_MAIN_CONTAINER=main2\0",
            "SANDBOX_MAIN_CONTAINER=main"
        ));
        assert_eq!(
            parse(env),
            vec![
                ("A".into(), "1".into()),
                ("SANDBOX_MAIN_CONTAINER".into(), "main".into()),
                ("B".into(), "x=y".into())
            ]
        );
    }

    #[test]
    fn a_missing_container_is_named() {
        let e = find("no-such-container-for-this-test").unwrap_err();
        assert!(
            e.to_string()
                .contains("'no-such-container-for-this-test' not found"),
            "{e}"
        );
    }
}
