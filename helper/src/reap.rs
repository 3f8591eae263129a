//! The end of a task whose shim is gone ([`Request::Reap`]): what the shim
//! would have done last, done by the helper when the runtime finds the shim
//! dead without a result (an OOM kill, a crash, an operator's `kill -9`).
//! Every process left in the task's cgroups dies, then every process of
//! its leased uid, wherever it went; what it left is handed to the
//! runtime's user; its cgroups and its lease go. The runtime reports the
//! task terminal only after this answer, so a terminal task has nothing
//! running.
//!
//! [`Request::Reap`]: execgo_runtime_protocol::Request::Reap

use std::os::fd::AsFd;

use execgo_runtime_protocol::{valid_task_id, HelperError, HelperErrorKind, Response};

use crate::dispatch::{shim_running, Context};
use crate::peer::Peer;
use crate::{fs_at, logging, uid_lease};

#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("task_id {0:?} is invalid")]
    TaskId(String),
    #[error("the shim of task {0} is alive; end it through its control FIFO")]
    ShimAlive(String),
    #[error("reading the task uid leases failed")]
    Leases(#[source] nix::errno::Errno),
    #[error(transparent)]
    Release(#[from] uid_lease::LeaseError),
}

/// Serves a reap: `Reaped` once nothing of the task is left, or why not.
pub fn reap(ctx: &Context, peer: &Peer, task_id: &str) -> Response {
    match end(ctx, peer, task_id) {
        Ok(()) => {
            tracing::info!(
                target: logging::TARGET,
                task_id,
                "ended what was left of a task whose shim is gone"
            );
            Response::Reaped
        }
        Err(e) => {
            let kind = match e {
                ReapError::TaskId(_) | ReapError::ShimAlive(_) => HelperErrorKind::InvalidRequest,
                ReapError::Leases(_) | ReapError::Release(_) => HelperErrorKind::Internal,
            };
            let message = logging::chain(&e);
            tracing::warn!(target: logging::TARGET, task_id, error = message.as_str(), "reap failed");
            Response::Error(HelperError { kind, message })
        }
    }
}

fn end(ctx: &Context, peer: &Peer, task_id: &str) -> Result<(), ReapError> {
    if !valid_task_id(task_id) {
        return Err(ReapError::TaskId(task_id.to_string()));
    }
    if shim_running(ctx, task_id) {
        return Err(ReapError::ShimAlive(task_id.to_string()));
    }
    // Its cgroups first: they hold every process of the task, whatever
    // its uid (a shared --task-user's too).
    if let Some(placement) = &ctx.cgroups {
        placement.reap(task_id, &crate::cgroup::HostFs);
    }
    let Some(leases) = &ctx.leases else {
        return Ok(());
    };
    let task_dir = fs_at::open_dir(ctx.data_fd.as_fd(), "tasks")
        .and_then(|tasks| fs_at::open_dir(tasks.as_fd(), task_id))
        .ok();
    let workspace = task_dir
        .as_ref()
        .and_then(|d| fs_at::open_dir(d.as_fd(), execgo_runtime_protocol::taskdir::WORKSPACE).ok());
    let owner = crate::shim::runtime_owner(ctx.capabilities.privileged, peer.uid, peer.gid);
    for uid in leases.held_by(task_id).map_err(ReapError::Leases)? {
        leases.release(uid, task_id, workspace.as_ref(), owner)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use execgo_runtime_protocol::taskdir::{own_start_ticks, ClaimRecord, CLAIM};
    use execgo_runtime_protocol::{HelperErrorKind, Request, Response};

    use crate::dispatch::test_dispatcher;
    use crate::peer::Peer;

    const PEER: Peer = Peer {
        pid: 1,
        uid: 0,
        gid: 0,
    };

    fn reap(d: &crate::dispatch::Dispatcher, id: &str) -> Response {
        d.handle(
            &PEER,
            Request::Reap {
                task_id: id.to_string(),
            },
        )
    }

    fn refused(r: Response, needle: &str) {
        match r {
            Response::Error(e) => {
                assert_eq!(e.kind, HelperErrorKind::InvalidRequest, "{e}");
                assert!(e.message.contains(needle), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_task_whose_shim_lives_is_not_reaped_nor_a_bad_id() {
        let (tmp, d) = test_dispatcher();
        refused(reap(&d, "../x"), "invalid");
        refused(reap(&d, ""), "invalid");
        let dir = tmp.path().join("tasks/live");
        std::fs::create_dir_all(&dir).unwrap();
        let me = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: own_start_ticks().unwrap(),
        };
        std::os::unix::fs::symlink(me.encode(), dir.join(CLAIM)).unwrap();
        refused(reap(&d, "live"), "alive");
    }

    #[test]
    fn a_task_whose_shim_is_gone_is_reaped_and_so_is_an_unknown_one() {
        let (tmp, d) = test_dispatcher();
        let dir = tmp.path().join("tasks/gone");
        std::fs::create_dir_all(&dir).unwrap();
        let gone = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: 1,
        };
        std::os::unix::fs::symlink(gone.encode(), dir.join(CLAIM)).unwrap();
        assert_eq!(reap(&d, "gone"), Response::Reaped);
        // Nothing to end: nothing left.
        assert_eq!(reap(&d, "never-was"), Response::Reaped);
    }
}
