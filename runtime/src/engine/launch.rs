//! Handing an admitted task to the helper. The request is built from the
//! stored row and plan; the reply becomes the lifecycle's `Start`, or a
//! `Finish` the runtime decides when the helper refused. While the helper
//! is unreachable the task keeps its reservation and the launch is retried
//! with backoff; the shim's claim makes a repeated launch harmless.

use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::{
    HelperErrorKind, LaunchLimits, LaunchProfile, LaunchSpec, Launched, Request, Response,
    SandboxSpec, TaskErrorCode, SCRIPT_ARG,
};

use super::EngineError;
use super::{error_chain, now, view, Engine};
use crate::model::{ExecutionKind, NamespaceConfig, SandboxProfile};
use crate::store::TaskRow;
use crate::task::{outcome, DecidedBy, Input, StartedBy};
use execgo_runtime_protocol::taskdir::ClaimRecord;

impl Engine {
    fn launch_spec(&self, row: &TaskRow) -> Result<LaunchSpec, EngineError> {
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
                // The interpreter reads the script from a descriptor the
                // shim gives it: tasks cannot search the data dir.
                Some(interp) => {
                    let mut v = interp.clone();
                    v.push(SCRIPT_ARG.to_string());
                    v
                }
                None => vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    e.script.clone().unwrap_or_default(),
                ],
            },
        };
        // Sidecar mode: the helper puts the main container's environment
        // under the task's own.
        let sidecar_target = row
            .launch
            .sidecar
            .then(|| self.cfg.args.main_container_name.clone());
        let none = Vec::new();
        let base = if sidecar_target.is_some() {
            &none
        } else if row.launch.full_env {
            &self.full_env
        } else {
            &self.base_env
        };
        let mut env: std::collections::BTreeMap<String, String> = base.iter().cloned().collect();
        env.extend(e.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let template = view::result_template(&td, row);
        let result_template = serde_json::to_string(&template)
            .map_err(|e| EngineError::Internal(format!("encoding the result template: {e}")))?;
        let l = &req.limits;
        let enforced = &row.plan.resource_enforcement;
        Ok(LaunchSpec {
            task_id: row.task_id.clone(),
            argv,
            env: env.into_iter().collect(),
            workspace_subdir: row.plan.effective_sandbox.workspace_subdir.clone(),
            profile: match row.plan.effective_sandbox.profile {
                SandboxProfile::Process => LaunchProfile::Process,
                SandboxProfile::LinuxSandbox => {
                    let ns = row
                        .plan
                        .effective_sandbox
                        .namespaces
                        .unwrap_or(NamespaceConfig::DEFAULT);
                    LaunchProfile::LinuxSandbox(SandboxSpec {
                        mount: ns.mount,
                        pid: ns.pid,
                        uts: ns.uts,
                        ipc: ns.ipc,
                        net: ns.net,
                        rootfs: row
                            .plan
                            .effective_sandbox
                            .rootfs
                            .clone()
                            .filter(|_| row.plan.effective_sandbox.chroot),
                    })
                }
            },
            limits: LaunchLimits {
                wall_time_ms: l.wall_time_ms,
                cpu_time_sec: l.cpu_time_sec.filter(|_| enforced.cpu_time_enforced),
                memory_bytes: l.memory_bytes.filter(|_| enforced.memory_enforced),
                pids_max: l.pids_max.filter(|_| enforced.pids_enforced),
                stdout_max_bytes: l.stdout_max_bytes,
                stderr_max_bytes: l.stderr_max_bytes,
                cpu_millis: l.cpu_millis.filter(|_| enforced.cpu_quota_enforced),
                max_log_bytes: self.cfg.args.max_log_bytes,
            },
            termination_grace_ms: self.cfg.args.termination_grace_ms,
            result_template,
            // A sidecar task's shim leaves the host's mount namespace, and
            // with it the cgroup file system it would clean up through.
            task_cgroups: enforced.cgroup_enforced && !row.launch.sidecar,
            keep_descendants: row.launch.keep_descendants,
            sidecar_target,
            workdir: row.launch.workdir.clone(),
            script_fd: e.kind == ExecutionKind::Script && e.interpreter.is_some(),
        })
    }

    /// Launches an admitted task and follows it to its end.
    pub(super) async fn launch(self: Arc<Self>, row: TaskRow) {
        let task_id = row.task_id.clone();
        let spec = match self.launch_spec(&row) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refused(&task_id, TaskErrorCode::Internal, e.to_string())
                    .await
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let reply = self.helper.call(Request::Launch(spec.clone())).await;
            tracing::debug!(task_id, "helper replied to the launch");
            let transport_error = match reply {
                Ok(Response::Launched(l)) => return self.launched(&task_id, l).await,
                // The helper lost track of a shim it may have started: like
                // a lost reply, the claim (or a retry) tells.
                Ok(Response::Error(err)) if err.kind == HelperErrorKind::Internal => {
                    format!("helper failed the launch: {}", err.message)
                }
                Ok(Response::Error(err)) => {
                    let code = match err.kind {
                        HelperErrorKind::SandboxSetupFailed => TaskErrorCode::SandboxSetupFailed,
                        _ => TaskErrorCode::LaunchFailed,
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
        tracing::debug!(
            task_id,
            shim_pid = l.shim_pid,
            task_uid = l.task_uid,
            "shim started"
        );
        let shim = ClaimRecord {
            shim_pid: l.shim_pid,
            shim_start_ticks: l.shim_start_ticks,
        };
        self.watch(
            task_id.to_string(),
            shim,
            StartedBy::LaunchReply,
            Some(l.task_uid),
        )
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
            .call(move |conn| crate::store::get(conn, &id).map_err(EngineError::from))
            .await
            .ok()
            .flatten()
            .map(|r| r.kill_requested)
            .unwrap_or(false)
    }
}
