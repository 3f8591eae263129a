//! A [`LaunchSpec`] checked at the boundary, before any syscall. A bad
//! request is refused with a message naming the field, never repaired; the
//! launch path only accepts the resulting [`ValidatedLaunch`].

use std::collections::HashSet;
use std::time::Duration;

use execgo_runtime_protocol::taskdir::MAX_OUTPUT_HEAD_BYTES;
use execgo_runtime_protocol::{
    valid_absolute_path, valid_relative_path, valid_task_id, LaunchLimits, LaunchProfile,
    LaunchSpec, CPU_MILLIS_MAX, CPU_MILLIS_MIN, SCRIPT_ARG,
};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "task_id {0:?} is invalid: use 1 to 128 ascii letters, digits, '-', '_' or '.', \
         and not '.' or '..'"
    )]
    TaskId(String),
    #[error("argv must not be empty")]
    EmptyArgv,
    #[error("argv[0] must not be empty")]
    EmptyProgram,
    #[error("argv[{0}] contains a nul byte")]
    NulInArgv(usize),
    #[error("env key at position {0} is empty")]
    EmptyEnvKey(usize),
    #[error("env key {0:?} contains '='")]
    EnvKeyEquals(String),
    #[error("env entry {0:?} contains a nul byte")]
    NulInEnv(String),
    #[error("env key {0:?} appears more than once")]
    DuplicateEnvKey(String),
    #[error(
        "workspace_subdir {0:?} is invalid: it must be relative, without '..', '.' or empty \
         components"
    )]
    WorkspaceSubdir(String),
    #[error("result_template is not valid json")]
    TemplateJson(#[source] serde_json::Error),
    #[error("result_template must be a json object")]
    TemplateNotObject,
    #[error("limits.wall_time_ms must be greater than 0")]
    WallTime,
    #[error("limits.stdout_max_bytes must be between 1 and {MAX_OUTPUT_HEAD_BYTES}")]
    StdoutMax,
    #[error("limits.stderr_max_bytes must be between 1 and {MAX_OUTPUT_HEAD_BYTES}")]
    StderrMax,
    #[error("limits.cpu_time_sec must be greater than 0 when given")]
    CpuTime,
    #[error("limits.memory_bytes must be greater than 0 when given")]
    Memory,
    #[error("limits.cpu_millis must be between {CPU_MILLIS_MIN} and {CPU_MILLIS_MAX} when given")]
    CpuMillis,
    #[error("limits.max_log_bytes must be greater than 0")]
    MaxLogBytes,
    #[error(
        "sidecar_target {0:?} is invalid: use 1 to 253 ascii letters, digits, '-', '_' or '.'"
    )]
    SidecarTarget(String),
    #[error(
        "workdir {0:?} is invalid: it must be absolute, without '..', '.' or empty components, \
         and not '/'"
    )]
    Workdir(String),
    #[error("workdir is only for the process profile, without a sidecar target")]
    WorkdirProfile,
    #[error("script_fd needs an interpreter and the script's path, {SCRIPT_ARG:?}, as the last argument")]
    ScriptArg,
}

/// A launch request that passed every check.
#[derive(Debug, Clone)]
pub struct ValidatedLaunch {
    pub task_id: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Components of `workspace_subdir`; empty for the workspace itself.
    pub workspace_subdir: Vec<String>,
    pub profile: LaunchProfile,
    pub limits: LaunchLimits,
    pub termination_grace: Duration,
    pub result_template: Map<String, Value>,
    pub task_cgroups: bool,
    /// See `LaunchSpec::keep_descendants`: a plain flag, nothing to check.
    pub keep_descendants: bool,
    /// The main container whose namespaces the task joins (sidecar mode).
    pub sidecar_target: Option<String>,
    /// An absolute working directory instead of the workspace; checked
    /// against the `--workdir-root`s when it is opened (`launch.rs`).
    pub workdir: Option<String>,
    /// See `LaunchSpec::script_fd`; its last argument checked.
    pub script_fd: bool,
}

impl ValidatedLaunch {
    /// The task's own `PATH`, which is where a bare program name is looked
    /// up.
    pub fn path_var(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
    }
}

