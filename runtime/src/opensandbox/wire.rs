//! The task-executor's wire shape, and its mapping to and from our tasks.
//!
//! OpenSandbox's controller and Go client exchange a flat object:
//! `{name, deletionTimestamp?, process: {command, args?, env?, workingDir?,
//! timeoutSeconds?}, processStatus: {waiting | running | terminated}}`.
//! The task-executor's README shows a nested shape instead (`spec.process`,
//! `status.state`), which the peer itself does not read; both are accepted
//! here ([`parse_task`]) and every answer is flat ([`TaskOut`]).
//!
//! Mapping of a process: `command[0]` is the program, the rest of `command`
//! and then `args` its arguments; `env` goes on top of the base
//! environment; a relative `workingDir` is a directory under the task's
//! workspace, an absolute one is taken as it is when it lies under a
//! `--opensandbox-workdir-root` ([`absolute_workdir`]); `timeoutSeconds` is the wall-time limit (absent: none, see
//! [`NO_TIMEOUT_MS`]).
//!
//! Mapping of a state ([`process_status`]), as the controller reads it:
//! `accepted` → `waiting` (`Pending`); `running` → `running`; terminal →
//! `terminated` with `exitCode` and a `reason` (see [`Reason`]).

use std::collections::BTreeMap;

use execgo_runtime_protocol::{TaskError, TaskErrorCode, TaskStatus};
use serde::{Deserialize, Serialize};

use crate::model::{ControlContext, ExecutionKind, ExecutionSpec, SubmitTaskRequest};

/// The wall time of a task without `timeoutSeconds`: the peer then sets no
/// limit; ours is mandatory, so it is 100 years.
pub const NO_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// The largest `timeoutSeconds` taken as given (larger ones are refused
/// rather than silently shortened).
pub const MAX_TIMEOUT_SECONDS: i64 = (NO_TIMEOUT_MS / 1000) as i64;

/// Exit code reported for a task killed by SIGKILL: a timeout, a lost
/// monitor, an OOM kill (128 + 9, the shell's and Kubernetes' convention).
pub const KILLED_EXIT_CODE: i32 = 137;

/// Exit code reported for a task that could not be started (the shell's
/// "command not found or not executable").
pub const NOT_STARTED_EXIT_CODE: i32 = 127;

/// Why a task's body is refused. Messages are lower-case and name the
/// field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed task: {0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is not supported: only process tasks are (the task-executor's container mode is not implemented)")]
    ContainerMode(&'static str),
}

/// An environment variable, as Kubernetes' `EnvVar` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A process as accepted (input) and echoed (output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// `Local` (the executor's own container) or `Remote` (the main
    /// container, sidecar mode); absent: as the executor is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_mode: Option<String>,
}

/// Whether the process runs in the main container (sidecar mode).
pub fn runs_in_sidecar(p: &Process, sidecar_mode: bool) -> Result<bool, WireError> {
    match p.exec_mode.as_deref() {
        Some("Local") => Ok(false),
        Some("Remote") if !sidecar_mode => Err(WireError::Invalid(
            "process.execMode 'Remote' needs sidecar mode (serve --enable-sidecar-mode)".into(),
        )),
        Some(_) => Ok(true),
        None => Ok(sidecar_mode),
    }
}

