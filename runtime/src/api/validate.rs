//! Submit validation, in the contract's order: task_id, execution, limits,
//! sandbox, control_context. The first failure answers; nothing is repaired.

use std::collections::BTreeMap;

use execgo_runtime_protocol::taskdir::MAX_OUTPUT_HEAD_BYTES;
use execgo_runtime_protocol::{valid_relative_path, valid_task_id, CPU_MILLIS_MAX, CPU_MILLIS_MIN};

use super::error::ApiError;
use crate::model::{ControlContext, ExecutionKind, SubmitTaskRequest};

type Result<T = ()> = std::result::Result<T, ApiError>;

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

fn no_nul(field: &str, s: &str) -> Result {
    if s.contains('\0') {
        return Err(ApiError::invalid(format!(
            "{field} must not contain a NUL byte"
        )));
    }
    Ok(())
}

fn env_like(field: &str, map: &BTreeMap<String, String>) -> Result {
    for (k, v) in map {
        if k.is_empty() {
            return Err(ApiError::invalid(format!("{field} keys must not be empty")));
        }
        if k.contains('=') {
            return Err(ApiError::invalid(format!(
                "{field} key '{k}' must not contain '='"
            )));
        }
        no_nul(&format!("{field}.{k}"), k)?;
        no_nul(&format!("{field}.{k}"), v)?;
    }
    Ok(())
}

pub fn task_id(id: &str) -> Result {
    if id.is_empty() {
        return Err(ApiError::invalid("task_id must not be empty"));
    }
    if id.len() > 128 {
        return Err(ApiError::invalid("task_id must be at most 128 bytes"));
    }
    if !valid_task_id(id) {
        return Err(ApiError::invalid(
            "task_id may only contain ASCII letters, digits, '-', '_' and '.', and must not be '.' or '..'",
        ));
    }
    Ok(())
}

/// Validates a whole submit request.
/// Parses a submit body strictly and validates it: the one way a request
/// reaches the engine.
pub fn parse_submit(body: &[u8]) -> std::result::Result<SubmitTaskRequest, ApiError> {
    let req: SubmitTaskRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
    submit(&req)?;
    Ok(req)
}

pub fn submit(req: &SubmitTaskRequest) -> Result {
    if let Some(id) = &req.task_id {
        task_id(id)?;
    }
    execution(req)?;
    limits(req)?;
    sandbox(req)?;
    if let Some(cc) = &req.control_context {
        control_context(cc)?;
    }
    Ok(())
}

fn execution(req: &SubmitTaskRequest) -> Result {
    let e = &req.execution;
    let program = e.program.as_deref().unwrap_or("");
    let script = e.script.as_deref().unwrap_or("");
    match e.kind {
        ExecutionKind::Command => {
            if blank(program) {
                return Err(ApiError::invalid("execution.program must not be blank"));
            }
            if !blank(script) {
                return Err(ApiError::invalid(
                    "execution.script must be blank for a command task",
                ));
            }
        }
        ExecutionKind::Script => {
            if blank(script) {
                return Err(ApiError::invalid("execution.script must not be blank"));
            }
            if !blank(program) {
                return Err(ApiError::invalid(
                    "execution.program must be blank for a script task",
                ));
            }
            if let Some(interp) = &e.interpreter {
                match interp.first() {
                    None => {
                        return Err(ApiError::invalid(
                            "execution.interpreter must not be empty when given",
                        ))
                    }
                    Some(first) if blank(first) => {
                        return Err(ApiError::invalid(
                            "execution.interpreter[0] must not be blank",
                        ))
                    }
                    _ => {}
                }
                for a in interp {
                    no_nul("execution.interpreter", a)?;
                }
            }
        }
    }
    no_nul("execution.program", program)?;
    no_nul("execution.script", script)?;
    for a in &e.args {
        no_nul("execution.args", a)?;
    }
    env_like("execution.env", &e.env)
}

fn limits(req: &SubmitTaskRequest) -> Result {
    let l = &req.limits;
    if l.wall_time_ms == 0 {
        return Err(ApiError::invalid(
            "limits.wall_time_ms must be greater than 0",
        ));
    }
    for (name, v) in [
        ("stdout_max_bytes", l.stdout_max_bytes),
        ("stderr_max_bytes", l.stderr_max_bytes),
    ] {
        if !(1..=MAX_OUTPUT_HEAD_BYTES).contains(&v) {
            return Err(ApiError::invalid(format!(
                "limits.{name} must be between 1 and {MAX_OUTPUT_HEAD_BYTES} (64 MiB)"
            )));
        }
    }
    for (name, v) in [
        ("cpu_time_sec", l.cpu_time_sec),
        ("memory_bytes", l.memory_bytes),
        ("pids_max", l.pids_max),
    ] {
        if v == Some(0) {
            return Err(ApiError::invalid(format!(
                "limits.{name} must be greater than 0 when given"
            )));
        }
    }
    if l.cpu_millis
        .is_some_and(|m| !(CPU_MILLIS_MIN..=CPU_MILLIS_MAX).contains(&m))
    {
        return Err(ApiError::invalid(format!(
            "limits.cpu_millis must be between {CPU_MILLIS_MIN} and {CPU_MILLIS_MAX} \
             (thousandths of a CPU) when given"
        )));
    }
    Ok(())
}