pub fn validate(spec: LaunchSpec) -> Result<ValidatedLaunch, ValidateError> {
    if !valid_task_id(&spec.task_id) {
        return Err(ValidateError::TaskId(spec.task_id));
    }
    match spec.argv.first() {
        None => return Err(ValidateError::EmptyArgv),
        Some(p) if p.is_empty() => return Err(ValidateError::EmptyProgram),
        Some(_) => {}
    }
    if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(ValidateError::NulInArgv(i));
    }
    let mut seen = HashSet::new();
    for (i, (k, v)) in spec.env.iter().enumerate() {
        if k.is_empty() {
            return Err(ValidateError::EmptyEnvKey(i));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(ValidateError::NulInEnv(k.replace('\0', "\\0")));
        }
        if k.contains('=') {
            return Err(ValidateError::EnvKeyEquals(k.clone()));
        }
        if !seen.insert(k.as_str()) {
            return Err(ValidateError::DuplicateEnvKey(k.clone()));
        }
    }
    let workspace_subdir = match &spec.workspace_subdir {
        None => Vec::new(),
        Some(s) if valid_relative_path(s) => s.split('/').map(str::to_string).collect(),
        Some(s) => return Err(ValidateError::WorkspaceSubdir(s.clone())),
    };
    let result_template = match serde_json::from_str::<Value>(&spec.result_template) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ValidateError::TemplateNotObject),
        Err(e) => return Err(ValidateError::TemplateJson(e)),
    };
    let l = &spec.limits;
    if l.wall_time_ms == 0 {
        return Err(ValidateError::WallTime);
    }
    if !(1..=MAX_OUTPUT_HEAD_BYTES).contains(&l.stdout_max_bytes) {
        return Err(ValidateError::StdoutMax);
    }
    if !(1..=MAX_OUTPUT_HEAD_BYTES).contains(&l.stderr_max_bytes) {
        return Err(ValidateError::StderrMax);
    }
    if l.cpu_time_sec == Some(0) {
        return Err(ValidateError::CpuTime);
    }
    if l.memory_bytes == Some(0) {
        return Err(ValidateError::Memory);
    }
    if l.cpu_millis
        .is_some_and(|m| !(CPU_MILLIS_MIN..=CPU_MILLIS_MAX).contains(&m))
    {
        return Err(ValidateError::CpuMillis);
    }
    if l.max_log_bytes == 0 {
        return Err(ValidateError::MaxLogBytes);
    }
    if let Some(name) = &spec.sidecar_target {
        if !execgo_runtime_protocol::valid_container_name(name) {
            return Err(ValidateError::SidecarTarget(name.clone()));
        }
    }
    if let Some(dir) = &spec.workdir {
        if !valid_absolute_path(dir) {
            return Err(ValidateError::Workdir(dir.clone()));
        }
        // A linux_sandbox task sees a read-only host root, or its own
        // rootfs, and a sidecar task another file system: a host path
        // means something else there.
        if spec.sidecar_target.is_some() || !matches!(spec.profile, LaunchProfile::Process) {
            return Err(ValidateError::WorkdirProfile);
        }
    }
    if spec.script_fd
        && (spec.argv.len() < 2 || spec.argv.last().map(String::as_str) != Some(SCRIPT_ARG))
    {
        return Err(ValidateError::ScriptArg);
    }
    // Every field of every profile is a plain flag: nothing to refuse.
    let profile = spec.profile;
    Ok(ValidatedLaunch {
        task_id: spec.task_id,
        argv: spec.argv,
        env: spec.env,
        workspace_subdir,
        profile,
        limits: spec.limits,
        termination_grace: Duration::from_millis(spec.termination_grace_ms),
        result_template,
        task_cgroups: spec.task_cgroups,
        keep_descendants: spec.keep_descendants,
        sidecar_target: spec.sidecar_target,
        workdir: spec.workdir,
        script_fd: spec.script_fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> LaunchSpec {
        LaunchSpec {
            task_id: "t-1".into(),
            argv: vec!["/bin/echo".into(), "hi".into()],
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())],
            workspace_subdir: Some("a/b".into()),
            profile: LaunchProfile::Process,
            limits: LaunchLimits {
                wall_time_ms: 1000,
                cpu_time_sec: Some(1),
                memory_bytes: None,
                pids_max: None,
                cpu_millis: None,
                stdout_max_bytes: 10,
                stderr_max_bytes: 10,
                max_log_bytes: 1 << 20,
            },
            termination_grace_ms: 50,
            result_template: r#"{"task_id":"t-1"}"#.into(),
            task_cgroups: true,
            keep_descendants: false,
            sidecar_target: None,
            workdir: None,
            script_fd: false,
        }
    }

    fn err(f: impl FnOnce(&mut LaunchSpec)) -> String {
        let mut s = good();
        f(&mut s);
        validate(s).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_good_spec() {
        let v = validate(good()).unwrap();
        assert_eq!(v.workspace_subdir, vec!["a", "b"]);
        assert_eq!(v.path_var(), Some("/bin"));
        assert_eq!(v.termination_grace, Duration::from_millis(50));
        assert_eq!(v.result_template["task_id"], "t-1");
    }

    #[test]
    fn refuses_each_bad_field() {
        assert!(err(|s| s.task_id = "../x".into()).starts_with("task_id"));
        assert!(err(|s| s.task_id = String::new()).starts_with("task_id"));
        for bad in ["", "a/b", "a=b", "x\0"] {
            assert!(err(|s| s.sidecar_target = Some(bad.into())).starts_with("sidecar_target"));
        }
        assert_eq!(err(|s| s.argv.clear()), "argv must not be empty");
        assert_eq!(err(|s| s.argv[0].clear()), "argv[0] must not be empty");
        assert_eq!(
            err(|s| s.argv.push("a\0".into())),
            "argv[2] contains a nul byte"
        );
        assert_eq!(
            err(|s| s.env.push((String::new(), "x".into()))),
            "env key at position 2 is empty"
        );
        assert_eq!(
            err(|s| s.env.push(("A=B".into(), "x".into()))),
            "env key \"A=B\" contains '='"
        );
        assert!(err(|s| s.env.push(("K".into(), "x\0".into()))).contains("nul byte"));
        assert!(err(|s| s.env.push(("A".into(), "again".into()))).contains("more than once"));
        for bad in ["../x", "/abs", "a//b", "./a", ""] {
            assert!(
                err(|s| s.workspace_subdir = Some(bad.into())).starts_with("workspace_subdir"),
                "{bad}"
            );
        }
        assert_eq!(
            err(|s| s.result_template = "[1]".into()),
            "result_template must be a json object"
        );
        assert_eq!(
            err(|s| s.result_template = "{".into()),
            "result_template is not valid json"
        );
        assert!(err(|s| s.limits.wall_time_ms = 0).contains("wall_time_ms"));
        assert!(err(|s| s.limits.stdout_max_bytes = 0).contains("stdout_max_bytes"));
        assert!(err(|s| s.limits.max_log_bytes = 0).contains("max_log_bytes"));
        assert!(err(|s| s.limits.stderr_max_bytes = 0).contains("stderr_max_bytes"));
        assert!(
            err(|s| s.limits.stdout_max_bytes = MAX_OUTPUT_HEAD_BYTES + 1)
                .contains("stdout_max_bytes")
        );
        assert!(err(|s| s.limits.stderr_max_bytes = u64::MAX).contains("stderr_max_bytes"));
        assert!(err(|s| s.limits.cpu_time_sec = Some(0)).contains("cpu_time_sec"));
        assert!(err(|s| s.limits.memory_bytes = Some(0)).contains("memory_bytes"));
        assert!(err(|s| s.limits.cpu_millis = Some(9)).contains("cpu_millis"));
        assert!(err(|s| s.limits.cpu_millis = Some(1_000_001)).contains("cpu_millis"));
        for bad in ["rel", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "", "/a\0"] {
            assert!(
                err(|s| s.workdir = Some(bad.into())).starts_with("workdir"),
                "{bad:?}"
            );
        }
        assert!(err(|s| {
            s.workdir = Some("/srv/app".into());
            s.sidecar_target = Some("main".into());
        })
        .contains("process profile"));
        assert!(err(|s| {
            s.workdir = Some("/srv/app".into());
            s.profile = LaunchProfile::LinuxSandbox(execgo_runtime_protocol::SandboxSpec {
                mount: true,
                pid: false,
                uts: false,
                ipc: false,
                net: false,
                rootfs: None,
            });
        })
        .contains("process profile"));
        let v = validate(LaunchSpec {
            workdir: Some("/srv/app".into()),
            ..good()
        })
        .unwrap();
        assert_eq!(v.workdir.as_deref(), Some("/srv/app"));
    }

    #[test]
    fn a_script_fd_needs_the_scripts_path_last() {
        assert!(err(|s| s.script_fd = true).contains("script_fd"));
        assert!(err(|s| {
            s.script_fd = true;
            s.argv = vec![SCRIPT_ARG.into()];
        })
        .contains("script_fd"));
        let v = validate(LaunchSpec {
            script_fd: true,
            argv: vec!["python3".into(), SCRIPT_ARG.into()],
            ..good()
        })
        .unwrap();
        assert!(v.script_fd);
    }
}