/// The absolute working directory of `p`, if it has one and it is allowed:
/// one of `roots` (`--opensandbox-workdir-root`) or below it, lexically
/// (the helper checks it again, and opens it without following symlinks).
/// Not in sidecar mode, where the task starts in the container's `/`.
pub fn absolute_workdir(
    p: &Process,
    roots: &[String],
    sidecar: bool,
) -> Result<Option<String>, WireError> {
    let Some(dir) = p.working_dir.as_deref().filter(|d| d.starts_with('/')) else {
        return Ok(None);
    };
    if roots.is_empty() {
        return Err(WireError::Invalid(format!(
            "process.workingDir '{dir}': absolute working directories are not allowed here (no --opensandbox-workdir-root is configured); give a path relative to the task's workspace"
        )));
    }
    if execgo_runtime_protocol::workdir_within(dir, roots).is_none() {
        return Err(WireError::Invalid(format!(
            "process.workingDir '{dir}': an absolute working directory must be one of these directories or inside one: {}",
            roots.join(", ")
        )));
    }
    if sidecar {
        return Err(WireError::Invalid(format!(
            "process.workingDir '{dir}': an absolute working directory is not supported in sidecar mode (the task starts in the main container's /)"
        )));
    }
    Ok(Some(dir.to_string()))
}

/// What either input shape may hold; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    process: Option<ProcessIn>,
    #[serde(default)]
    spec: Option<SpecIn>,
    #[serde(default)]
    pod_template_spec: Option<serde_json::Value>,
}

/// The README's nested `spec`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecIn {
    #[serde(default)]
    process: Option<ProcessIn>,
    #[serde(default)]
    container: Option<serde_json::Value>,
    #[serde(default)]
    pod_template_spec: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessIn {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVarIn>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<i64>,
    #[serde(default)]
    exec_mode: Option<String>,
    #[serde(default)]
    lifecycle: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVarIn {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_from: Option<serde_json::Value>,
}

/// A task body as validated: its name and its process, normalised to the
/// flat shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub name: String,
    pub process: Process,
}

/// Parses one task body, flat or nested.
pub fn parse_task(body: &[u8]) -> Result<NewTask, WireError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    task_from_value(v)
}

/// Parses a `setTasks` body: an array of task bodies, names unique.
pub fn parse_task_list(body: &[u8]) -> Result<Vec<NewTask>, WireError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    let serde_json::Value::Array(items) = v else {
        return Err(WireError::Malformed(
            "setTasks expects a JSON array of tasks".into(),
        ));
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let t = task_from_value(item).map_err(|e| match e {
            WireError::Malformed(m) => WireError::Malformed(format!("task [{i}]: {m}")),
            WireError::Invalid(m) => WireError::Invalid(format!("task [{i}]: {m}")),
            other => other,
        })?;
        if !seen.insert(t.name.clone()) {
            return Err(WireError::Invalid(format!(
                "task [{i}]: name '{}' appears twice in the list",
                t.name
            )));
        }
        out.push(t);
    }
    Ok(out)
}

fn task_from_value(v: serde_json::Value) -> Result<NewTask, WireError> {
    if !v.is_object() {
        return Err(WireError::Malformed("a task must be a JSON object".into()));
    }
    let t: TaskIn = serde_json::from_value(v).map_err(|e| WireError::Malformed(e.to_string()))?;
    if t.pod_template_spec.is_some() {
        return Err(WireError::ContainerMode("podTemplateSpec"));
    }
    let (nested, container) = match t.spec {
        Some(spec) => {
            if spec.pod_template_spec.is_some() {
                return Err(WireError::ContainerMode("spec.podTemplateSpec"));
            }
            (spec.process, spec.container.is_some())
        }
        None => (None, false),
    };
    if container {
        return Err(WireError::ContainerMode("spec.container"));
    }
    let name = match t.name {
        Some(n) if !n.is_empty() => n,
        _ => return Err(WireError::Invalid("name is required".into())),
    };
    if !execgo_runtime_protocol::valid_task_id(&name) {
        return Err(WireError::Invalid(format!(
            "name '{name}' must be 1-128 bytes of ASCII letters, digits, '-', '_', '.' (and not '.' or '..')"
        )));
    }
    let process = match (t.process, nested) {
        (Some(p), None) | (None, Some(p)) => p,
        (Some(_), Some(_)) => {
            return Err(WireError::Invalid(
                "give the process either as process or as spec.process, not both".into(),
            ))
        }
        (None, None) => {
            return Err(WireError::Invalid(
                "process (or spec.process) is required".into(),
            ))
        }
    };
    Ok(NewTask {
        name,
        process: normalise(process)?,
    })
}

