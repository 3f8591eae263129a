//! Linux namespaces (namespaces(7)): the kinds the sandbox uses, their
//! unshare(2) flags, and the probe that creates each one in a throwaway
//! child. A namespace counts as available only when it was really created
//! (and, for mount, pid and uts, used): being root proves nothing, since a
//! seccomp profile, a container runtime or `user.max_*_namespaces` can
//! forbid any of them, and an unprivileged user may be allowed user
//! namespaces.

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getpid, sethostname};

use crate::probe_child::{at, ChildResult, Step, StepFailed};
use crate::sys;

/// A namespace kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Mount,
    Pid,
    Uts,
    Ipc,
    Net,
    User,
}

impl Namespace {
    pub const ALL: [Namespace; 6] = [
        Namespace::Mount,
        Namespace::Pid,
        Namespace::Uts,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::User,
    ];

    /// The name the capabilities and warnings use.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Mount => "mount",
            Namespace::Pid => "pid",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::User => "user",
        }
    }

    /// The unshare(2) / clone(2) flag.
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            Namespace::Mount => CloneFlags::CLONE_NEWNS,
            Namespace::Pid => CloneFlags::CLONE_NEWPID,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::User => CloneFlags::CLONE_NEWUSER,
        }
    }

    /// Runs in a probe child (see [`crate::probe_child`]): unshares this
    /// namespace, then uses it where a bare unshare would prove too little.
    pub fn try_in_child(self) -> ChildResult {
        at(Step::Unshare, unshare(self.clone_flag()))?;
        match self {
            // The sandbox's first act in a new mount namespace: stop mount
            // events propagating back to the host (mount_namespaces(7)).
            Namespace::Mount => at(
                Step::MakeRootPrivate,
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                ),
            ),
            Namespace::Pid => first_child_is_pid_one(),
            Namespace::Uts => at(Step::SetHostname, sethostname("execgo-probe")),
            Namespace::Ipc | Namespace::Net | Namespace::User => Ok(()),
        }
    }
}

/// unshare(CLONE_NEWPID) moves only our future children into the new
/// namespace (pid_namespaces(7)); the first one must see itself as pid 1.
fn first_child_is_pid_one() -> ChildResult {
    match at(Step::Fork, sys::fork())? {
        sys::Forked::Child => sys::exit_now(if getpid().as_raw() == 1 { 0 } else { 1 }),
        sys::Forked::Parent(pid) => loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(_) => {
                    return Err(StepFailed {
                        step: Step::NotPidOne,
                        errno: None,
                    })
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return at(Step::Wait, Err(e)),
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags_are_distinct() {
        let mut flags = CloneFlags::empty();
        for ns in Namespace::ALL {
            assert!(!flags.intersects(ns.clone_flag()), "{}", ns.name());
            flags |= ns.clone_flag();
        }
        let names: std::collections::HashSet<_> = Namespace::ALL.iter().map(|n| n.name()).collect();
        assert_eq!(names.len(), Namespace::ALL.len());
    }
}
