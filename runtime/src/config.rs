//! `serve` flags, their env vars and defaults, and the validated [`Config`]
//! built from them before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args};

use crate::model::CapabilityMode;

/// Flags of `execgo-runtime serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,
    /// Root of all state: runtime.db and tasks/<task_id>/.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Tasks running at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_running_tasks: u64,
    /// `accepted` tasks waiting at most; beyond it submit answers 429.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_tasks: u64,
    /// Event and log followers (`follow=true`) open at once; beyond it a
    /// follow answers 429.
    #[arg(long, env = "EXECGO_RUNTIME_MAX_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_streams: u64,
    /// The most bytes each task's stdout.log and stderr.log hold on disk;
    /// what a task writes past it is dropped (the task is not blocked) and
    /// its status says `stdout_truncated`/`stderr_truncated`.
    #[arg(long, env = "EXECGO_RUNTIME_MAX_LOG_BYTES", default_value_t = 67_108_864,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_log_bytes: u64,
    /// Wait between SIGTERM and SIGKILL for kills and timeouts.
    #[arg(long, default_value_t = 5000)]
    pub termination_grace_ms: u64,
    /// Terminal tasks older than this are deleted (row and directory).
    #[arg(long, default_value_t = 604_800)]
    pub result_retention_secs: u64,
    /// How often expired tasks are collected.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub gc_interval_ms: u64,
    /// Safety-net rescan of the queue; submits and exits wake the dispatcher at once.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub dispatch_poll_interval_ms: u64,
    /// Parent cgroup of per-task cgroups (linux_sandbox).
    #[arg(long, default_value = "/sys/fs/cgroup/execgo-runtime")]
    pub cgroup_root: PathBuf,
    /// Runtime node id [default: ${HOSTNAME:-execgo-runtime}-<listen_addr>, sanitized].
    #[arg(long, env = "EXECGO_RUNTIME_ID")]
    pub runtime_id: Option<String>,
    /// Capability mode of tasks that do not choose one.
    #[arg(
        long,
        env = "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE",
        value_enum,
        default_value = "adaptive"
    )]
    pub default_capability_mode: ModeArg,
    /// Never offer linux_sandbox, even where the host supports it.
    #[arg(long, env = "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX", action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolValueParser::new())]
    pub disable_linux_sandbox: bool,
    /// Never use cgroups, even where the host supports them.
    #[arg(long, env = "EXECGO_RUNTIME_DISABLE_CGROUP", action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolValueParser::new())]
    pub disable_cgroup: bool,
    /// Memory capacity of the resource ledger [default: physical memory].
    #[arg(long, env = "EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub capacity_memory_bytes: Option<u64>,
    /// Pids capacity of the resource ledger [default: /proc/sys/kernel/pid_max].
    #[arg(long, env = "EXECGO_RUNTIME_CAPACITY_PIDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub capacity_pids: Option<u64>,
    /// Tenant quota NAME=slots:N[,memory:BYTES][,pids:N]; repeatable.
    #[arg(long = "tenant-quota", value_name = "SPEC", value_parser = parse_tenant_quota)]
    pub tenant_quota: Vec<TenantQuota>,
    /// Connect to a separately running helper at this socket instead of
    /// starting the embedded one.
    #[arg(long)]
    pub helper_socket: Option<PathBuf>,
    /// Log destination [default: journald when JOURNAL_STREAM is set, else json].
    #[arg(long, env = "EXECGO_RUNTIME_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::serve::LogFormat>,
    /// Helper binary for the embedded mode [default: execgo-runtime-helper
    /// next to this executable].
    #[arg(long)]
    pub helper_path: Option<PathBuf>,
    /// Embedded mode: one user for every task, NAME|UID[:GID], passed to
    /// the helper. An explicit choice: as root, without it, every task
    /// gets a uid of its own (--task-uid-range). Unprivileged, tasks run
    /// as this user and only its own uid is accepted here.
    #[arg(
        long,
        env = "EXECGO_RUNTIME_TASK_USER",
        value_name = "USER",
        conflicts_with_all = ["helper_socket", "task_uid_range"]
    )]
    pub task_user: Option<String>,
    /// Embedded mode, as root: the uids tasks are given, one of its own per
    /// task (its gid the same number), passed to the helper. Start-up
    /// refuses a range holding a user or group of /etc/passwd or
    /// /etc/group or overlapping /etc/subuid or /etc/subgid (exit 2)
    /// [default: 1879048192-1879113727].
    #[arg(
        long,
        env = "EXECGO_RUNTIME_TASK_UID_RANGE",
        value_name = "FIRST-LAST",
        conflicts_with = "helper_socket"
    )]
    pub task_uid_range: Option<String>,
    /// Embedded mode: allow --task-user to be uid 0 (passed to the helper;
    /// tasks then still run without capabilities).
    #[arg(long, env = "EXECGO_RUNTIME_ALLOW_ROOT_TASKS", action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolValueParser::new(), conflicts_with = "helper_socket")]
    pub allow_root_tasks: bool,
    /// Embedded mode: a directory whose subdirectories linux_sandbox tasks
    /// may use as their root (`sandbox.rootfs` with `chroot: true`);
    /// repeatable, passed to the helper.
    #[arg(long, value_name = "DIR", conflicts_with = "helper_socket")]
    pub rootfs_dir: Vec<PathBuf>,
    /// Also serve OpenSandbox's task-executor API (POST /tasks, GET|DELETE
    /// /tasks/{name}, POST /setTasks, GET /getTasks, GET /health) at this
    /// address [default: off; the task-executor's own port is 5758].
    #[arg(
        long,
        env = "EXECGO_RUNTIME_OPENSANDBOX_LISTEN_ADDR",
        value_name = "ADDR"
    )]
    pub opensandbox_listen_addr: Option<SocketAddr>,
    /// Tenant of the tasks created through the OpenSandbox API (quotas and
    /// the resources view).
    #[arg(
        long,
        env = "EXECGO_RUNTIME_OPENSANDBOX_TENANT",
        value_name = "NAME",
        default_value = "opensandbox",
        value_parser = parse_tenant_name
    )]
    pub opensandbox_tenant: String,
    /// OpenSandbox sidecar mode: tasks created through the OpenSandbox API
    /// run in the namespaces of the main container's process (the first
    /// whose environment holds SANDBOX_MAIN_CONTAINER=<name>), with its
    /// environment; needs a privileged helper.
    #[arg(long, env = "ENABLE_SIDECAR_MODE", action = ArgAction::SetTrue,
          value_parser = clap::builder::BoolValueParser::new())]
    pub enable_sidecar_mode: bool,
    /// The main container's name in sidecar mode.
    #[arg(long, env = "MAIN_CONTAINER_NAME", value_name = "NAME", default_value = "main",
          value_parser = parse_container_name)]
    pub main_container_name: String,
    /// A directory under which tasks created through the OpenSandbox API
    /// may name an absolute workingDir (the directory itself or any below
    /// it; it must exist); repeatable (the env var takes a ':'-separated
    /// list), passed to the embedded helper as --workdir-root. Without
    /// one, an absolute workingDir is refused.
    #[arg(
        long,
        env = "EXECGO_RUNTIME_OPENSANDBOX_WORKDIR_ROOT",
        value_name = "DIR",
        value_delimiter = ':',
        value_parser = parse_workdir_root
    )]
    pub opensandbox_workdir_root: Vec<PathBuf>,
}