fn normalise(p: ProcessIn) -> Result<Process, WireError> {
    let invalid = |m: String| Err(WireError::Invalid(m));
    match p.command.first() {
        None => return invalid("process.command must hold at least the program".into()),
        Some(program) if program.trim().is_empty() => {
            return invalid("process.command[0] (the program) must not be blank".into())
        }
        Some(_) => {}
    }
    if p.lifecycle.is_some() {
        return invalid("process.lifecycle (preStart/postStop hooks) is not supported".into());
    }
    match p.exec_mode.as_deref() {
        None | Some("") | Some("Local") | Some("Remote") => {}
        Some(other) => {
            return invalid(format!(
                "process.execMode '{other}' is unknown (expected 'Local' or 'Remote')"
            ))
        }
    }
    let mut env = Vec::with_capacity(p.env.len());
    for (i, e) in p.env.into_iter().enumerate() {
        if e.value_from.is_some() {
            return invalid(format!(
                "process.env[{i}] ({}): valueFrom is not supported, give a value",
                e.name
            ));
        }
        if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
            return invalid(format!(
                "process.env[{i}]: name '{}' must be non-empty, without '=' or NUL",
                e.name
            ));
        }
        env.push(EnvVar {
            name: e.name,
            value: e.value.unwrap_or_default(),
        });
    }
    let working_dir = match p.working_dir {
        None => None,
        Some(d) if d.is_empty() || d == "." => None,
        Some(d) if d.starts_with('/') => {
            let trimmed = if d.len() > 1 {
                d.trim_end_matches('/')
            } else {
                &d
            };
            if !execgo_runtime_protocol::valid_absolute_path(trimmed) {
                return invalid(format!(
                    "process.workingDir '{d}': an absolute working directory must be normalised (no '..', '.' or empty components) and not '/'"
                ));
            }
            Some(trimmed.to_string())
        }
        Some(d) => {
            let trimmed = d.trim_end_matches('/');
            if !execgo_runtime_protocol::valid_relative_path(trimmed) {
                return invalid(format!(
                    "process.workingDir '{d}' must be a relative path without '..', '.' or empty components"
                ));
            }
            Some(trimmed.to_string())
        }
    };
    if let Some(t) = p.timeout_seconds {
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&t) {
            return invalid(format!(
                "process.timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS} (omit it for no limit)"
            ));
        }
    }
    Ok(Process {
        command: p.command,
        args: p.args,
        env,
        working_dir,
        timeout_seconds: p.timeout_seconds,
        exec_mode: p.exec_mode.filter(|m| !m.is_empty()),
    })
}

/// The ordinary submit request of a task created through this API.
pub fn to_submit(t: &NewTask, tenant: &str) -> SubmitTaskRequest {
    let p = &t.process;
    let mut args: Vec<String> = p.command.iter().skip(1).cloned().collect();
    args.extend(p.args.iter().cloned());
    // Later entries win, as for a container's env.
    let env: BTreeMap<String, String> = p
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let limits = crate::model::ResourceLimits {
        wall_time_ms: match p.timeout_seconds {
            Some(s) => s as u64 * 1000,
            None => NO_TIMEOUT_MS,
        },
        ..Default::default()
    };
    // An absolute workingDir is a launch option (see `absolute_workdir`),
    // not a workspace subdir.
    let sandbox = crate::model::SandboxPolicy {
        workspace_subdir: p.working_dir.clone().filter(|d| !d.starts_with('/')),
        ..Default::default()
    };
    SubmitTaskRequest {
        task_id: Some(t.name.clone()),
        execution: ExecutionSpec {
            kind: ExecutionKind::Command,
            program: p.command.first().cloned(),
            args,
            script: None,
            interpreter: None,
            env,
        },
        limits,
        sandbox,
        policy: None,
        control_context: Some(ControlContext {
            tenant: Some(tenant.to_string()),
            control_plane_mode: Some("opensandbox".to_string()),
            ..Default::default()
        }),
        metadata: BTreeMap::from([("opensandbox.name".to_string(), t.name.clone())]),
    }
}

