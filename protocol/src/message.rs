//! The handshake and the closed set of requests the helper serves.
//!
//! The helper treats every request as hostile: it re-validates each field
//! (task id charset, relative paths, sizes) before any syscall. The runtime
//! never sends paths of its own choosing: the helper derives the task
//! directory from its own `--data-dir` and the task id.
//!
//! Compatibility rule: enum variants are only appended, never reordered or
//! removed; any change of a type's shape bumps [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

use crate::{HELLO_MAGIC, PROTOCOL_VERSION};

/// First frame on every connection, client → helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u32,
}

impl Hello {
    pub fn current() -> Self {
        Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        }
    }
}

/// Helper's answer to [`Hello`]. After `Rejected` the helper closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        version: u32,
        helper_version: String,
        helper_pid: u32,
    },
    Rejected {
        reason: String,
    },
}

/// A request, runtime → helper. One reply follows each.
// One request is decoded and served at a time; boxing the launch would buy
// nothing but an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; safe: touches nothing.
    Ping,
    /// Probes the host afresh and returns the capabilities found. Safe:
    /// every probe that changes process state runs in a throwaway child;
    /// the rest creates and removes only the helper's own scratch entries
    /// (a `probe-<pid>` cgroup under the configured `--cgroup-root`, a
    /// scratch directory in the data dir), with a bounded time per probe.
    Probe,
    /// Launches the detached shim of one task. Safe because the helper
    /// derives every path from its own data dir and the validated task id,
    /// refuses a task directory that is a symlink, and the shim claims the
    /// task with `O_CREAT|O_EXCL`, so a repeated launch never runs twice.
    Launch(LaunchSpec),
    // Protocol version 7.
    /// Ends what is left of a task whose shim is gone (killed, OOM-killed,
    /// crashed) before the runtime reports it terminal: every process in
    /// its cgroups and of its leased uid is killed, what it left is handed
    /// to the runtime's user, its lease and cgroups are removed — the
    /// shim's own last steps. Safe: refused (`InvalidRequest`) while the
    /// task's claim names a live shim, so it never reaches a running
    /// task; the task id is validated and its directory derived from our
    /// own data dir; it kills only the task's own cgroups and uid.
    Reap { task_id: String },
}

/// A reply, helper → runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Probe(HelperCapabilities),
    Launched(Launched),
    Error(HelperError),
    // Protocol version 7.
    /// Nothing of the task is left running ([`Request::Reap`]).
    Reaped,
}

/// What the helper found usable when it probed the host (at start, and
/// again on each [`Request::Probe`]). Every flag is the result of really
/// trying the mechanism, never inferred from the uid. Fields are only
/// appended, with a [`crate::PROTOCOL_VERSION`] bump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperCapabilities {
    /// Running as uid 0 (informational only; capabilities below are probed).
    pub privileged: bool,
    pub process_group: bool,
    pub rlimit_cpu: bool,
    pub rlimit_memory: bool,
    pub data_dir_writable: bool,
    // Protocol version 2.
    /// Which namespaces a throwaway child could unshare(2).
    pub namespaces: NamespaceCapabilities,
    /// chroot(2) into an empty scratch directory worked in a throwaway child.
    pub chroot: bool,
    /// pivot_root(2) onto a bind-mounted scratch directory, inside a fresh
    /// mount namespace, worked in a throwaway child.
    pub pivot_root: bool,
    /// A trivial allow-all seccomp filter could be loaded (with
    /// NO_NEW_PRIVS) in a throwaway child.
    pub seccomp: bool,
    /// The cgroup layout found in /proc/self/mountinfo.
    pub cgroup_version: CgroupVersion,
    /// cgroup v2 (the unified hierarchy) serves at least one of the memory,
    /// pids and cpu controllers.
    pub cgroup_v2: bool,
    /// A cgroup v1 hierarchy serves at least one of the memory, pids and
    /// cpu controllers.
    pub cgroup_v1: bool,
    /// A probe cgroup could be created and removed under `--cgroup-root`
    /// for at least one of the memory, pids and cpu controllers (the flags
    /// below say which).
    pub cgroup_writable: bool,
    /// A memory limit was written to a probe cgroup and read back
    /// (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_limit: bool,
    /// A pids limit was written and read back (`pids.max`).
    pub pids_limit: bool,
    /// A CPU quota was written and read back (v2 `cpu.max`, v1
    /// `cpu.cfs_quota_us`).
    pub cpu_quota: bool,
    /// The OOM-kill counter of a memory probe cgroup is readable (v2
    /// `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`).
    pub oom_detection: bool,
    /// One lower-case line per capability found missing, saying which step
    /// failed and why, e.g. `cgroup memory controller: mkdir
    /// /sys/fs/cgroup/memory/execgo-runtime: permission denied`.
    pub warnings: Vec<String>,
    // Protocol version 4.
    /// Tasks get cgroups of their own (see [`LaunchSpec::task_cgroups`]):
    /// every process of a task is signalled and killed through them.
    pub task_cgroups: bool,
    /// The uid tasks run as (a root helper's `--task-user`, else its own).
    pub task_uid: u32,
    /// The operator's `--rootfs-dir`s: a sandbox's `rootfs` must lie
    /// inside one of them.
    pub rootfs_dirs: Vec<String>,
    // Protocol version 6.
    /// The operator's `--workdir-root`s: a task's absolute working
    /// directory ([`LaunchSpec::workdir`]) must lie inside one of them.
    pub workdir_roots: Vec<String>,
    // Protocol version 7.
    /// Tasks get a uid (and the same gid) of their own, leased from this
    /// inclusive range (a root helper's `--task-uid-range`); `None` when
    /// every task runs as [`Self::task_uid`].
    pub task_uid_range: Option<(u32, u32)>,
}

