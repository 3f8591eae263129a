//! The helper's half of a launch: validate, open the task directory under
//! the data dir without following symlinks, start the shim detached (its
//! own session, a child of neither the helper nor the runtime) through a
//! short-lived intermediate ([`sys::spawn_detached`]), and answer at once
//! with the shim's pid and start ticks. What the shim does next is for the
//! task directory to say (`shim.claim`, `started`, `result.json`).
//!
//! ```text
//! helper ── clone(CLONE_VM|CLONE_VFORK) ──► intermediate: setsid, _Fork, _exit
//!    │ waitpid(intermediate)             ┌───────────────────────┘
//!    │ reads the shim's pid              └──► shim (re-parented to init or the
//!    │ and its start ticks                    │   nearest subreaper)
//!    ▼ replies Launched                       │ claim, set up, exec the task,
//!                                             ▼ `started`, monitor, result.json
//! ```

use std::os::fd::{AsFd, OwnedFd};

use execgo_runtime_protocol::taskdir::start_ticks;
use execgo_runtime_protocol::{
    HelperError, HelperErrorKind, LaunchProfile, LaunchSpec, Launched, Response,
};
use nix::errno::Errno;

use crate::dispatch::Context;
use crate::identity::TaskIdentity;
use crate::peer::Peer;
use crate::prefork::Handover;
use crate::shim::{self, ShimContext};
use crate::sys::DetachError;
use crate::validate::{validate, ValidateError};
use crate::{fs_at, logging, sys};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error("task directory tasks/{0} does not exist")]
    TaskDirMissing(String),
    #[error("task directory tasks/{0} is a symlink or not a directory")]
    TaskDirNotADir(String),
    #[error("opening the task directory tasks/{id} failed")]
    TaskDir {
        id: String,
        #[source]
        source: Errno,
    },
    #[error("starting the shim failed")]
    Start(#[source] DetachError),
    /// The shim is a copy of our memory made without fork handlers: sound
    /// only while we have one thread.
    #[error("the helper has {0} threads; a shim is only started from a single-threaded helper")]
    Threaded(usize),
    #[error("counting the helper's threads failed")]
    ThreadCount(#[source] std::io::Error),
    #[error("sandbox.rootfs {0:?} is not inside a --rootfs-dir of this helper, or chroot lacks the mount namespace")]
    RootfsNotAllowed(String),
    #[error(
        "opening the rootfs {path:?} beneath its --rootfs-dir without following symlinks failed"
    )]
    Rootfs {
        path: String,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    Sidecar(crate::sidecar::SidecarError),
    #[error(
        "workdir {path:?} is not a --workdir-root of this helper or inside one (allowed: {roots})"
    )]
    WorkdirNotAllowed { path: String, roots: String },
    #[error("opening the working directory {path:?} beneath its --workdir-root without following symlinks failed (it must exist and be a directory)")]
    Workdir {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("leasing a task uid failed")]
    Lease(#[source] crate::uid_lease::LeaseError),
}

impl LaunchError {
    fn kind(&self) -> HelperErrorKind {
        match self {
            LaunchError::Invalid(_)
            | LaunchError::TaskDirMissing(_)
            | LaunchError::TaskDirNotADir(_)
            | LaunchError::WorkdirNotAllowed { .. } => HelperErrorKind::InvalidRequest,
            LaunchError::RootfsNotAllowed(_)
            | LaunchError::Rootfs { .. }
            | LaunchError::Sidecar(_) => HelperErrorKind::SandboxSetupFailed,
            // A shim may be running, and nobody knows its pid: not a plain
            // launch failure (see docs/helper.md).
            LaunchError::Start(DetachError::Lost(_)) => HelperErrorKind::Internal,
            LaunchError::TaskDir { .. } | LaunchError::Start(_) | LaunchError::Workdir { .. } => {
                HelperErrorKind::LaunchFailed
            }
            LaunchError::Threaded(_) | LaunchError::ThreadCount(_) | LaunchError::Lease(_) => {
                HelperErrorKind::LaunchFailed
            }
        }
    }
}

/// Serves a launch: `Launched` once the shim is started, or why not.
pub fn launch(ctx: &Context, peer: &Peer, spec: LaunchSpec) -> Response {
    let task_id = spec.task_id.clone();
    let task_id = task_id.as_str();
    match start(ctx, peer, spec) {
        Ok(l) => {
            tracing::info!(
                target: logging::TARGET,
                task_id,
                shim_pid = l.shim_pid,
                shim_start_ticks = l.shim_start_ticks,
                "shim launched"
            );
            Response::Launched(l)
        }
        Err(e) => {
            let message = logging::chain(&e);
            let error = message.as_str();
            if e.kind() == HelperErrorKind::InvalidRequest {
                tracing::warn!(target: logging::TARGET, task_id, error, "launch refused");
            } else {
                tracing::error!(target: logging::TARGET, task_id, error, "launch failed");
            }
            Response::Error(HelperError {
                kind: e.kind(),
                message,
            })
        }
    }
}

