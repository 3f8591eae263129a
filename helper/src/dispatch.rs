//! The handshake and the closed request set: one arm per
//! [`Request`] variant, each with the reason it is safe to serve to a peer
//! that passed the SO_PEERCRED check but is otherwise untrusted.

use std::os::fd::OwnedFd;

use execgo_runtime_protocol::{
    Hello, HelloReply, HelperCapabilities, Request, Response, HELLO_MAGIC, PROTOCOL_VERSION,
};

use crate::launch;
use crate::peer::Peer;

/// What every request may use, fixed at start.
pub struct Context {
    /// The data dir, opened once at start: every task path is resolved
    /// under this descriptor, so a later rename of the path changes nothing.
    pub data_fd: OwnedFd,
    /// What the probe at start found.
    pub capabilities: HelperCapabilities,
    /// Who every task runs as, when they share one user (`--task-user`).
    pub task_identity: Option<crate::identity::TaskIdentity>,
    /// The task uid leases, when each task gets a uid of its own.
    pub leases: Option<std::rc::Rc<crate::uid_lease::Leases>>,
    /// Where task cgroups go; `None` when the host has no usable one.
    pub cgroups: Option<crate::cgroup::task::Placement>,
    /// The `--rootfs-dir`s, as given and opened at start.
    pub rootfs_dirs: Vec<(String, OwnedFd)>,
    /// The `--workdir-root`s, as given and opened at start.
    pub workdir_roots: Vec<(String, OwnedFd)>,
    /// Every profile's seccomp filters, compiled once at start (each shim
    /// inherits them by the fork); `None` when the host has no seccomp (or
    /// they did not compile, which the probe then says): process tasks run
    /// unfiltered, and a sandbox shim compiles its own (and fails).
    pub task_seccomp: Option<crate::seccomp::TaskFilters>,
    /// `--max-log-bytes`: the most a launch may ask for.
    pub max_log_bytes: u64,
    /// The spare network namespace sandbox launches take.
    pub net_spare: crate::sys::NetnsSpare,
    /// The shim forked ahead of the next launch.
    pub prefork: crate::prefork::Prefork,
}

pub struct Dispatcher {
    ctx: Context,
}

impl Dispatcher {
    pub fn new(ctx: Context) -> Self {
        Dispatcher { ctx }
    }

    /// Whether there is work to do while idle: a spare network namespace
    /// (see [`crate::sys::netns`]) or a spare shim (see
    /// [`crate::prefork`]) to make.
    pub fn has_idle_work(&self) -> bool {
        self.ctx.net_spare.wants_one() || self.ctx.prefork.wants_one()
    }

    /// Does one piece of the idle work.
    pub fn idle_work(&self) {
        if self.ctx.net_spare.wants_one() {
            self.ctx.net_spare.refill();
        } else if self.ctx.prefork.wants_one() {
            self.ctx.prefork.refill();
        }
    }

    /// Answers the first frame of a connection.
    pub fn hello(&self, hello: &Hello) -> HelloReply {
        if hello.magic != HELLO_MAGIC {
            return HelloReply::Rejected {
                reason: "bad magic: not an execgo-runtime helper client".into(),
            };
        }
        if hello.version != PROTOCOL_VERSION {
            return HelloReply::Rejected {
                reason: format!(
                    "unsupported protocol version {}; this helper speaks version {}",
                    hello.version, PROTOCOL_VERSION
                ),
            };
        }
        self.sweep_cgroups();
        HelloReply::Accepted {
            version: PROTOCOL_VERSION,
            helper_version: env!("CARGO_PKG_VERSION").to_string(),
            helper_pid: std::process::id(),
        }
    }

    /// Kills and removes the cgroups of tasks whose shim is gone (it was
    /// killed, or the host crashed): at start, and on every new runtime
    /// connection, which is how a restarted runtime's recovery reaches us.
    pub fn sweep_cgroups(&self) {
        let Some(placement) = &self.ctx.cgroups else {
            return;
        };
        let swept = placement.sweep(|id| shim_running(&self.ctx, id), &crate::cgroup::HostFs);
        if !swept.is_empty() {
            tracing::info!(
                target: crate::logging::TARGET,
                tasks = ?swept,
                "removed the cgroups of tasks whose shim is gone"
            );
        }
    }

