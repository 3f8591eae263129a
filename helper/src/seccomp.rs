//! seccomp-bpf (seccomp(2)): filters are compiled by `seccompiler`
//! (Firecracker's compiler, which prefixes every program with a check of
//! the audit architecture) and loaded with NO_NEW_PRIVS, which the helper
//! sets at start anyway. The probe loads a filter that allows every system
//! call in a throwaway child. Every task gets a deny-list, compiled once at
//! the helper's start ([`TaskFilters`]) and loaded last before exec: the
//! `process` profile the baseline, `linux_sandbox` the baseline and no
//! `unshare` at all (lists and reasons in `docs/security.md`).

use std::collections::BTreeMap;

use execgo_runtime_protocol::LaunchProfile;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::probe_child::{ChildResult, Step, StepFailed};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the seccomp filter for {arch} failed: {message}")]
    Compile { arch: &'static str, message: String },
}

/// The architecture filters are compiled for, and how its errors read.
fn target() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(compile_error)
}

fn compile_error(e: seccompiler::BackendError) -> SeccompError {
    SeccompError::Compile {
        arch: std::env::consts::ARCH,
        message: e.to_string(),
    }
}

/// A program that allows every system call on this architecture (and, as
/// every seccompiler program, kills a process calling in with another
/// architecture's convention).
pub fn allow_all() -> Result<BpfProgram, SeccompError> {
    // No rules: every call gets the mismatch action, Allow. seccompiler
    // refuses equal match and mismatch actions, so the (unused) match
    // action is an errno.
    let filter = SeccompFilter::new(
        BTreeMap::new(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target()?,
    )
    .map_err(compile_error)?;
    BpfProgram::try_from(filter).map_err(compile_error)
}

/// What no task needs, refused with EPERM whatever its profile: mounting
/// and switching roots, loading kernels and modules, BPF and perf, the
/// kernel keyring, reboot and swap, process accounting, userfaultfd,
/// opening files by handle (which escapes a chroot), entering another
/// process's namespaces, io_uring and the kernel log.
const DENIED: [libc::c_long; 24] = [
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_setns,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_syslog,
];

/// The namespace flags clone(2) may not carry.
const CLONE_NAMESPACES: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWCGROUP,
];

/// The namespace flags unshare(2) may not carry: clone's, and the time
/// namespace (whose bit in clone(2)'s flags is the exit signal's).
const UNSHARE_NAMESPACES: [libc::c_int; 8] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWTIME,
];

/// How much of `unshare(2)` a profile refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unshare {
    /// Every call: a sandboxed task has nothing to unshare.
    All,
    /// Calls with a namespace flag; `CLONE_FS`, `CLONE_FILES` and
    /// `CLONE_SYSVSEM` alone stay allowed.
    Namespaces,
}