/// `--opensandbox-workdir-root`: absolute, normalised (no `.`, `..` or
/// empty components, no trailing slash), not `/`. Rejected, never repaired.
fn parse_workdir_root(s: &str) -> Result<PathBuf, String> {
    if execgo_runtime_protocol::valid_absolute_path(s) {
        Ok(PathBuf::from(s))
    } else {
        Err("must be an absolute path below / without '.', '..', empty components or a trailing slash".to_string())
    }
}

fn parse_container_name(s: &str) -> Result<String, String> {
    if execgo_runtime_protocol::valid_container_name(s) {
        Ok(s.to_string())
    } else {
        Err("use 1 to 253 ascii letters, digits, '-', '_' or '.'".to_string())
    }
}

/// A tenant name given on the command line: not blank.
fn parse_tenant_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the tenant must not be blank".to_string())
    } else {
        Ok(s.to_string())
    }
}

/// Makes the data dir and its `tasks/` mode 0700: everything the runtime
/// keeps (the database, every task's request, output and result) is then
/// out of every task's reach, whatever the files' own modes. A task
/// reaches its own workspace through the working directory its shim gives
/// it, never by a path.
fn close_to_others(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    for dir in [data_dir.to_path_buf(), data_dir.join("tasks")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "making the data dir {} mode 0700 (it must belong to the runtime's user)",
                    dir.display()
                )
            },
        )?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Adaptive,
    Strict,
}

