//! seccomp-bpf (seccomp(2)): filters are compiled by `seccompiler`
//! (Firecracker's compiler, which prefixes every program with a check of
//! the audit architecture) and loaded with NO_NEW_PRIVS, which the helper
//! sets at start anyway. The probe loads a filter that allows every system
//! call in a throwaway child; `linux_sandbox` tasks get [`task_filters`],
//! loaded last before exec (list and reasons in `docs/security.md`).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::probe_child::{ChildResult, Step, StepFailed};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the seccomp filter for {arch} failed: {message}")]
    Compile { arch: &'static str, message: String },
}

/// A program that allows every system call on this architecture (and, as
/// every seccompiler program, kills a process calling in with another
/// architecture's convention).
pub fn allow_all() -> Result<BpfProgram, SeccompError> {
    let arch = std::env::consts::ARCH;
    let err = |e: seccompiler::BackendError| SeccompError::Compile {
        arch,
        message: e.to_string(),
    };
    let target = TargetArch::try_from(arch).map_err(err)?;
    // No rules: every call gets the mismatch action, Allow. seccompiler
    // refuses equal match and mismatch actions, so the (unused) match
    // action is an errno.
    let filter = SeccompFilter::new(
        BTreeMap::new(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// What a sandboxed task never needs, refused with EPERM: mounting and
/// switching roots, loading kernels and modules, BPF and perf, the kernel
/// keyring, reboot and swap, process accounting, userfaultfd, opening files
/// by handle (which escapes a chroot), and entering or making namespaces.
const DENIED: [libc::c_long; 21] = [
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
    libc::SYS_unshare,
    libc::SYS_setns,
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

/// The filters of a `linux_sandbox` task, in load order: [`DENIED`] and
/// clone(2) with a namespace flag answer EPERM; clone3(2), whose flags sit
/// in memory a filter cannot read, answers ENOSYS, so libc falls back to
/// clone(2), which the first filter checks.
pub fn task_filters() -> Result<[BpfProgram; 2], SeccompError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let arch = std::env::consts::ARCH;
    let err = |e: seccompiler::BackendError| SeccompError::Compile {
        arch,
        message: e.to_string(),
    };
    let target = TargetArch::try_from(arch).map_err(err)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let clone_rules = CLONE_NAMESPACES
        .iter()
        .map(|flag| {
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
        .map_err(err)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, eperm, target).map_err(err)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target,
    )
    .map_err(err)?;
    Ok([
        BpfProgram::try_from(deny).map_err(err)?,
        BpfProgram::try_from(clone3).map_err(err)?,
    ])
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

    #[test]
    fn allow_all_compiles_and_ends_in_allow() {
        let p = allow_all().unwrap();
        assert!(!p.is_empty());
        // The last instruction returns SECCOMP_RET_ALLOW.
        let last = p.last().unwrap();
        assert_eq!(last.k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn task_filters_compile() {
        let [deny, clone3] = task_filters().unwrap();
        assert!(deny.len() > DENIED.len());
        assert!(!clone3.is_empty());
    }
}