/// One rule per flag, each matching a call whose first argument has it.
fn any_flag_of(flags: &[libc::c_int]) -> Result<Vec<SeccompRule>, SeccompError> {
    flags
        .iter()
        .map(|flag| {
            // The kernel reads both calls' flags as an unsigned long.
            let flag = *flag as u64;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(compile_error)
}

/// A profile's filters, in load order: [`DENIED`], clone(2) with a
/// namespace flag and `unshare` as `unshare` says answer EPERM; clone3(2),
/// whose flags sit in memory a filter cannot read, answers ENOSYS, so libc
/// falls back to clone(2), which the first filter checks.
fn filters(unshare: Unshare) -> Result<[BpfProgram; 2], SeccompError> {
    let target = target()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    rules.insert(libc::SYS_clone, any_flag_of(&CLONE_NAMESPACES)?);
    rules.insert(
        libc::SYS_unshare,
        match unshare {
            Unshare::All => Vec::new(),
            Unshare::Namespaces => any_flag_of(&UNSHARE_NAMESPACES)?,
        },
    );
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let deny =
        SeccompFilter::new(rules, SeccompAction::Allow, eperm, target).map_err(compile_error)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target,
    )
    .map_err(compile_error)?;
    Ok([
        BpfProgram::try_from(deny).map_err(compile_error)?,
        BpfProgram::try_from(clone3).map_err(compile_error)?,
    ])
}

/// The filters of a `linux_sandbox` task: the baseline, and no
/// `unshare(2)` at all.
pub fn sandbox_filters() -> Result<[BpfProgram; 2], SeccompError> {
    filters(Unshare::All)
}

/// The baseline filters of a `process` task: no new namespaces (above all
/// no user namespace, in which an unprivileged task would hold every
/// capability), none entered, and none of [`DENIED`].
pub fn process_filters() -> Result<[BpfProgram; 2], SeccompError> {
    filters(Unshare::Namespaces)
}

/// Both profiles' filters, compiled once at the helper's start; each shim
/// inherits them by the fork and hands its task its profile's.
#[derive(Clone)]
pub struct TaskFilters {
    pub sandbox: [BpfProgram; 2],
    pub process: [BpfProgram; 2],
}

impl TaskFilters {
    pub fn compile() -> Result<TaskFilters, SeccompError> {
        Ok(TaskFilters {
            sandbox: sandbox_filters()?,
            process: process_filters()?,
        })
    }

    /// A copy of the filters a task of `profile` gets.
    pub fn for_profile(&self, profile: &LaunchProfile) -> [BpfProgram; 2] {
        match profile {
            LaunchProfile::Process => self.process.clone(),
            LaunchProfile::LinuxSandbox(_) => self.sandbox.clone(),
        }
    }
}

/// Runs in a probe child: loads `program`. seccompiler sets NO_NEW_PRIVS
/// first and then calls seccomp(SECCOMP_SET_MODE_FILTER); neither
/// allocates.
pub fn try_in_child(program: &BpfProgram) -> ChildResult {
    seccompiler::apply_filter(program).map_err(|e| StepFailed {
        step: Step::LoadSeccomp,
        errno: match &e {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => {
                io.raw_os_error().map(nix::errno::Errno::from_raw)
            }
            _ => None,
        },
    })?;
    // A call after the load proves the filter lets the process go on.
    let _ = nix::unistd::getppid();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_child;
    use nix::errno::Errno;
    use nix::sched::CloneFlags;
    use std::time::Duration;

    #[test]
    fn allow_all_compiles_and_ends_in_allow() {
        let p = allow_all().unwrap();
        assert!(!p.is_empty());
        // The last instruction returns SECCOMP_RET_ALLOW.
        let last = p.last().unwrap();
        assert_eq!(last.k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn both_profiles_filters_compile() {
        let all = TaskFilters::compile().unwrap();
        for [deny, clone3] in [&all.sandbox, &all.process] {
            assert!(deny.len() > DENIED.len());
            assert!(!clone3.is_empty());
        }
        // The process profile checks unshare's flags; the sandbox refuses
        // every call.
        assert!(all.process[0].len() > all.sandbox[0].len());
        let process = LaunchProfile::Process;
        assert_eq!(all.for_profile(&process)[0], all.process[0]);
    }

    /// `unshare(flags)` in a probe child, after loading `filters`
    /// (none: unfiltered); `Ok` when the call succeeded, else the errno.
    fn unshare_in_child(filters: Option<&[BpfProgram; 2]>, flags: CloneFlags) -> Result<(), Errno> {
        let r = probe_child::run(Duration::from_secs(10), || {
            for f in filters.into_iter().flatten() {
                try_in_child(f)?;
            }
            probe_child::at(Step::Unshare, nix::sched::unshare(flags))
        });
        match r {
            Ok(()) => Ok(()),
            Err(probe_child::ProbeFailure::Step {
                step: Step::Unshare,
                source: Some(e),
            }) => Err(e.0),
            Err(other) => panic!("the probe child failed otherwise: {other}"),
        }
    }

    #[test]
    fn the_process_filter_refuses_a_user_namespace_and_allows_a_plain_unshare() {
        // The host must allow what the filter refuses, or this proves
        // nothing.
        if let Err(e) = unshare_in_child(None, CloneFlags::CLONE_NEWUSER) {
            eprintln!("skipped: this host refuses user namespaces anyway ({e})");
            return;
        }
        let process = process_filters().unwrap();
        assert_eq!(
            unshare_in_child(Some(&process), CloneFlags::CLONE_NEWUSER),
            Err(Errno::EPERM)
        );
        assert_eq!(
            unshare_in_child(
                Some(&process),
                CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS
            ),
            Err(Errno::EPERM)
        );
        // unshare without a namespace flag is not a namespace.
        assert_eq!(
            unshare_in_child(Some(&process), CloneFlags::CLONE_FS),
            Ok(())
        );
        // A sandbox refuses even that.
        let sandbox = sandbox_filters().unwrap();
        assert_eq!(
            unshare_in_child(Some(&sandbox), CloneFlags::CLONE_FS),
            Err(Errno::EPERM)
        );
    }
}