/// A task as answered: always flat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOut {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    pub process: Process,
    pub process_status: ProcessStatus,
}

/// Exactly one member is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated: Option<Terminated>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub started_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `terminated.reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit, a death by signal, a start that failed, a CPU limit.
    Failed,
    /// The wall-time limit (`timeoutSeconds`) fired; exit code 137.
    TaskTimeout,
    /// The task's monitor was lost (the runtime could not tell how it
    /// ended); exit code 137, as the peer reports a lost process.
    ProcessCrashed,
    /// Killed by the kernel's OOM killer in its cgroup; exit code 137.
    OomKilled,
    /// Stopped by a kill (a delete, or `/api/v1/.../kill`) before it ended
    /// by itself.
    Cancelled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Succeeded => "Succeeded",
            Reason::Failed => "Failed",
            Reason::TaskTimeout => "TaskTimeout",
            Reason::ProcessCrashed => "ProcessCrashed",
            Reason::OomKilled => "OOMKilled",
            Reason::Cancelled => "Cancelled",
        }
    }
}

/// What the state mapping reads of a task.
#[derive(Debug, Clone)]
pub struct StatusFacts<'a> {
    pub status: TaskStatus,
    pub started_at: Option<&'a str>,
    pub finished_at: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub error: Option<&'a TaskError>,
}

impl<'a> From<&'a crate::store::TaskRow> for StatusFacts<'a> {
    fn from(r: &'a crate::store::TaskRow) -> Self {
        StatusFacts {
            status: r.status,
            started_at: r.started_at.as_deref(),
            finished_at: r.finished_at.as_deref(),
            exit_code: r.exit_code,
            exit_signal: r.exit_signal,
            error: r.error.as_ref(),
        }
    }
}

/// The task's state as the controller reads it.
pub fn process_status(f: &StatusFacts<'_>) -> ProcessStatus {
    match f.status {
        TaskStatus::Accepted => ProcessStatus {
            waiting: Some(Waiting {
                reason: "Pending".into(),
                message: None,
            }),
            ..Default::default()
        },
        TaskStatus::Running => ProcessStatus {
            running: Some(Running {
                started_at: f.started_at.map(k8s_time).unwrap_or_default(),
            }),
            ..Default::default()
        },
        TaskStatus::Success | TaskStatus::Failed | TaskStatus::Cancelled => ProcessStatus {
            terminated: Some(terminated(f)),
            ..Default::default()
        },
    }
}

fn terminated(f: &StatusFacts<'_>) -> Terminated {
    let code = f.error.map(|e| e.code);
    let reason = match (f.status, code) {
        (TaskStatus::Success, _) => Reason::Succeeded,
        (_, Some(TaskErrorCode::Timeout)) => Reason::TaskTimeout,
        (_, Some(TaskErrorCode::Internal)) => Reason::ProcessCrashed,
        (_, Some(TaskErrorCode::MemoryLimitExceeded)) => Reason::OomKilled,
        (TaskStatus::Cancelled, _) | (_, Some(TaskErrorCode::Cancelled)) => Reason::Cancelled,
        _ => Reason::Failed,
    };
    // The exit code as a shell would report it: the code, else 128 + the
    // signal; the fixed codes of the reasons that say how it was killed.
    let from_process = f
        .exit_code
        .or(f.exit_signal.map(|s| 128 + s))
        .unwrap_or(KILLED_EXIT_CODE);
    let exit_code = match reason {
        Reason::Succeeded => 0,
        Reason::TaskTimeout | Reason::ProcessCrashed | Reason::OomKilled => KILLED_EXIT_CODE,
        _ if matches!(
            code,
            Some(TaskErrorCode::LaunchFailed | TaskErrorCode::SandboxSetupFailed)
        ) =>
        {
            NOT_STARTED_EXIT_CODE
        }
        _ => from_process,
    };
    Terminated {
        exit_code,
        signal: f.exit_signal,
        reason: reason.as_str().to_string(),
        message: f.error.map(|e| e.message.clone()),
        started_at: f.started_at.map(k8s_time),
        finished_at: f.finished_at.map(k8s_time),
    }
}

