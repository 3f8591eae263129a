//! The task model: request and response bodies of the public HTTP API, with the exact field
//! names, defaults and omission rules of the contract.

use std::collections::BTreeMap;

use execgo_runtime_protocol::{ResourceUsage, TaskError, TaskStatus};
use serde::{Deserialize, Serialize};

pub const DEFAULT_WALL_TIME_MS: u64 = 300_000;
pub const DEFAULT_OUTPUT_MAX_BYTES: u64 = 4_194_304;

/// `POST /api/v1/tasks` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTaskRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub execution: ExecutionSpec,
    #[serde(default)]
    pub limits: ResourceLimits,
    #[serde(default)]
    pub sandbox: SandboxPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<TaskPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_context: Option<ControlContext>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionKind {
    Command,
    Script,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionSpec {
    pub kind: ExecutionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_wall_time_ms() -> u64 {
    DEFAULT_WALL_TIME_MS
}

fn default_output_max_bytes() -> u64 {
    DEFAULT_OUTPUT_MAX_BYTES
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(default = "default_wall_time_ms")]
    pub wall_time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    #[serde(default = "default_output_max_bytes")]
    pub stdout_max_bytes: u64,
    #[serde(default = "default_output_max_bytes")]
    pub stderr_max_bytes: u64,
    /// A CPU quota in thousandths of a CPU (added; where the task's
    /// cgroups have the cpu controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            wall_time_ms: DEFAULT_WALL_TIME_MS,
            cpu_time_sec: None,
            memory_bytes: None,
            pids_max: None,
            stdout_max_bytes: DEFAULT_OUTPUT_MAX_BYTES,
            stderr_max_bytes: DEFAULT_OUTPUT_MAX_BYTES,
            cpu_millis: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxProfile {
    #[default]
    Process,
    LinuxSandbox,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    #[serde(default)]
    pub profile: SandboxProfile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_subdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    #[serde(default)]
    pub chroot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceConfig>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    // Per-field defaults as the contract gives them; see [`NamespaceConfig::DEFAULT`].
    #[serde(default = "yes")]
    pub mount: bool,
    #[serde(default = "yes")]
    pub pid: bool,
    #[serde(default = "yes")]
    pub uts: bool,
    #[serde(default = "yes")]
    pub ipc: bool,
    #[serde(default)]
    pub net: bool,
}

impl NamespaceConfig {
    /// What a `linux_sandbox` task gets when it names no namespaces.
    pub const DEFAULT: NamespaceConfig = NamespaceConfig {
        mount: true,
        pid: true,
        uts: true,
        ipc: true,
        net: false,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityMode {
    Adaptive,
    Strict,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_mode: Option<CapabilityMode>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_runtime_profile: Option<String>,
    #[serde(default)]
    pub requires_strict_sandbox: bool,
    #[serde(default)]
    pub requires_resource_reservation: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Submit answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitTaskResponse {
    pub task_id: String,
    pub handle_id: String,
    pub status: TaskStatus,
}

pub use crate::ledger::Reservation;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceEnforcement {
    pub wall_time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_sec: Option<u64>,
    pub cpu_time_enforced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    pub memory_enforced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    pub pids_enforced: bool,
    pub cgroup_enforced: bool,
    pub oom_detection: bool,
    /// Added with `limits.cpu_millis`; absent from plans stored before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub cpu_quota_enforced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionPlan {
    pub capability_mode: CapabilityMode,
    pub requested_sandbox: SandboxPolicy,
    pub effective_sandbox: SandboxPolicy,
    pub resource_enforcement: ResourceEnforcement,
    pub degraded: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    pub task_dir: String,
    pub request_path: String,
    pub result_path: String,
    pub stdout_path: String,
    pub stderr_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_path: Option<String>,
}

/// A task as `GET /api/v1/tasks` lists it: the status body without its
/// logs (so a listing never reads a log file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub handle_id: String,
    pub status: TaskStatus,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// The uid the task runs (ran) as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResourceUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    pub execution_plan: ExecutionPlan,
    pub artifacts: Artifacts,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `GET /api/v1/tasks/:id` body; also the content of `result.json`: the
/// summary and the head of each log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatusResponse {
    #[serde(flatten)]
    pub task: TaskSummary,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Why some of the above is missing, e.g. a log that could not be read
    /// (replaced by a FIFO or a directory): omitted when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /api/v1/tasks` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One entry of `GET /api/v1/tasks/:id/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: i64,
    pub task_id: String,
    pub handle_id: String,
    pub event_type: String,
    #[serde(rename = "type")]
    pub client_type: String,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}
