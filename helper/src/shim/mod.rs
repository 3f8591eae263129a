//! The shim: one small, synchronous monitor per task, forked from the
//! helper (not exec'd) and detached from it, so it outlives both the
//! runtime and the helper. It claims the task, starts it in its own process
//! group, enforces the wall-clock limit and kill requests (SIGTERM, grace,
//! SIGKILL), reaps it with its resource usage, and writes
//! `tasks/<id>/result.json` atomically.
//!
//! It reports to nobody: the runtime reads what happened in the task
//! directory. [`script::run`] is the launch, step by step; [`host::Host`]
//! does each step for real. Files the shim owns in `tasks/<id>/`:
//! `shim.claim`, `result.json.tmp`, `control`, `workspace/`, `started`,
//! `shim.log`, `result.json`.

pub mod claim;
pub mod control;
pub mod host;
pub mod isolate;
pub mod monitor;
pub mod relay;
pub mod resolve;
pub mod result;
pub mod script;
pub mod spawn;
pub mod stdio;
pub mod workspace;

use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::unistd::{Gid, Uid};

use crate::sys;
use crate::validate::ValidatedLaunch;

/// Everything the shim starts from, handed over across the fork.
pub struct ShimContext {
    pub launch: ValidatedLaunch,
    /// `tasks/<id>/`, opened by the helper without following symlinks.
    pub task_dir: OwnedFd,
    /// The runtime's uid and gid (SO_PEERCRED of the launching connection).
    pub peer_uid: u32,
    pub peer_gid: u32,
    /// Whether we run as root, so files for the runtime need handing over.
    pub privileged: bool,
    /// Who the task runs as, when not as the shim itself.
    pub task_identity: Option<crate::identity::TaskIdentity>,
    /// The lease table, when `task_identity`'s uid is leased to this task
    /// alone: the shim gives it back once the task is over.
    pub lease: Option<std::rc::Rc<crate::uid_lease::Leases>>,
    /// Where the task's cgroups go, when the host has usable ones.
    pub cgroups: Option<crate::cgroup::task::Placement>,
    /// A sandbox's root, opened by the helper (close-on-exec).
    pub rootfs: Option<OwnedFd>,
    /// The seccomp filters of the task's profile, as the helper compiled
    /// them at start; `None` where the host has no seccomp.
    pub seccomp: Option<[seccompiler::BpfProgram; 2]>,
    /// Sidecar mode: the main container's process, found by the helper.
    pub sidecar: Option<crate::sidecar::Target>,
    /// An absolute working directory (`LaunchSpec::workdir`), opened by
    /// the helper beneath its `--workdir-root` (an `O_PATH` descriptor).
    pub workdir: Option<OwnedFd>,
    /// A spare network namespace for a sandbox that asks for one, made by
    /// the helper ahead of time (see [`crate::sys::netns`]).
    pub netns: Option<OwnedFd>,
}

/// Who gets what a task leaves behind: the runtime's user when we are
/// root and it is not, else our own user.
pub fn runtime_owner(privileged: bool, peer_uid: u32, peer_gid: u32) -> (Uid, Gid) {
    if privileged && peer_uid != 0 {
        (Uid::from_raw(peer_uid), Gid::from_raw(peer_gid))
    } else {
        (nix::unistd::geteuid(), nix::unistd::getegid())
    }
}

/// Exit code of a shim that panicked (a bug); the panic message is in
/// shim.log.
const PANICKED: i32 = 70;

/// Runs the shim in the freshly forked process and never returns to the
/// helper code it was forked from: a panic is caught here and ends the
/// process, like every other path, with `_exit`.
pub fn run(ctx: ShimContext) -> ! {
    // Every journald line of the shim carries its task (`TASK_ID`; shim.log
    // adds `task_id` itself, and JSON lines of a shim go nowhere, so
    // without journald no span is kept). An error span: enabled whenever
    // any line of ours is. Never exited: the shim ends with `_exit`.
    let _span = crate::logging::journal_fd().map(|_| {
        tracing::error_span!(
            target: crate::logging::TARGET,
            "shim",
            task_id = ctx.launch.task_id.as_str()
        )
        .entered()
    });
    // The shim's stderr is /dev/null: a panic message is logged instead
    // (an error, so it reaches shim.log).
    std::panic::set_hook(Box::new(
        |info| tracing::error!(target: crate::logging::TARGET, panic = %info, "the shim panicked"),
    ));
    let code = catch_unwind(AssertUnwindSafe(move || {
        let mut host = host::Host::new(ctx);
        script::run(&mut host)
    }))
    .unwrap_or(PANICKED);
    sys::exit_now(code)
}