    /// On the way out: removes this data dir's cgroup parents where no
    /// task cgroup is left in them (a running task's keeps them).
    pub fn release_cgroups(&self) {
        if let Some(placement) = &self.ctx.cgroups {
            placement.remove_empty_roots(&crate::cgroup::HostFs);
        }
    }

    /// Serves one request to completion.
    pub fn handle(&self, peer: &Peer, req: Request) -> Response {
        match req {
            // Safe: touches nothing.
            Request::Ping => Response::Pong,
            // Safe: answers from the probe made at start, touching nothing;
            // a peer cannot make the helper probe again, in a loop or not.
            Request::Probe => Response::Probe(self.ctx.capabilities.clone()),
            // Safe: every field is validated first; the task directory is
            // derived from our own data dir and the validated id and opened
            // without following symlinks; the shim claims the task with an
            // exclusive symlinkat, so a repeated launch never runs it twice;
            // the task runs as the operator's --task-user (or, unprivileged,
            // as us) with no capabilities, NO_NEW_PRIVS and only the
            // environment the request lists.
            Request::Launch(spec) => launch::launch(&self.ctx, peer, spec),
            // Safe: refused while the task's shim is alive; acts only on the
            // validated task's own cgroups, leased uid and task directory,
            // as its shim would have at its end.
            Request::Reap { task_id } => crate::reap::reap(&self.ctx, peer, &task_id),
        }
    }
}

/// Whether the shim that claimed `task_id` is alive.
pub fn shim_running(ctx: &Context, task_id: &str) -> bool {
    use std::os::fd::AsFd;
    let Ok(tasks) = crate::fs_at::open_dir(ctx.data_fd.as_fd(), "tasks") else {
        return false;
    };
    let Ok(dir) = crate::fs_at::open_dir(tasks.as_fd(), task_id) else {
        return false;
    };
    let claim = crate::shim::claim::read_existing(dir.as_fd());
    claim != execgo_runtime_protocol::taskdir::ClaimRecord::UNKNOWN
        && execgo_runtime_protocol::taskdir::is_alive(claim.shim_pid, claim.shim_start_ticks)
}

/// A dispatcher over a tempdir data dir, for unit tests.
#[cfg(test)]
pub fn test_dispatcher() -> (tempfile::TempDir, Dispatcher) {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    let tmp = tempfile::tempdir().unwrap();
    let data_fd = crate::sys::open(
        tmp.path(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let ctx = Context {
        data_fd,
        capabilities: HelperCapabilities {
            process_group: true,
            ..Default::default()
        },
        task_identity: None,
        leases: None,
        cgroups: None,
        rootfs_dirs: Vec::new(),
        workdir_roots: Vec::new(),
        task_seccomp: None,
        max_log_bytes: crate::cli::DEFAULT_MAX_LOG_BYTES,
        net_spare: crate::sys::NetnsSpare::disabled(),
        prefork: crate::prefork::Prefork::disabled(),
    };
    (tmp, Dispatcher::new(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake() {
        let (_tmp, d) = test_dispatcher();
        assert!(matches!(
            d.hello(&Hello::current()),
            HelloReply::Accepted {
                version: PROTOCOL_VERSION,
                ..
            }
        ));
        let mut wrong = Hello::current();
        wrong.version += 1;
        match d.hello(&wrong) {
            HelloReply::Rejected { reason } => assert!(reason.contains("version"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let mut wrong = Hello::current();
        wrong.magic = *b"NOTMAGIC";
        match d.hello(&wrong) {
            HelloReply::Rejected { reason } => assert!(reason.contains("magic"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping_and_probe() {
        let (_tmp, d) = test_dispatcher();
        let peer = Peer {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        assert_eq!(d.handle(&peer, Request::Ping), Response::Pong);
        // The capabilities found at start, not a fresh probe (which would
        // find the tempdir data dir writable, and say why cgroups are not).
        let at_start = HelperCapabilities {
            process_group: true,
            ..Default::default()
        };
        for _ in 0..2 {
            assert_eq!(
                d.handle(&peer, Request::Probe),
                Response::Probe(at_start.clone())
            );
        }
    }
}
