//! The helper's half of a launch: validate, open the task directory under
//! the data dir without following symlinks, then start the shim detached
//! (its own session, a child of neither the helper nor the runtime) through
//! a short-lived intermediate ([`sys::spawn_detached`]). The helper does not wait for the shim: [`launch`] returns a
//! [`PendingLaunch`] holding the report pipe, which the serve loop polls
//! with everything else; when the shim's one report is in (or the pipe
//! ends, or 10 s pass) [`answer`] turns it into the reply, which goes out
//! in request order on its connection (see [`crate::replies`]).
//!
//! ```text
//! helper ── clone(CLONE_VM|CLONE_VFORK) ──► intermediate: setsid, _Fork, _exit
//!    │ waitpid(intermediate)             ┌───────────────────────┘
//!    │                                   └──► shim (re-parented to init or the
//!    │ pending launch: its report pipe        │   nearest subreaper)
//!    │ joins the poll set; other requests     │ claim, set up, exec the task
//!    │ and connections are served meanwhile   │
//!    │ ◄──────── one report frame (≤ 10 s) ───┘
//!    ▼ answer → its reply slot; replies leave in request order
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{HelperError, HelperErrorKind, LaunchSpec, Response};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::dispatch::Context;
use crate::peer::Peer;
use crate::pending::PendingLaunch;
use crate::replies::Reply;
use crate::shim::report::{ReportError, ReportReader, ShimReport};
use crate::shim::{self, ShimContext};
use crate::validate::{validate, ValidateError};
use crate::{fs_at, logging, sys};

/// How long a shim has to report before its launch is answered with an
/// error (the shim carries on either way; its claim tells the runtime).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error("creating the report pipe failed")]
    Pipe(#[source] Errno),
    #[error("making the report pipe non-blocking failed")]
    PipeNonBlocking(#[source] Errno),
    #[error("starting the shim failed")]
    Fork(#[source] Errno),
    #[error("launching the shim failed")]
    Report(#[source] ReportError),
}

impl LaunchError {
    fn kind(&self) -> HelperErrorKind {
        match self {
            LaunchError::Invalid(_)
            | LaunchError::TaskDirMissing(_)
            | LaunchError::TaskDirNotADir(_) => HelperErrorKind::InvalidRequest,
            LaunchError::TaskDir { .. }
            | LaunchError::Pipe(_)
            | LaunchError::PipeNonBlocking(_)
            | LaunchError::Fork(_) => HelperErrorKind::LaunchFailed,
            LaunchError::Report(_) => HelperErrorKind::Internal,
        }
    }
}

/// Starts a launch. Refused or failed before the fork: a ready error
/// reply. Otherwise the shim runs and the reply is pending its report.
pub fn launch(ctx: &Context, peer: &Peer, spec: LaunchSpec) -> Reply {
    let task_id = spec.task_id.clone();
    match start(ctx, peer, spec) {
        Ok(report) => Reply::Pending(PendingLaunch::new(task_id, report)),
        Err(e) => Reply::Ready(answer(&task_id, Err(e))),
    }
}

/// The one mapping from a launch's outcome to its reply and log line.
pub fn answer(task_id: &str, outcome: Result<ShimReport, LaunchError>) -> Response {
    match outcome {
        Ok(ShimReport::Launched(l)) => {
            tracing::info!(
                target: logging::TARGET,
                task_id,
                shim_pid = l.shim_pid,
                pid = l.pid,
                already_claimed = l.already_claimed,
                "launch reported"
            );
            Response::Launched(l)
        }
        Ok(ShimReport::Failed(e)) => {
            tracing::warn!(
                target: logging::TARGET,
                task_id,
                error = e.message.as_str(),
                "launch failed in the shim"
            );
            Response::Error(e)
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

/// Validates, forks the shim, and hands back the reader of its report.
fn start(ctx: &Context, peer: &Peer, spec: LaunchSpec) -> Result<ReportReader, LaunchError> {
    // Validation first: a refused request has no side effect at all.
    let launch = validate(spec)?;
    let task_dir = open_task_dir(ctx, &launch.task_id)?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(LaunchError::Pipe)?;
    // Our end is made non-blocking before the fork, so a failure here
    // starts nothing; the shim's end stays blocking.
    let report = ReportReader::new(report_r, REPORT_TIMEOUT, Instant::now())
        .map_err(LaunchError::PipeNonBlocking)?;
    let shim_ctx = ShimContext {
        launch,
        task_dir,
        peer_uid: peer.uid,
        peer_gid: peer.gid,
        privileged: ctx.capabilities.privileged,
    };
    // The shim runs in a copy of our memory, owning its own copies of the
    // context and the pipe's write end; ours are dropped when this returns.
    sys::spawn_detached(move || shim::run(shim_ctx, report_w)).map_err(LaunchError::Fork)?;
    // The report is read by the serve loop, as the pipe becomes readable.
    Ok(report)
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
