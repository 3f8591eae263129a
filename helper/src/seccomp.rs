//! seccomp-bpf (seccomp(2)): filters are compiled by `seccompiler`
//! (Firecracker's compiler, which prefixes every program with a check of
//! the audit architecture) and loaded with NO_NEW_PRIVS, which the helper
//! sets at start anyway. For now only the probe: a filter that allows every
//! system call is compiled before the fork and loaded in a throwaway child.

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
}