/// Namespaces a throwaway child could create with unshare(2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceCapabilities {
    /// CLONE_NEWNS, and making `/` recursively private inside it.
    pub mount: bool,
    /// CLONE_NEWPID, and a child of it running as pid 1.
    pub pid: bool,
    /// CLONE_NEWUTS, and setting the hostname inside it.
    pub uts: bool,
    /// CLONE_NEWIPC.
    pub ipc: bool,
    /// CLONE_NEWNET.
    pub net: bool,
    /// CLONE_NEWUSER.
    pub user: bool,
}

/// How the host's cgroup hierarchies are mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// No cgroup hierarchy is mounted.
    #[default]
    None,
    /// Only v1 hierarchies with controllers.
    V1,
    /// Only the v2 unified hierarchy.
    V2,
    /// Both: v1 controller hierarchies and a v2 mount (which may serve few
    /// or no controllers), as systemd's "hybrid" mode sets up.
    Hybrid,
}

impl CgroupVersion {
    /// `"none"`, `"v1"`, `"v2"` or `"hybrid"`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::None => "none",
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
            CgroupVersion::Hybrid => "hybrid",
        }
    }
}

/// Sandbox profile the shim applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaunchProfile {
    /// Plain process: own process group, rlimits, minimal env.
    Process,
    // Protocol version 4.
    /// The namespaces asked for, a read-only host root with the workspace
    /// and a private `/tmp` writable, cgroup limits and a seccomp
    /// deny-list.
    LinuxSandbox(SandboxSpec),
}

/// The namespaces of a `linux_sandbox` task, and its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub mount: bool,
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    /// Switch the task's root to this directory (pivot_root): an absolute,
    /// normalised path inside one of the helper's `--rootfs-dir`s
    /// ([`HelperCapabilities::rootfs_dirs`]); needs `mount`.
    pub rootfs: Option<String>,
}

/// Everything the shim needs to run one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Validated again by the helper: 1..=128 bytes of `[A-Za-z0-9._-]`,
    /// not `.` or `..`.
    pub task_id: String,
    /// argv; `argv[0]` is the program, looked up in the task env's `PATH`
    /// when it has no `/`.
    pub argv: Vec<String>,
    /// Complete child environment (the runtime already reduced it to the
    /// minimal set plus the task's own `env`).
    pub env: Vec<(String, String)>,
    /// Relative directory under `tasks/<id>/workspace`, created by the shim.
    pub workspace_subdir: Option<String>,
    pub profile: LaunchProfile,
    pub limits: LaunchLimits,
    /// SIGTERM → SIGKILL grace for timeouts and kills.
    pub termination_grace_ms: u64,
    /// A JSON object: the static part of the task's status body. The shim
    /// adds its outcome fields (see [`crate::Outcome`]) and writes the result
    /// as `tasks/<id>/result.json`.
    pub result_template: String,
    // Protocol version 4.
    /// Put the task in cgroups of its own, where the helper has them
    /// ([`HelperCapabilities::task_cgroups`]); false keeps it out of them
    /// (the operator disabled cgroups).
    pub task_cgroups: bool,
    // Protocol version 5.
    /// Processes the task's main process leaves running are not killed
    /// when it exits: the task's result is recorded then, and the shim
    /// stays, keeping them, until a kill byte on the control FIFO (SIGTERM,
    /// grace, SIGKILL to them and the task's cgroups) or until none is
    /// left. For OpenSandbox's bootstrap pattern (`sh -c 'daemon &'`).
    pub keep_descendants: bool,
    /// Sidecar mode: run the task in the mount, uts, ipc, net and pid
    /// namespaces of the main container named here, with its environment
    /// as the base environment (`env` then holds only the task's own
    /// variables). The helper finds the container's process itself (the
    /// first whose environment holds exactly `SANDBOX_MAIN_CONTAINER=<name>`,
    /// see [`SIDECAR_MARKER`]); the name follows [`valid_container_name`].
    pub sidecar_target: Option<String>,
    // Protocol version 6.
    /// The task's working directory, instead of its workspace: an
    /// absolute, normalised path strictly inside one of the helper's
    /// `--workdir-root`s ([`HelperCapabilities::workdir_roots`], the rule of
    /// [`rootfs_allowed`]); it must exist (it is not created). Process
    /// profile only, and not with `sidecar_target`. For OpenSandbox's
    /// absolute `workingDir`.
    pub workdir: Option<String>,
    // Protocol version 7.
    /// The task directory's `script` is handed to the task as descriptor
    /// [`SCRIPT_FD`] (a private copy), and `argv`'s last element names it
    /// ([`SCRIPT_ARG`]): the interpreter needs no path into the data dir,
    /// which tasks cannot search.
    pub script_fd: bool,
}