impl From<ModeArg> for CapabilityMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Adaptive => CapabilityMode::Adaptive,
            ModeArg::Strict => CapabilityMode::Strict,
        }
    }
}

/// One `--tenant-quota`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuota {
    pub tenant: String,
    pub slots: u64,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// Parses `NAME=slots:N[,memory:BYTES][,pids:N]`.
pub fn parse_tenant_quota(spec: &str) -> Result<TenantQuota, String> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| {
        format!("tenant quota '{spec}' must look like NAME=slots:N[,memory:BYTES][,pids:N]")
    })?;
    if name.trim().is_empty() {
        return Err(format!("tenant quota '{spec}' has an empty tenant name"));
    }
    let mut seen = BTreeMap::new();
    for part in rest.split(',') {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("tenant quota '{spec}': '{part}' must be KEY:NUMBER"))?;
        if !matches!(key, "slots" | "memory" | "pids") {
            return Err(format!(
                "tenant quota '{spec}': unknown key '{key}' (expected slots, memory or pids)"
            ));
        }
        let n: u64 = value
            .parse()
            .map_err(|_| format!("tenant quota '{spec}': '{value}' is not a whole number"))?;
        if seen.insert(key, n).is_some() {
            return Err(format!("tenant quota '{spec}': '{key}' given twice"));
        }
    }
    let slots = *seen
        .get("slots")
        .ok_or_else(|| format!("tenant quota '{spec}': slots:N is required"))?;
    Ok(TenantQuota {
        tenant: name.to_string(),
        slots,
        memory_bytes: seen.get("memory").copied(),
        pids: seen.get("pids").copied(),
    })
}

/// The first tenant named by two `--tenant-quota` flags, if any.
pub fn duplicate_tenant(quotas: &[TenantQuota]) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    quotas
        .iter()
        .find(|q| !seen.insert(q.tenant.as_str()))
        .map(|q| q.tenant.as_str())
}

/// Default runtime id: `${HOSTNAME:-execgo-runtime}-<listen_addr>` with every
/// character outside `[A-Za-z0-9._-]` replaced by `-`.
pub fn default_runtime_id(hostname: Option<&str>, listen: &SocketAddr) -> String {
    let host = hostname
        .filter(|h| !h.is_empty())
        .unwrap_or("execgo-runtime");
    format!("{host}-{listen}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Validated configuration of a running `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub args: ServeArgs,
    pub runtime_id: String,
    /// Absolute data dir.
    pub data_dir: PathBuf,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        use anyhow::Context;
        let runtime_id = match &args.runtime_id {
            Some(id) if !id.trim().is_empty() => id.clone(),
            Some(_) => anyhow::bail!("--runtime-id must not be blank"),
            None => {
                default_runtime_id(std::env::var("HOSTNAME").ok().as_deref(), &args.listen_addr)
            }
        };
        std::fs::create_dir_all(args.data_dir.join("tasks"))
            .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&args.data_dir)
            .with_context(|| format!("resolving data dir {}", args.data_dir.display()))?;
        close_to_others(&data_dir)?;
        Ok(Config {
            args,
            runtime_id,
            data_dir,
        })
    }

    pub fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("runtime.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_quota_grammar() {
        assert_eq!(
            parse_tenant_quota("alice=slots:2,memory:2147483648,pids:256").unwrap(),
            TenantQuota {
                tenant: "alice".into(),
                slots: 2,
                memory_bytes: Some(2147483648),
                pids: Some(256)
            }
        );
        assert!(parse_tenant_quota("b=slots:1").is_ok());
        for bad in [
            "noequals",
            "=slots:1",
            "a=memory:5",
            "a=slots:x",
            "a=slots:1,cpu:2",
            "a=slots:1,slots:2",
            "a=slots",
            "a=slots:-1",
        ] {
            assert!(parse_tenant_quota(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workdir_roots_are_absolute_and_normalised() {
        assert_eq!(
            parse_workdir_root("/srv/apps").unwrap(),
            PathBuf::from("/srv/apps")
        );
        for bad in ["", "/", "rel", "/a/", "/a//b", "/a/./b", "/a/../b", "/a\0b"] {
            assert!(parse_workdir_root(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runtime_id_default() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            default_runtime_id(None, &addr),
            "execgo-runtime-127.0.0.1-8080"
        );
        assert_eq!(
            default_runtime_id(Some("host a"), &addr),
            "host-a-127.0.0.1-8080"
        );
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(default_runtime_id(Some("h"), &v6), "h----1--80");
    }
}
