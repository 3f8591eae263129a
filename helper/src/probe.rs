//! The capability probe, run once at start. Nothing is inferred from the
//! uid: each mechanism the shim uses is really tried, in a throwaway forked
//! child for the ones that change process state (its own process group,
//! lowered rlimits), and by creating and removing a file for the data dir.

use std::os::fd::BorrowedFd;
use std::process;

use execgo_runtime_protocol::HelperCapabilities;
use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setpgid, Pid};

use crate::fs_at::{self, Access};
use crate::{log, rlimits, sys};

const PROCESS_GROUP: i32 = 1;
const RLIMIT_CPU: i32 = 2;
const RLIMIT_AS: i32 = 4;

pub fn probe(data_dir: BorrowedFd<'_>) -> HelperCapabilities {
    let in_child = probe_in_child();
    HelperCapabilities {
        privileged: nix::unistd::geteuid().is_root(),
        process_group: in_child & PROCESS_GROUP != 0,
        rlimit_cpu: in_child & RLIMIT_CPU != 0,
        rlimit_memory: in_child & RLIMIT_AS != 0,
        data_dir_writable: data_dir_writable(data_dir),
    }
}

/// What the throwaway child managed, as bits of its exit code.
fn probe_in_child() -> i32 {
    match sys::fork() {
        Ok(sys::Forked::Child) => sys::exit_now(try_mechanisms()),
        Ok(sys::Forked::Parent(pid)) => loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(other) => {
                    log::warn(
                        "capability probe child ended abnormally",
                        &[("status", format!("{other:?}").into())],
                    );
                    return 0;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn(
                        "waiting for the capability probe child failed",
                        &[("error", e.to_string().into())],
                    );
                    return 0;
                }
            }
        },
        Err(e) => {
            log::warn(
                "forking the capability probe child failed",
                &[("error", e.to_string().into())],
            );
            0
        }
    }
}

/// Runs in the probe child: the same calls the shim makes for a task, with
/// values that are always a lowering (60 s of CPU, 1 GiB of address space).
fn try_mechanisms() -> i32 {
    let mut bits = 0;
    if setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_ok() {
        bits |= PROCESS_GROUP;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CPU) {
        let (soft, hard) = rlimits::cpu_pair(60, hard);
        if setrlimit(Resource::RLIMIT_CPU, soft, hard).is_ok() {
            bits |= RLIMIT_CPU;
        }
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_AS) {
        let (soft, hard) = rlimits::address_space_pair(1 << 30, hard);
        if setrlimit(Resource::RLIMIT_AS, soft, hard).is_ok() {
            bits |= RLIMIT_AS;
        }
    }
    bits
}

fn data_dir_writable(dir: BorrowedFd<'_>) -> bool {
    let name = format!(".execgo-helper-probe-{}", process::id());
    // A leftover from an earlier helper with our pid is removed first.
    let _ = nix::unistd::unlinkat(
        Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
        name.as_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let created = fs_at::open_file(dir, &name, Access::CreateNew(0o600));
    let ok = created.is_ok();
    if let Err(e) = created {
        log::warn(
            "the data dir is not writable",
            &[("error", log::chain(&e).into())],
        );
    }
    let removed = nix::unistd::unlinkat(
        Some(std::os::fd::AsRawFd::as_raw_fd(&dir)),
        name.as_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    ok && removed.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;

    #[test]
    fn probes_a_writable_dir_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let caps = probe(fd.as_fd());
        assert!(caps.data_dir_writable);
        // Lowering limits and a new process group work for anyone.
        assert!(caps.process_group && caps.rlimit_cpu && caps.rlimit_memory);
        assert_eq!(caps.privileged, nix::unistd::geteuid().is_root());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