/// The descriptor a script task's script is on ([`LaunchSpec::script_fd`]).
pub const SCRIPT_FD: i32 = 3;
/// The path an interpreter is given for its script: the descriptor
/// [`SCRIPT_FD`] through the task's own `/proc`.
pub const SCRIPT_ARG: &str = "/proc/self/fd/3";

/// The environment variable that marks the main container's process in
/// sidecar mode, as OpenSandbox's task-executor looks for it.
pub const SIDECAR_MARKER: &str = "SANDBOX_MAIN_CONTAINER";

/// A main container's name: 1 to 253 ASCII letters, digits, `-`, `_`, `.`
/// (Kubernetes container names are narrower).
pub fn valid_container_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Limits the shim enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchLimits {
    pub wall_time_ms: u64,
    pub cpu_time_sec: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    pub stdout_max_bytes: u64,
    pub stderr_max_bytes: u64,
    // Protocol version 5.
    /// A CPU quota in thousandths of a CPU (1000: one CPU), enforced by
    /// the task's cgroup; within [`CPU_MILLIS_MIN`]..=[`CPU_MILLIS_MAX`].
    pub cpu_millis: Option<u64>,
    // Protocol version 7.
    /// The most bytes each output log (`stdout.log`, `stderr.log`) holds;
    /// the shim drops what the task writes past it, still draining the
    /// task's output so it never blocks. At least 1.
    pub max_log_bytes: u64,
}

/// The smallest `cpu_millis`: the kernel's smallest CFS quota (1 ms) in
/// its 100 ms period.
pub const CPU_MILLIS_MIN: u64 = 10;
/// The largest `cpu_millis`: a thousand CPUs.
pub const CPU_MILLIS_MAX: u64 = 1_000_000;
/// The CFS period a `cpu_millis` quota is written with, in µs; the quota
/// is `cpu_millis * CPU_PERIOD_US / 1000`.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The helper's answer to a launch: the shim is started and detached.
/// What happens next is for the task directory to say (see
/// [`crate::taskdir`]): the shim claims the task, writes `started` once the
/// task's process is exec'd and `result.json` at the end; a shim that finds
/// the task claimed already exits at once, running nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub shim_pid: i32,
    /// Start time of the shim, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`), so a reused pid is never mistaken for it; 0
    /// when the shim had exited already when the helper looked.
    pub shim_start_ticks: u64,
    // Protocol version 7.
    /// The uid the task runs as: leased for this task from the helper's
    /// range, or the shared task user's, or the helper's own.
    pub task_uid: u32,
}

/// Why the helper refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperError {
    pub kind: HelperErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperErrorKind {
    /// The request failed validation; nothing was done.
    InvalidRequest,
    /// The host could not set up the task (fork, claim, files).
    LaunchFailed,
    /// A sandbox mechanism failed during setup.
    SandboxSetupFailed,
    /// The helper itself failed.
    Internal,
}