/// An RFC 3339 timestamp at second precision, as Kubernetes' `metav1.Time`
/// writes it (`2026-01-02T03:04:05Z`); an unreadable one is passed as is.
pub fn k8s_time(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        Err(_) => ts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<NewTask, WireError> {
        parse_task(v.to_string().as_bytes())
    }

    #[test]
    fn flat_and_nested_shapes_give_the_same_task() {
        let process = json!({"command": ["sh", "-c"], "args": ["echo hi"],
            "env": [{"name": "A", "value": "1"}], "timeoutSeconds": 5});
        let flat = parse(json!({"name": "t1", "process": process})).unwrap();
        let nested = parse(json!({"name": "t1", "spec": {"process": process},
            "status": {"state": {"waiting": {"reason": "Initialized"}}}}))
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.process.command, vec!["sh", "-c"]);
        assert_eq!(flat.process.timeout_seconds, Some(5));
    }

    #[test]
    fn an_absolute_working_dir_needs_a_root() {
        let t = parse(json!({"name": "t", "process": {
            "command": ["pwd"], "workingDir": "/srv/app/"}}))
        .unwrap();
        assert_eq!(t.process.working_dir.as_deref(), Some("/srv/app"));
        assert_eq!(to_submit(&t, "x").sandbox.workspace_subdir, None);
        let roots = vec!["/srv".to_string(), "/data".to_string()];
        assert_eq!(
            absolute_workdir(&t.process, &roots, false).unwrap(),
            Some("/srv/app".to_string())
        );
        let root_itself = parse(json!({"name": "t", "process": {
            "command": ["pwd"], "workingDir": "/data"}}))
        .unwrap();
        assert!(absolute_workdir(&root_itself.process, &roots, false)
            .unwrap()
            .is_some());
        let e = absolute_workdir(&t.process, &[], false).unwrap_err();
        assert!(
            e.to_string().contains("no --opensandbox-workdir-root"),
            "{e}"
        );
        let outside = parse(json!({"name": "t", "process": {
            "command": ["pwd"], "workingDir": "/srvx"}}))
        .unwrap();
        let e = absolute_workdir(&outside.process, &roots, false).unwrap_err();
        assert!(e.to_string().contains("/srv, /data"), "{e}");
        let e = absolute_workdir(&t.process, &roots, true).unwrap_err();
        assert!(e.to_string().contains("sidecar"), "{e}");
        // A relative one is not a launch option.
        let rel = parse(json!({"name": "t", "process": {
            "command": ["pwd"], "workingDir": "a/b"}}))
        .unwrap();
        assert_eq!(absolute_workdir(&rel.process, &roots, false).unwrap(), None);
    }

    #[test]
    fn the_submit_request_follows_the_mapping() {
        let t = parse(json!({"name": "t1", "process": {
            "command": ["/bin/sh", "-c"], "args": ["echo $A"],
            "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": "B"}],
            "workingDir": "sub/dir/", "timeoutSeconds": 3}}))
        .unwrap();
        let r = to_submit(&t, "opensandbox");
        assert_eq!(r.task_id.as_deref(), Some("t1"));
        assert_eq!(r.execution.program.as_deref(), Some("/bin/sh"));
        assert_eq!(r.execution.args, vec!["-c", "echo $A"]);
        assert_eq!(r.execution.env["A"], "2", "the later entry wins");
        assert_eq!(r.execution.env["B"], "");
        assert_eq!(r.sandbox.workspace_subdir.as_deref(), Some("sub/dir"));
        assert_eq!(r.limits.wall_time_ms, 3000);
        assert_eq!(
            r.control_context.unwrap().tenant.as_deref(),
            Some("opensandbox")
        );
        let no_limit = parse(json!({"name": "t", "process": {"command": ["true"]}})).unwrap();
        assert_eq!(to_submit(&no_limit, "x").limits.wall_time_ms, NO_TIMEOUT_MS);
        assert!(crate::api::validate::submit(&to_submit(&no_limit, "x")).is_ok());
    }

    #[test]
    fn bad_bodies_are_refused_with_the_field_named() {
        let cases = [
            (json!([1]), "JSON object"),
            (
                json!({"process": {"command": ["true"]}}),
                "name is required",
            ),
            (
                json!({"name": "a/b", "process": {"command": ["true"]}}),
                "name 'a/b'",
            ),
            (
                json!({"name": "t"}),
                "process (or spec.process) is required",
            ),
            (
                json!({"name": "t", "process": {"command": []}}),
                "process.command",
            ),
            (
                json!({"name": "t", "process": {"command": [" "]}}),
                "command[0]",
            ),
            (
                json!({"name": "t", "process": {"command": "true"}}),
                "invalid type",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "timeoutSeconds": 0}}),
                "timeoutSeconds",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "workingDir": "/abs/../x"}}),
                "absolute",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "workingDir": "/"}}),
                "absolute",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "workingDir": "../up"}}),
                "workingDir",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "env": [{"name": "A=B"}]}}),
                "env[0]",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "env": [{"name": "A", "valueFrom": {}}]}}),
                "valueFrom",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "lifecycle": {}}}),
                "lifecycle",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"], "execMode": "Elsewhere"}}),
                "execMode",
            ),
            (
                json!({"name": "t", "process": {"command": ["true"]}, "spec": {"process": {"command": ["true"]}}}),
                "not both",
            ),
        ];
        for (body, needle) in cases {
            let e = parse(body.clone()).expect_err(&body.to_string());
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn container_mode_is_refused_in_either_shape() {
        for body in [
            json!({"name": "t", "podTemplateSpec": {"spec": {}}}),
            json!({"name": "t", "spec": {"container": {"image": "x"}}}),
            json!({"name": "t", "spec": {"podTemplateSpec": {}}}),
        ] {
            assert!(matches!(parse(body), Err(WireError::ContainerMode(_))));
        }
    }

    #[test]
    fn task_lists_need_an_array_of_uniquely_named_tasks() {
        let ok = json!([{"name": "a", "process": {"command": ["true"]}},
                        {"name": "b", "spec": {"process": {"command": ["true"]}}}]);
        assert_eq!(parse_task_list(ok.to_string().as_bytes()).unwrap().len(), 2);
        let twice = json!([{"name": "a", "process": {"command": ["true"]}},
                           {"name": "a", "process": {"command": ["false"]}}]);
        let e = parse_task_list(twice.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let e = parse_task_list(b"{}").unwrap_err();
        assert!(e.to_string().contains("array"), "{e}");
        let bad = json!([{"name": "a", "process": {"command": ["true"]}}, {"name": "b"}]);
        let e = parse_task_list(bad.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("task [1]"), "{e}");
    }

    fn facts(status: TaskStatus, error: Option<&TaskError>) -> StatusFacts<'_> {
        StatusFacts {
            status,
            started_at: Some("2026-01-02T03:04:05.678Z"),
            finished_at: Some("2026-01-02T03:04:09.001Z"),
            exit_code: None,
            exit_signal: None,
            error,
        }
    }

    #[test]
    fn states_map_as_the_controller_reads_them() {
        let w = process_status(&facts(TaskStatus::Accepted, None));
        assert_eq!(w.waiting.unwrap().reason, "Pending");
        let r = process_status(&facts(TaskStatus::Running, None));
        assert_eq!(r.running.unwrap().started_at, "2026-01-02T03:04:05Z");

        let mut ok = facts(TaskStatus::Success, None);
        ok.exit_code = Some(0);
        let t = process_status(&ok).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (0, "Succeeded"));
        assert_eq!(t.finished_at.as_deref(), Some("2026-01-02T03:04:09Z"));

        let e = TaskError::new(TaskErrorCode::ExitNonzero, "task exited with code 3");
        let mut f = facts(TaskStatus::Failed, Some(&e));
        f.exit_code = Some(3);
        let t = process_status(&f).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (3, "Failed"));
        assert_eq!(t.message.as_deref(), Some("task exited with code 3"));

        let e = TaskError::new(TaskErrorCode::ExitNonzero, "task terminated by signal 15");
        let mut f = facts(TaskStatus::Failed, Some(&e));
        f.exit_signal = Some(15);
        let t = process_status(&f).terminated.unwrap();
        assert_eq!((t.exit_code, t.signal), (143, Some(15)));

        let e = TaskError::new(TaskErrorCode::Timeout, "wall time");
        let mut f = facts(TaskStatus::Failed, Some(&e));
        f.exit_signal = Some(15);
        let t = process_status(&f).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "TaskTimeout"));

        let e = TaskError::new(TaskErrorCode::Internal, "lost");
        let t = process_status(&facts(TaskStatus::Failed, Some(&e)))
            .terminated
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (137, "ProcessCrashed"));

        let e = TaskError::new(TaskErrorCode::Cancelled, "killed");
        let mut f = facts(TaskStatus::Cancelled, Some(&e));
        f.exit_signal = Some(15);
        let t = process_status(&f).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (143, "Cancelled"));

        let e = TaskError::new(TaskErrorCode::LaunchFailed, "no such program");
        let mut f = facts(TaskStatus::Failed, Some(&e));
        f.started_at = None;
        let t = process_status(&f).terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_str()), (127, "Failed"));
        assert_eq!(t.started_at, None);
    }

    #[test]
    fn answers_are_flat_with_camel_case_names() {
        let out = TaskOut {
            name: "t".into(),
            deletion_timestamp: Some("2026-01-02T03:04:05Z".into()),
            process: Process {
                command: vec!["true".into()],
                args: vec![],
                env: vec![],
                working_dir: None,
                timeout_seconds: Some(2),
                exec_mode: None,
            },
            process_status: process_status(&facts(TaskStatus::Accepted, None)),
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"name": "t", "deletionTimestamp": "2026-01-02T03:04:05Z",
                   "process": {"command": ["true"], "timeoutSeconds": 2},
                   "processStatus": {"waiting": {"reason": "Pending"}}})
        );
    }

    #[test]
    fn exec_mode_follows_the_sidecar_setting() {
        let p = |m: Option<&str>| {
            parse(json!({"name": "t", "process": {"command": ["true"], "execMode": m}}))
                .unwrap()
                .process
        };
        assert!(!runs_in_sidecar(&p(None), false).unwrap());
        assert!(runs_in_sidecar(&p(None), true).unwrap());
        assert!(!runs_in_sidecar(&p(Some("Local")), true).unwrap());
        assert!(runs_in_sidecar(&p(Some("Remote")), true).unwrap());
        let e = runs_in_sidecar(&p(Some("Remote")), false).unwrap_err();
        assert!(e.to_string().contains("sidecar mode"), "{e}");
    }

    #[test]
    fn timestamps_drop_their_fraction() {
        assert_eq!(k8s_time("2026-01-02T03:04:05.999Z"), "2026-01-02T03:04:05Z");
        assert_eq!(
            k8s_time("2026-01-02T04:04:05+01:00"),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(k8s_time("garbage"), "garbage");
    }
}