fn sandbox(req: &SubmitTaskRequest) -> Result {
    use crate::model::SandboxProfile;
    let s = &req.sandbox;
    if let Some(sub) = &s.workspace_subdir {
        if !valid_relative_path(sub) {
            return Err(ApiError::invalid(
                "sandbox.workspace_subdir must be a relative path without '..', '.' or empty components",
            ));
        }
    }
    if let Some(rootfs) = &s.rootfs {
        no_nul("sandbox.rootfs", rootfs)?;
    }
    if s.chroot {
        if s.rootfs.as_deref().map(blank).unwrap_or(true) {
            return Err(ApiError::invalid(
                "sandbox.chroot requires a non-blank sandbox.rootfs",
            ));
        }
        if s.profile != SandboxProfile::LinuxSandbox {
            return Err(ApiError::invalid(
                "sandbox.chroot requires sandbox.profile 'linux_sandbox'",
            ));
        }
    }
    Ok(())
}

fn control_context(cc: &ControlContext) -> Result {
    for (name, v) in [
        ("control_plane_mode", &cc.control_plane_mode),
        ("tenant", &cc.tenant),
        ("owner", &cc.owner),
        ("expected_runtime_profile", &cc.expected_runtime_profile),
    ] {
        if let Some(v) = v {
            if blank(v) {
                return Err(ApiError::invalid(format!(
                    "control_context.{name} must not be blank when given"
                )));
            }
        }
    }
    env_like("control_context.labels", &cc.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> SubmitTaskRequest {
        serde_json::from_value(v).unwrap()
    }

    fn msg(v: serde_json::Value) -> String {
        submit(&req(v)).unwrap_err().message
    }

    #[test]
    fn command_rules() {
        assert!(submit(&req(
            serde_json::json!({"execution":{"kind":"command","program":"/bin/true"}})
        ))
        .is_ok());
        assert_eq!(
            msg(serde_json::json!({"execution":{"kind":"command","program":"  "}})),
            "invalid input: execution.program must not be blank"
        );
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x","script":"y"}})
        )
        .contains("script must be blank"));
    }

    #[test]
    fn script_rules() {
        assert!(
            msg(serde_json::json!({"execution":{"kind":"script","script":""}}))
                .contains("script must not be blank")
        );
        assert!(msg(
            serde_json::json!({"execution":{"kind":"script","script":"x","interpreter":[]}})
        )
        .contains("interpreter must not be empty"));
        assert!(msg(
            serde_json::json!({"execution":{"kind":"script","script":"x","interpreter":[" "]}})
        )
        .contains("interpreter[0]"));
    }

    #[test]
    fn order_is_task_id_first() {
        let m = msg(
            serde_json::json!({"task_id":"a/b","execution":{"kind":"command"},
            "limits":{"wall_time_ms":0}}),
        );
        assert!(m.contains("task_id"), "{m}");
        let m = msg(serde_json::json!({"execution":{"kind":"command"},
            "limits":{"wall_time_ms":0}}));
        assert!(m.contains("program"), "{m}");
    }

    #[test]
    fn limits_sandbox_context() {
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"stdout_max_bytes":0}})
        )
        .contains("stdout_max_bytes"));
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"stderr_max_bytes":67_108_865_u64}})
        )
        .contains("between 1 and 67108864"));
        assert!(submit(&req(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "limits":{"stdout_max_bytes":67_108_864_u64}})
        ))
        .is_ok());
        for bad in [0, 9, 1_000_001] {
            assert!(msg(
                serde_json::json!({"execution":{"kind":"command","program":"x"},
                "limits":{"cpu_millis":bad}})
            )
            .contains("cpu_millis must be between 10 and 1000000"));
        }
        for good in [10, 1_000_000] {
            assert!(submit(&req(
                serde_json::json!({"execution":{"kind":"command","program":"x"},
                "limits":{"cpu_millis":good}})
            ))
            .is_ok());
        }
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "sandbox":{"workspace_subdir":"../x"}})
        )
        .contains("workspace_subdir"));
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "sandbox":{"chroot":true,"rootfs":"/r"}})
        )
        .contains("linux_sandbox"));
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x"},
            "control_context":{"owner":" "}})
        )
        .contains("control_context.owner"));
        assert!(msg(
            serde_json::json!({"execution":{"kind":"command","program":"x",
            "env":{"A=B":"c"}}})
        )
        .contains("'='"));
    }
}