impl std::fmt::Display for HelperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Task id rule shared by the runtime's validation and the helper's.
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `path` is absolute and normalised: no `.`, `..` or empty
/// components, no trailing slash, no NUL, not `/`.
pub fn valid_absolute_path(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether `path` is absolute and normalised ([`valid_absolute_path`]) and
/// strictly inside one of `dirs` (each itself such a path).
pub fn rootfs_allowed(path: &str, dirs: &[String]) -> bool {
    valid_absolute_path(path)
        && dirs.iter().any(|d| {
            valid_absolute_path(d)
                && path
                    .strip_prefix(d.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The rule of a task's absolute working directory
/// ([`LaunchSpec::workdir`]): absolute and normalised, and one of `roots`
/// or inside one (lexically: `/srv/app` is under `/srv`, `/srvx` is not).
/// Returns the root it lies in and the relative rest (empty for the root
/// itself).
pub fn workdir_within<'a>(path: &'a str, roots: &'a [String]) -> Option<(&'a str, &'a str)> {
    if !valid_absolute_path(path) {
        return None;
    }
    roots
        .iter()
        .filter(|r| valid_absolute_path(r))
        .find_map(|r| {
            let rest = path.strip_prefix(r.as_str())?;
            if rest.is_empty() {
                Some((r.as_str(), ""))
            } else {
                rest.strip_prefix('/').map(|rel| (r.as_str(), rel))
            }
        })
}

/// Relative-path rule for `workspace_subdir`: non-empty, relative, no `..`,
/// no empty or `.`-only components, no NUL.
pub fn valid_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_rule() {
        let roots = vec!["/srv".to_string(), "/data/apps".to_string()];
        assert_eq!(workdir_within("/srv", &roots), Some(("/srv", "")));
        assert_eq!(workdir_within("/srv/a/b", &roots), Some(("/srv", "a/b")));
        assert_eq!(
            workdir_within("/data/apps/x", &roots),
            Some(("/data/apps", "x"))
        );
        for bad in [
            "/srvx",
            "/srv/../etc",
            "/srv/./a",
            "/srv//a",
            "/srv/",
            "srv/a",
            "/",
            "",
            "/etc",
            "/data",
            "/srv/a\0",
        ] {
            assert_eq!(workdir_within(bad, &roots), None, "{bad:?}");
        }
        assert_eq!(workdir_within("/srv/a", &[]), None);
        // A root that is not itself normalised allows nothing.
        assert_eq!(workdir_within("/a/b", &["/a/".to_string()]), None);
        assert_eq!(workdir_within("/x", &["/".to_string()]), None);
    }

    #[test]
    fn task_id_rule() {
        assert!(valid_task_id("abc-1_2.3"));
        assert!(valid_task_id(&"a".repeat(128)));
        assert!(!valid_task_id(&"a".repeat(129)));
        for bad in ["", ".", "..", "a/b", "a b", "é", "a\0"] {
            assert!(!valid_task_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_version_names() {
        for v in [
            CgroupVersion::None,
            CgroupVersion::V1,
            CgroupVersion::V2,
            CgroupVersion::Hybrid,
        ] {
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(v.as_str())
            );
        }
        assert_eq!(CgroupVersion::default(), CgroupVersion::None);
    }

    #[test]
    fn capabilities_round_trip() {
        let caps = HelperCapabilities {
            namespaces: NamespaceCapabilities {
                user: true,
                ..Default::default()
            },
            cgroup_version: CgroupVersion::Hybrid,
            warnings: vec!["x: y".into()],
            ..Default::default()
        };
        let frame = crate::encode(&Response::Probe(caps.clone())).unwrap();
        // encode() includes the 4-byte length prefix; decode() takes the
        // payload.
        assert_eq!(
            crate::decode::<Response>(&frame[4..]).unwrap(),
            Response::Probe(caps)
        );
    }

    #[test]
    fn relative_path_rule() {
        assert!(valid_relative_path("a/b-c"));
        for bad in ["", "/a", "a/../b", "..", "a//b", "./a", "a/", "a\0b"] {
            assert!(!valid_relative_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn rootfs_must_be_normalised_and_inside_an_allowed_dir() {
        let dirs = vec!["/srv/rootfs".to_string()];
        assert!(rootfs_allowed("/srv/rootfs/debian", &dirs));
        assert!(rootfs_allowed("/srv/rootfs/a/b", &dirs));
        for bad in [
            "/srv/rootfs",
            "/srv/rootfs/",
            "/srv/rootfsx/debian",
            "/srv/rootfs/../etc",
            "/srv/rootfs/./a",
            "/srv/rootfs//a",
            "srv/rootfs/a",
            "/etc",
            "/",
            "",
        ] {
            assert!(!rootfs_allowed(bad, &dirs), "{bad:?}");
        }
        assert!(!rootfs_allowed("/srv/rootfs/a", &[]));
        assert!(!rootfs_allowed(
            "/srv/rootfs/a",
            &["/srv/../srv/rootfs".into()]
        ));
    }
}
