//! Handing an admitted task to the helper. The request is built from the
//! stored row and plan; the reply becomes the lifecycle's `Start`, or a
//! `Finish` the runtime decides when the helper refused. While the helper
//! is unreachable the task keeps its reservation and the launch is retried
//! with backoff; the shim's claim makes a repeated launch harmless.

use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::{
    HelperErrorKind, LaunchLimits, LaunchProfile, LaunchSpec, Launched, Request, Response,
    TaskErrorCode,
};

use super::files::SCRIPT;
use super::{error_chain, now, view, Engine};
use crate::api::error::ApiError;
use crate::api::model::ExecutionKind;
use crate::store::TaskRow;
use crate::task::{outcome, DecidedBy, Input, Start, StartedBy};

impl Engine {
    fn launch_spec(&self, row: &TaskRow) -> Result<LaunchSpec, ApiError> {
        let req = &row.request;
        let td = self.task_dir(&row.task_id);
        let e = &req.execution;
        let argv = match e.kind {
            ExecutionKind::Command => {
                let mut v = vec![e.program.clone().unwrap_or_default()];
                v.extend(e.args.iter().cloned());
                v
            }
            ExecutionKind::Script => match &e.interpreter {
                Some(interp) => {
                    let mut v = interp.clone();
                    v.push(td.path(SCRIPT).to_string_lossy().into_owned());
                    v
                }
                None => vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    e.script.clone().unwrap_or_default(),
                ],
            },
        };
        let mut env: std::collections::BTreeMap<String, String> =
            self.base_env.iter().cloned().collect();
        env.extend(e.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let template = view::status_body(&td, row)?;
        let result_template = serde_json::to_string(&template)
            .map_err(|e| ApiError::internal(format!("encoding the result template: {e}")))?;
        let l = &req.limits;
        let enforced = &row.plan.resource_enforcement;
        Ok(LaunchSpec {
            task_id: row.task_id.clone(),
            argv,
            env: env.into_iter().collect(),
            workspace_subdir: row.plan.effective_sandbox.workspace_subdir.clone(),
            profile: LaunchProfile::Process,
            limits: LaunchLimits {
                wall_time_ms: l.wall_time_ms,
                cpu_time_sec: l.cpu_time_sec.filter(|_| enforced.cpu_time_enforced),
                memory_bytes: l.memory_bytes.filter(|_| enforced.memory_enforced),
                pids_max: l.pids_max.filter(|_| enforced.pids_enforced),
                stdout_max_bytes: l.stdout_max_bytes,
                stderr_max_bytes: l.stderr_max_bytes,
            },
            termination_grace_ms: self.cfg.args.termination_grace_ms,
            result_template,
        })
    }

    /// Launches an admitted task and follows it to its end.
    pub(super) async fn launch(self: Arc<Self>, row: TaskRow) {
        let task_id = row.task_id.clone();
        let spec = match self.launch_spec(&row) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refused(&task_id, TaskErrorCode::Internal, e.message)
                    .await
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let reply = self.helper.call(Request::Launch(spec.clone())).await;
            tracing::debug!(task_id, "helper replied to the launch");
            let transport_error = match reply {
                Ok(Response::Launched(l)) => return self.launched(&task_id, l).await,
                Ok(Response::Error(err)) => {
                    let code = match err.kind {
                        HelperErrorKind::SandboxSetupFailed => TaskErrorCode::SandboxSetupFailed,
                        HelperErrorKind::LaunchFailed | HelperErrorKind::InvalidRequest => {
                            TaskErrorCode::LaunchFailed
                        }
                        HelperErrorKind::Internal => TaskErrorCode::Internal,
                    };
                    // The shim may have claimed the task before failing.
                    if self.task_dir(&task_id).has_result() {
                        return self.finish_from_disk(&task_id).await;
                    }
                    return self.refused(&task_id, code, err.message).await;
                }
                Ok(other) => format!("helper answered a launch out of protocol: {other:?}"),
                Err(e) => error_chain(&e),
            };
            tracing::warn!(task_id, error = %transport_error, "helper unavailable for launch; retrying");
            // Whatever reached the helper may have claimed the task already.
            if let Ok(Some(_)) = self.task_dir(&task_id).read_claim() {
                if self.find_shim(&task_id).await.is_none() {
                    return;
                }
            }
            if self.kill_requested(&task_id).await {
                let o = outcome::cancelled_before_start(&now());
                self.record(&task_id, Input::Finish(o, DecidedBy::Runtime))
                    .await;
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn launched(self: &Arc<Self>, task_id: &str, l: Launched) {
        if l.already_claimed {
            // An earlier launch's shim owns the task (this one ran nothing);
            // its claim is there, so the task is never launched again.
            let _ = self.find_shim(task_id).await;
            return;
        }
        if l.pid.is_none() {
            // Exec failed: the shim already wrote result.json saying why.
            return self.finish_from_disk(task_id).await;
        }
        let start = Start {
            shim_pid: l.shim_pid,
            shim_start_ticks: l.shim_start_ticks,
            pid: l.pid,
            pgid: l.pgid,
            started_at: l.started_at,
            by: StartedBy::LaunchReply,
        };
        self.record(task_id, Input::Start(start)).await;
        self.watch(task_id.to_string(), l.shim_pid, l.shim_start_ticks)
            .await;
    }

    /// The helper refused the launch before any shim claimed the task:
    /// failed, never started.
    async fn refused(self: &Arc<Self>, task_id: &str, code: TaskErrorCode, message: String) {
        tracing::warn!(task_id, message, "launch failed");
        let o = outcome::launch_refused(code, message, &now());
        self.record(task_id, Input::Finish(o, DecidedBy::Runtime))
            .await;
    }

    async fn kill_requested(&self, task_id: &str) -> bool {
        let id = task_id.to_string();
        self.store
            .call(move |conn| crate::store::get(conn, &id).map_err(ApiError::from))
            .await
            .ok()
            .flatten()
            .map(|r| r.kill_requested)
            .unwrap_or(false)
    }
}