/// Validates, starts the shim, and names it.
fn start(ctx: &Context, peer: &Peer, spec: LaunchSpec) -> Result<Launched, LaunchError> {
    // A spare shim validates the request again, as the runtime sent it.
    let for_spare = ctx.prefork.enabled().then(|| spec.clone());
    // Validation first: a refused request has no side effect at all.
    let mut launch = validate(spec)?;
    // The operator's cap holds whatever the runtime asks.
    launch.limits.max_log_bytes = launch.limits.max_log_bytes.min(ctx.max_log_bytes);
    let rootfs = open_rootfs(ctx, &launch.profile)?;
    let workdir = open_workdir(ctx, launch.workdir.as_deref())?;
    let task_dir = open_task_dir(ctx, &launch.task_id)?;
    // Sidecar mode: the target is found by the helper itself, never taken
    // from the runtime (which names only the container).
    let sidecar = match &launch.sidecar_target {
        Some(name) => Some(crate::sidecar::find(name).map_err(LaunchError::Sidecar)?),
        None => None,
    };
    let cgroups = ctx.cgroups.clone().filter(|_| launch.task_cgroups);
    let seccomp = ctx
        .task_seccomp
        .as_ref()
        .map(|f| f.for_profile(&launch.profile));
    let netns = match &launch.profile {
        LaunchProfile::LinuxSandbox(spec) if spec.net => ctx.net_spare.take(),
        _ => None,
    };
    // Last before the shim: a refused launch leaves no lease. From here
    // on, a launch that starts no shim gives it back.
    let leased = match &ctx.leases {
        Some(leases) => {
            let uid = leases
                .acquire(&launch.task_id)
                .map_err(LaunchError::Lease)?;
            Some((leases, uid))
        }
        None => None,
    };
    let task_identity = match leased {
        Some((_, uid)) => Some(TaskIdentity { uid, gid: uid }),
        None => ctx.task_identity,
    };
    let task_uid = task_identity.map_or_else(|| nix::unistd::geteuid().as_raw(), |t| t.uid);
    let for_id = launch.task_id.clone();
    let give_back = |e: LaunchError| {
        if let Some((leases, uid)) = leased {
            leases.forget(uid, &for_id);
        }
        e
    };
    let shim_ctx = ShimContext {
        launch,
        task_dir,
        peer_uid: peer.uid,
        peer_gid: peer.gid,
        privileged: ctx.capabilities.privileged,
        task_identity,
        lease: leased.map(|(l, _)| std::rc::Rc::clone(l)),
        cgroups,
        rootfs,
        seccomp,
        sidecar,
        workdir,
        netns,
    };
    if let (Some(spec), None) = (&for_spare, &shim_ctx.sidecar) {
        let handed = ctx.prefork.hand_over(&Handover {
            spec,
            peer_uid: peer.uid,
            peer_gid: peer.gid,
            task_uid: leased.map(|(_, uid)| uid),
            task_dir: shim_ctx.task_dir.as_fd(),
            rootfs: shim_ctx.rootfs.as_ref().map(AsFd::as_fd),
            workdir: shim_ctx.workdir.as_ref().map(AsFd::as_fd),
            netns: shim_ctx.netns.as_ref().map(AsFd::as_fd),
        });
        if let Some(launched) = handed {
            // The spare has its own copies of our descriptors.
            return Ok(Launched {
                task_uid,
                ..launched
            });
        }
    }
    let threads = sys::thread_count()
        .map_err(LaunchError::ThreadCount)
        .map_err(give_back)?;
    if threads != 1 {
        return Err(give_back(LaunchError::Threaded(threads)));
    }
    // The shim runs in a copy of our memory, owning its own copy of the
    // context; ours is dropped when this returns.
    let shim = match sys::spawn_detached(move || shim::run(shim_ctx)) {
        Ok(pid) => pid,
        // Lost: a shim may run with the lease; it gives it back itself.
        Err(e @ DetachError::Lost(_)) => return Err(LaunchError::Start(e)),
        Err(e) => return Err(give_back(LaunchError::Start(e))),
    };
    let shim_pid = shim.as_raw();
    // 0 when the shim has exited already (it found the task claimed, say).
    let shim_start_ticks = start_ticks(shim_pid).unwrap_or(0);
    Ok(Launched {
        shim_pid,
        shim_start_ticks,
        task_uid,
    })
}

