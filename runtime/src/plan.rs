//! Execution plans: what a task asked for, what this host will really give
//! it, and why they differ. Resolved once at submit from the probed host
//! capabilities; strict mode refuses any gap, adaptive mode records it.

use crate::model::{
    CapabilityMode, ExecutionPlan, NamespaceConfig, ResourceEnforcement, SandboxPolicy,
    SandboxProfile, SubmitTaskRequest,
};

/// What the host can enforce, from the helper's probe and the operator's
/// overrides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCaps {
    pub linux_sandbox: bool,
    pub rlimit_cpu: bool,
    pub rlimit_memory: bool,
    /// The pids, memory and cpu limits of a task's own cgroups (any
    /// profile), and the OOM-kill counter of its memory cgroup.
    pub cgroup_pids: bool,
    pub cgroup_memory: bool,
    pub oom_detection: bool,
    pub cgroup_cpu: bool,
    /// Every task gets cgroups of its own (any profile), through which a
    /// kill and the wall time reach all of its processes.
    pub task_cgroups: bool,
    /// seccomp filters load: `process` tasks get the baseline filter.
    pub seccomp: bool,
    /// A root helper runs every task as this one uid (`--task-user`)
    /// instead of a uid of its own.
    pub shared_task_uid: Option<u32>,
}

/// A host that runs the process profile with rlimits and task cgroups, for
/// unit tests.
#[cfg(test)]
pub const PROCESS_HOST: HostCaps = HostCaps {
    linux_sandbox: false,
    rlimit_cpu: true,
    rlimit_memory: true,
    cgroup_pids: false,
    cgroup_memory: false,
    oom_detection: false,
    cgroup_cpu: false,
    task_cgroups: true,
    seccomp: true,
    shared_task_uid: None,
};

/// [`PROCESS_HOST`] with writable memory, pids and cpu hierarchies and a
/// readable OOM counter, for unit tests.
#[cfg(test)]
pub const CGROUP_HOST: HostCaps = HostCaps {
    cgroup_pids: true,
    cgroup_memory: true,
    oom_detection: true,
    cgroup_cpu: true,
    ..PROCESS_HOST
};

impl HostCaps {
    /// What tasks can be given, from the helper's probe and the operator's
    /// overrides. `linux_sandbox` needs every namespace it may be asked for
    /// and seccomp; cgroup limits, of any profile, need task cgroups with
    /// the controller.
    pub fn from_probe(
        probe: &execgo_runtime_protocol::HelperCapabilities,
        args: &crate::config::ServeArgs,
    ) -> Self {
        let ns = &probe.namespaces;
        let linux_sandbox = !args.disable_linux_sandbox
            && ns.mount
            && ns.pid
            && ns.uts
            && ns.ipc
            && ns.net
            && probe.seccomp;
        let cgroup = !args.disable_cgroup && probe.task_cgroups;
        HostCaps {
            linux_sandbox,
            rlimit_cpu: probe.rlimit_cpu,
            rlimit_memory: probe.rlimit_memory,
            cgroup_pids: cgroup && probe.pids_limit,
            cgroup_memory: cgroup && probe.memory_limit,
            oom_detection: cgroup && probe.oom_detection,
            cgroup_cpu: cgroup && probe.cpu_quota,
            task_cgroups: cgroup,
            seccomp: probe.seccomp,
            shared_task_uid: (probe.privileged && probe.task_uid_range.is_none())
                .then_some(probe.task_uid),
        }
    }

    /// What a task whose shim leaves the host's mount namespace (a
    /// sidecar's) can be given: no cgroup of its own, so no cgroup limit.
    pub fn without_task_cgroups(self) -> HostCaps {
        HostCaps {
            cgroup_pids: false,
            cgroup_memory: false,
            oom_detection: false,
            cgroup_cpu: false,
            ..self
        }
    }
}

/// What a strict task asked for that this host cannot provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub missing: Vec<&'static str>,
}

