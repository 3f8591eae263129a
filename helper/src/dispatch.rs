//! The handshake and the closed request set: one arm per
//! [`Request`] variant, each with the reason it is safe to serve to a peer
//! that passed the SO_PEERCRED check but is otherwise untrusted.

use std::os::fd::{AsFd, OwnedFd};

use execgo_runtime_protocol::{
    Hello, HelloReply, HelperCapabilities, Request, Response, HELLO_MAGIC, PROTOCOL_VERSION,
};

use crate::launch;
use crate::peer::Peer;
use crate::probe::{self, ProbeConfig};
use crate::replies::Reply;

/// What every request may use, fixed at start (the capabilities are
/// replaced by each fresh probe).
pub struct Context {
    /// The data dir, opened once at start: every task path is resolved
    /// under this descriptor, so a later rename of the path changes nothing.
    pub data_fd: OwnedFd,
    pub probe: ProbeConfig,
    pub capabilities: HelperCapabilities,
}

pub struct Dispatcher {
    ctx: Context,
}

impl Dispatcher {
    pub fn new(ctx: Context) -> Self {
        Dispatcher { ctx }
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
        HelloReply::Accepted {
            version: PROTOCOL_VERSION,
            helper_version: env!("CARGO_PKG_VERSION").to_string(),
            helper_pid: std::process::id(),
        }
    }

    /// Serves one request. Ping and Probe are answered at once; a launch
    /// is answered once its shim reports (see [`crate::pending`]).
    pub fn handle(&mut self, peer: &Peer, req: Request) -> Reply {
        match req {
            // Safe: touches nothing.
            Request::Ping => Reply::Ready(Response::Pong),
            // Safe: probes afresh. Every probe that changes process state
            // runs in a throwaway child; the rest creates and removes only
            // our own scratch entries (`probe-<pid>` cgroups under the
            // configured --cgroup-root, a scratch file and directory in the
            // data dir). Nothing in the request steers it, and it is
            // bounded in time (probe::BUDGET plus the cgroup file writes).
            Request::Probe => {
                self.ctx.capabilities = probe::probe(&self.ctx.probe, self.ctx.data_fd.as_fd());
                Reply::Ready(Response::Probe(self.ctx.capabilities.clone()))
            }
            // Safe: every field is validated first; the task directory is
            // derived from our own data dir and the validated id and opened
            // without following symlinks; the shim claims the task with
            // O_CREAT|O_EXCL, so a repeated launch never runs it twice; the
            // task runs with our privileges minus new ones (NO_NEW_PRIVS) and
            // only the environment the request lists.
            Request::Launch(spec) => launch::launch(&self.ctx, peer, spec),
        }
    }
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
        // A mounts file that does not exist: the probe never reaches the
        // host's cgroups from a unit test.
        probe: ProbeConfig {
            data_dir: tmp.path().to_path_buf(),
            cgroup_root: tmp.path().join("cgroup/execgo-runtime"),
            mounts: tmp.path().join("no-mountinfo"),
        },
        capabilities: HelperCapabilities {
            process_group: true,
            ..Default::default()
        },
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
        let (_tmp, mut d) = test_dispatcher();
        let peer = Peer {
            pid: 1,
            uid: 0,
            gid: 0,
        };
        assert!(matches!(
            d.handle(&peer, Request::Ping),
            Reply::Ready(Response::Pong)
        ));
        // A fresh probe, not the values given at start.
        match d.handle(&peer, Request::Probe) {
            Reply::Ready(Response::Probe(c)) => {
                assert!(c.process_group && c.rlimit_cpu && c.data_dir_writable);
                assert!(
                    c.warnings.iter().any(|w| w.starts_with("cgroup: reading ")),
                    "{:?}",
                    c.warnings
                );
            }
            Reply::Ready(other) => panic!("{other:?}"),
            Reply::Pending(p) => panic!("a probe pending like a launch: {}", p.task_id()),
        }
    }
}