/// A sandbox's rootfs, opened beneath the `--rootfs-dir` it lies in, no
/// symlink followed on the way.
fn open_rootfs(ctx: &Context, profile: &LaunchProfile) -> Result<Option<OwnedFd>, LaunchError> {
    let LaunchProfile::LinuxSandbox(spec) = profile else {
        return Ok(None);
    };
    let Some(path) = &spec.rootfs else {
        return Ok(None);
    };
    let dirs: Vec<String> = ctx.rootfs_dirs.iter().map(|(d, _)| d.clone()).collect();
    if !spec.mount || !execgo_runtime_protocol::rootfs_allowed(path, &dirs) {
        return Err(LaunchError::RootfsNotAllowed(path.clone()));
    }
    let (dir, fd) = ctx
        .rootfs_dirs
        .iter()
        .find(|(d, _)| {
            path.strip_prefix(d.as_str())
                .is_some_and(|r| r.starts_with('/'))
        })
        .ok_or_else(|| LaunchError::RootfsNotAllowed(path.clone()))?;
    let rel = &path[dir.len() + 1..];
    fs_at::open_dir_beneath(fd.as_fd(), rel)
        .map(Some)
        .map_err(|source| LaunchError::Rootfs {
            path: path.clone(),
            source,
        })
}

/// A task's absolute working directory, opened beneath the `--workdir-root`
/// it lies in (lexically, checked again here: the runtime's word is not
/// taken), no symlink followed on the way. It must exist.
fn open_workdir(ctx: &Context, path: Option<&str>) -> Result<Option<OwnedFd>, LaunchError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let names: Vec<String> = ctx.workdir_roots.iter().map(|(d, _)| d.clone()).collect();
    let not_allowed = || LaunchError::WorkdirNotAllowed {
        path: path.to_string(),
        roots: names.join(", "),
    };
    let (root, rel) =
        execgo_runtime_protocol::workdir_within(path, &names).ok_or_else(not_allowed)?;
    let (_, fd) = ctx
        .workdir_roots
        .iter()
        .find(|(d, _)| d == root)
        .ok_or_else(not_allowed)?;
    let opened = if rel.is_empty() {
        fd.try_clone()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))
    } else {
        fs_at::open_dir_beneath(fd.as_fd(), rel)
    };
    opened.map(Some).map_err(|source| LaunchError::Workdir {
        path: path.to_string(),
        source,
    })
}

/// `tasks/<id>`, resolved under the data dir descriptor one component at a
/// time, neither component allowed to be a symlink.
fn open_task_dir(ctx: &Context, id: &str) -> Result<OwnedFd, LaunchError> {
    // ENOTDIR or ELOOP: a symlink or a file where a directory belongs.
    let classify = |e: Errno| match e {
        Errno::ENOENT => LaunchError::TaskDirMissing(id.to_string()),
        Errno::ELOOP | Errno::ENOTDIR => LaunchError::TaskDirNotADir(id.to_string()),
        source => LaunchError::TaskDir {
            id: id.to_string(),
            source,
        },
    };
    let tasks = fs_at::open_dir(ctx.data_fd.as_fd(), "tasks").map_err(classify)?;
    fs_at::open_dir(tasks.as_fd(), id).map_err(classify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    fn ctx_with_root(root: &std::path::Path) -> (tempfile::TempDir, Context) {
        let data = tempfile::tempdir().unwrap();
        let open = |p: &std::path::Path| {
            sys::open(
                p,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        let ctx = Context {
            data_fd: open(data.path()),
            capabilities: Default::default(),
            task_identity: None,
            leases: None,
            cgroups: None,
            rootfs_dirs: Vec::new(),
            workdir_roots: vec![(root.display().to_string(), open(root))],
            task_seccomp: None,
            max_log_bytes: crate::cli::DEFAULT_MAX_LOG_BYTES,
            net_spare: sys::NetnsSpare::disabled(),
            prefork: crate::prefork::Prefork::disabled(),
        };
        (data, ctx)
    }

    #[test]
    fn a_workdir_is_opened_beneath_its_root_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir(tmp.path().join("out")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("out"), root.join("link")).unwrap();
        std::fs::write(root.join("file"), "").unwrap();
        let (_data, ctx) = ctx_with_root(&root);
        let r = root.display().to_string();
        assert!(open_workdir(&ctx, None).unwrap().is_none());
        for ok in [r.clone(), format!("{r}/a"), format!("{r}/a/b")] {
            assert!(open_workdir(&ctx, Some(&ok)).unwrap().is_some(), "{ok}");
        }
        let out = tmp.path().join("out").display().to_string();
        for refused in [out, format!("{r}x"), format!("{r}/a/../../out"), "/".into()] {
            let e = open_workdir(&ctx, Some(&refused)).unwrap_err();
            assert_eq!(e.kind(), HelperErrorKind::InvalidRequest, "{refused}");
            assert!(e.to_string().contains(&r), "names the roots: {e}");
        }
        for failed in [
            format!("{r}/nope"),
            format!("{r}/link"),
            format!("{r}/link/x"),
            format!("{r}/file"),
        ] {
            let e = open_workdir(&ctx, Some(&failed)).unwrap_err();
            assert_eq!(e.kind(), HelperErrorKind::LaunchFailed, "{failed}: {e}");
        }
    }
}