impl From<Unsupported> for crate::engine::EngineError {
    fn from(u: Unsupported) -> Self {
        crate::engine::EngineError::Unsupported { missing: u.missing }
    }
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Strict mode, and the host cannot provide these.
    Unsupported(Unsupported),
    /// `sandbox.rootfs` is outside every `--rootfs-dir` of the helper.
    RootfsNotAllowed(String),
}

impl From<Refused> for crate::engine::EngineError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Unsupported(u) => u.into(),
            Refused::RootfsNotAllowed(path) => crate::engine::EngineError::InvalidInput(format!(
                "sandbox.rootfs {path:?} is not an absolute, normalised path inside a \
                 directory the helper allows (--rootfs-dir)"
            )),
        }
    }
}

/// Resolves the plan of `req`, or refuses it. `rootfs_dirs`: the helper's
/// `--rootfs-dir`s.
pub fn resolve(
    req: &SubmitTaskRequest,
    default_mode: CapabilityMode,
    caps: &HostCaps,
    rootfs_dirs: &[String],
) -> Result<ExecutionPlan, Refused> {
    let mode = req
        .policy
        .as_ref()
        .and_then(|p| p.capability_mode)
        .unwrap_or(default_mode);
    let strict_sandbox = req
        .control_context
        .as_ref()
        .map(|c| c.requires_strict_sandbox)
        .unwrap_or(false);
    let strict = mode == CapabilityMode::Strict || strict_sandbox;

    let requested = req.sandbox.clone();
    let mut effective = requested.clone();
    let mut missing = Vec::new();
    let mut fallback_reasons = Vec::new();
    let mut warnings = Vec::new();

    if requested.profile == SandboxProfile::LinuxSandbox && !caps.linux_sandbox {
        missing.push("linux_sandbox");
        fallback_reasons.push(
            "linux_sandbox is not available on this runtime; running with the process profile"
                .to_string(),
        );
        effective = SandboxPolicy {
            profile: SandboxProfile::Process,
            workspace_subdir: requested.workspace_subdir.clone(),
            rootfs: None,
            chroot: false,
            namespaces: None,
        };
    }
    let sandboxed = effective.profile == SandboxProfile::LinuxSandbox;
    if sandboxed && effective.namespaces.is_none() {
        effective.namespaces = Some(NamespaceConfig::DEFAULT);
    }
    if sandboxed {
        let mount_ns = effective.namespaces.is_some_and(|n| n.mount);
        match (&requested.rootfs, requested.chroot) {
            (Some(path), true) if !execgo_runtime_protocol::rootfs_allowed(path, rootfs_dirs) => {
                return Err(Refused::RootfsNotAllowed(path.clone()));
            }
            (Some(_), true) if mount_ns => {}
            (Some(_), true) => {
                missing.push("rootfs");
                fallback_reasons.push(
                    "sandbox.chroot needs the mount namespace; the task runs on the host's \
                     root, read-only"
                        .to_string(),
                );
                effective.rootfs = None;
                effective.chroot = false;
            }
            (Some(_), false) => {
                fallback_reasons.push(
                    "sandbox.rootfs is used only with chroot: true; the task runs on the \
                     host's root, read-only"
                        .to_string(),
                );
                effective.rootfs = None;
            }
            (None, _) => {}
        }
    }

    let l = &req.limits;
    let cpu_time_enforced = l.cpu_time_sec.is_some() && caps.rlimit_cpu;
    // The memory limit is the task cgroup's, for the whole task, wherever
    // the memory controller is writable; a process task falls back to
    // RLIMIT_AS per process (see the warning below), a sandbox does not.
    let memory_in_cgroup = l.memory_bytes.is_some() && caps.cgroup_memory;
    let memory_as_rlimit =
        l.memory_bytes.is_some() && !memory_in_cgroup && !sandboxed && caps.rlimit_memory;
    let memory_enforced = memory_in_cgroup || memory_as_rlimit;
    let pids_enforced = l.pids_max.is_some() && caps.cgroup_pids;
    let cpu_quota_enforced = l.cpu_millis.is_some() && caps.cgroup_cpu;
    let cgroup_enforced = caps.task_cgroups;
    // A sandbox always has its memory cgroup; a process task only for its
    // memory limit.
    let oom_detection = caps.cgroup_memory && caps.oom_detection && (sandboxed || memory_in_cgroup);

    if l.cpu_time_sec.is_some() && !cpu_time_enforced {
        missing.push("rlimit_cpu");
        warnings.push("limits.cpu_time_sec cannot be enforced on this host".to_string());
    }
    if l.memory_bytes.is_some() && !memory_enforced {
        missing.push("memory_limit");
        warnings.push("limits.memory_bytes cannot be enforced on this host".to_string());
    }
    if memory_as_rlimit {
        warnings.push(
            "limits.memory_bytes is enforced as RLIMIT_AS, on each process's address space, \
             not on the task's memory as a whole: no writable cgroup memory controller"
                .to_string(),
        );
    }
    if l.pids_max.is_some() && !pids_enforced {
        missing.push("pids_limit");
        warnings.push(
            "limits.pids_max needs a writable cgroup pids controller; it is not enforced"
                .to_string(),
        );
    }

    if l.cpu_millis.is_some() && !cpu_quota_enforced {
        missing.push("cpu_quota");
        warnings.push(
            "limits.cpu_millis needs a writable cgroup cpu controller; it is not enforced"
                .to_string(),
        );
    }

    if !sandboxed && !caps.seccomp {
        warnings.push(
            "no seccomp on this host: the process task runs without its seccomp filter, so it \
             may create user namespaces and use bpf, perf_event_open, the kernel keyring, \
             userfaultfd and io_uring as far as the kernel lets its user"
                .to_string(),
        );
    }

    if let Some(uid) = caps.shared_task_uid {
        warnings.push(format!(
            "every task runs as uid {uid} (--task-user), not a uid of its own: a task can \
             signal, trace and read the processes and workspace of another while both run"
        ));
    }

    if !cgroup_enforced {
        warnings.push(
            "no task cgroup on this host: a kill or the wall time reaches the task's process \
             group only, so a descendant that leaves it can outlive the task"
                .to_string(),
        );
    }

    if strict && !missing.is_empty() {
        return Err(Refused::Unsupported(Unsupported { missing }));
    }

    Ok(ExecutionPlan {
        capability_mode: mode,
        requested_sandbox: requested,
        effective_sandbox: effective,
        resource_enforcement: ResourceEnforcement {
            wall_time_ms: l.wall_time_ms,
            cpu_time_sec: l.cpu_time_sec,
            cpu_time_enforced,
            memory_bytes: l.memory_bytes,
            memory_enforced,
            pids_max: l.pids_max,
            pids_enforced,
            cgroup_enforced,
            oom_detection,
            cpu_millis: l.cpu_millis,
            cpu_quota_enforced,
        },
        degraded: !fallback_reasons.is_empty(),
        fallback_reasons,
        capability_warnings: warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> SubmitTaskRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn process_task_is_not_degraded() {
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"memory_bytes":1000,"cpu_time_sec":2}}),
        );
        let p = resolve(&r, CapabilityMode::Adaptive, &PROCESS_HOST, &[]).unwrap();
        assert!(!p.degraded);
        assert!(p.resource_enforcement.memory_enforced);
        assert!(p.resource_enforcement.cpu_time_enforced);
        assert!(p.fallback_reasons.is_empty());
    }

    #[test]
    fn a_process_tasks_memory_and_pids_are_its_cgroups_where_writable() {
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"memory_bytes":104857600,"pids_max":50,"cpu_millis":500}}),
        );
        let p = resolve(&r, CapabilityMode::Strict, &CGROUP_HOST, &[]).unwrap();
        let e = &p.resource_enforcement;
        assert!(e.memory_enforced && e.pids_enforced && e.cpu_quota_enforced);
        assert!(e.oom_detection && e.cgroup_enforced);
        assert!(
            p.capability_warnings.is_empty(),
            "{:?}",
            p.capability_warnings
        );
        // Without a limit on memory, no memory cgroup watches for OOM kills.
        let r = req(serde_json::json!({"execution":{"kind":"command","program":"x"}}));
        let p = resolve(&r, CapabilityMode::Strict, &CGROUP_HOST, &[]).unwrap();
        assert!(!p.resource_enforcement.oom_detection);
    }

    #[test]
    fn without_a_memory_cgroup_a_process_task_gets_rlimit_as_and_is_told() {
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"memory_bytes":104857600}}),
        );
        let p = resolve(&r, CapabilityMode::Strict, &PROCESS_HOST, &[]).unwrap();
        let e = &p.resource_enforcement;
        assert!(e.memory_enforced && !e.oom_detection);
        assert!(!p.degraded);
        assert_eq!(
            p.capability_warnings.len(),
            1,
            "{:?}",
            p.capability_warnings
        );
        assert!(p.capability_warnings[0].contains("RLIMIT_AS"));
        // Neither: not enforced, refused in strict mode.
        let bare = HostCaps {
            rlimit_memory: false,
            ..PROCESS_HOST
        };
        assert!(resolve(&r, CapabilityMode::Strict, &bare, &[]).is_err());
        let p = resolve(&r, CapabilityMode::Adaptive, &bare, &[]).unwrap();
        assert!(!p.resource_enforcement.memory_enforced);
        // A sidecar's task has no cgroup, so no cgroup limit.
        let sidecar = CGROUP_HOST.without_task_cgroups();
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"memory_bytes":104857600,"pids_max":50}}),
        );
        let p = resolve(&r, CapabilityMode::Adaptive, &sidecar, &[]).unwrap();
        let e = &p.resource_enforcement;
        assert!(e.memory_enforced && !e.pids_enforced && !e.oom_detection);
    }

    #[test]
    fn tasks_sharing_one_task_user_are_told_so() {
        let r = req(serde_json::json!({"execution":{"kind":"command","program":"x"}}));
        let shared = HostCaps {
            shared_task_uid: Some(65534),
            ..PROCESS_HOST
        };
        let p = resolve(&r, CapabilityMode::Strict, &shared, &[]).unwrap();
        assert_eq!(p.capability_warnings.len(), 1, "{p:?}");
        assert!(p.capability_warnings[0].contains("uid 65534 (--task-user)"));
        assert!(!p.degraded, "a choice of the operator's, not a degradation");
        let own = resolve(&r, CapabilityMode::Strict, &PROCESS_HOST, &[]).unwrap();
        assert!(own.capability_warnings.is_empty());
        // From a probe: only a root helper without a range shares a uid.
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: crate::config::ServeArgs,
        }
        let args = <Serve as clap::Parser>::parse_from(["serve"]).args;
        let mut probe = execgo_runtime_protocol::HelperCapabilities {
            privileged: true,
            task_uid: 65534,
            ..Default::default()
        };
        assert_eq!(
            HostCaps::from_probe(&probe, &args).shared_task_uid,
            Some(65534)
        );
        probe.task_uid_range = Some((100, 200));
        assert_eq!(HostCaps::from_probe(&probe, &args).shared_task_uid, None);
        probe.task_uid_range = None;
        probe.privileged = false;
        assert_eq!(HostCaps::from_probe(&probe, &args).shared_task_uid, None);
    }

    #[test]
    fn a_process_task_is_told_when_it_runs_without_its_seccomp_filter() {
        let r = req(serde_json::json!({"execution":{"kind":"command","program":"x"}}));
        let no_seccomp = HostCaps {
            seccomp: false,
            ..PROCESS_HOST
        };
        // Not a degradation of what was asked: strict still runs it.
        let p = resolve(&r, CapabilityMode::Strict, &no_seccomp, &[]).unwrap();
        assert!(!p.degraded);
        assert_eq!(p.capability_warnings.len(), 1);
        assert!(p.capability_warnings[0].contains("without its seccomp filter"));
    }

    #[test]
    fn adaptive_linux_sandbox_degrades() {
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "sandbox":{"profile":"linux_sandbox","workspace_subdir":"w"}}),
        );
        let p = resolve(&r, CapabilityMode::Adaptive, &PROCESS_HOST, &[]).unwrap();
        assert!(p.degraded);
        assert_eq!(p.effective_sandbox.profile, SandboxProfile::Process);
        assert_eq!(p.effective_sandbox.workspace_subdir.as_deref(), Some("w"));
        assert_eq!(p.fallback_reasons.len(), 1);
    }

    #[test]
    fn strict_refuses_what_is_missing() {
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "sandbox":{"profile":"linux_sandbox"},"policy":{"capability_mode":"strict"}}),
        );
        let e = resolve(&r, CapabilityMode::Adaptive, &PROCESS_HOST, &[]).unwrap_err();
        assert_eq!(
            e,
            Refused::Unsupported(Unsupported {
                missing: vec!["linux_sandbox"]
            })
        );
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "sandbox":{"profile":"linux_sandbox"},
            "control_context":{"requires_strict_sandbox":true}}),
        );
        assert!(resolve(&r, CapabilityMode::Adaptive, &PROCESS_HOST, &[]).is_err());
        let r = req(serde_json::json!({"execution":{"kind":"command","program":"x"}}));
        assert!(resolve(&r, CapabilityMode::Strict, &PROCESS_HOST, &[]).is_ok());
        let r = req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"pids_max":5}}),
        );
        assert!(resolve(&r, CapabilityMode::Strict, &PROCESS_HOST, &[]).is_err());
        let p = resolve(&r, CapabilityMode::Adaptive, &PROCESS_HOST, &[]).unwrap();
        assert!(!p.resource_enforcement.pids_enforced);
        assert_eq!(p.capability_warnings.len(), 1);
    }

    #[test]
    fn task_cgroups_are_reported_and_their_absence_warned_of() {
        let r = req(serde_json::json!({"execution":{"kind":"command","program":"x"}}));
        let p = resolve(&r, CapabilityMode::Strict, &PROCESS_HOST, &[]).unwrap();
        assert!(p.resource_enforcement.cgroup_enforced);
        assert!(!p.resource_enforcement.oom_detection);
        assert!(
            p.capability_warnings.is_empty(),
            "{:?}",
            p.capability_warnings
        );
        let bare = HostCaps {
            task_cgroups: false,
            ..PROCESS_HOST
        };
        // Not a degradation of what was asked: strict still runs it.
        let p = resolve(&r, CapabilityMode::Strict, &bare, &[]).unwrap();
        assert!(!p.resource_enforcement.cgroup_enforced);
        assert!(!p.degraded);
        assert_eq!(p.capability_warnings.len(), 1);
        assert!(p.capability_warnings[0].contains("no task cgroup"));
    }

    #[test]
    fn a_rootfs_must_be_inside_an_allowed_dir_and_needs_chroot() {
        let sandbox_host = HostCaps {
            linux_sandbox: true,
            ..PROCESS_HOST
        };
        let dirs = vec!["/srv/rootfs".to_string()];
        let with = |rootfs: &str, chroot: bool| {
            req(
                serde_json::json!({"execution":{"kind":"command","program":"x"},
                "sandbox":{"profile":"linux_sandbox","rootfs":rootfs,"chroot":chroot}}),
            )
        };
        let p = resolve(
            &with("/srv/rootfs/deb", true),
            CapabilityMode::Strict,
            &sandbox_host,
            &dirs,
        )
        .unwrap();
        assert_eq!(
            p.effective_sandbox.rootfs.as_deref(),
            Some("/srv/rootfs/deb")
        );
        assert!(p.effective_sandbox.chroot);
        for bad in ["/etc", "/srv/rootfs/../etc", "/srv/rootfs"] {
            let e = resolve(
                &with(bad, true),
                CapabilityMode::Adaptive,
                &sandbox_host,
                &dirs,
            );
            assert_eq!(e, Err(Refused::RootfsNotAllowed(bad.into())), "{bad}");
        }
        // Without chroot the rootfs is not used, and the plan says so.
        let p = resolve(
            &with("/srv/rootfs/deb", false),
            CapabilityMode::Adaptive,
            &sandbox_host,
            &dirs,
        )
        .unwrap();
        assert_eq!(p.effective_sandbox.rootfs, None);
        assert!(p.degraded);
    }
}
