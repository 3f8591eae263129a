//! The serve loop: one thread, one poll(2) over the listener (standalone),
//! every connection and every pending launch's report pipe, with a timeout
//! to the earliest deadline (a partial frame's, a shim's report's). So
//! launches overlap: while one shim sets up, the helper reads requests,
//! forks other shims and answers other connections. Each connection
//! answers its own requests in order (see [`crate::conn`]).
//!
//! Each new connection's SO_PEERCRED is checked before a byte is read; a
//! refused peer is closed without a reply. Embedded mode serves its single
//! inherited connection and returns when the peer closes it, at once: the
//! shims of its pending launches are on their own.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::conn::{Conn, Flow};
use crate::deadline;
use crate::dispatch::Dispatcher;
use crate::logging;
use crate::peer::{peer_of, PeerError, PeerPolicy};

/// At most this many open connections; more are closed at accept. The
/// runtime uses one; the cap only bounds what a misbehaving peer can hold.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("poll failed")]
    Poll(#[source] Errno),
    #[error("the inherited connection's peer was refused")]
    InheritedPeerRefused,
    #[error("checking the inherited connection's peer failed")]
    InheritedPeer(#[source] PeerError),
    #[error("setting up the inherited connection failed")]
    InheritedSetup(#[source] std::io::Error),
}

pub enum Mode {
    Standalone {
        listener: UnixListener,
        policy: PeerPolicy,
    },
    Embedded {
        stream: UnixStream,
        policy: PeerPolicy,
    },
}

pub fn serve(mode: Mode, d: &mut Dispatcher) -> Result<(), ServeError> {
    let (listener, policy, mut conns) = match mode {
        Mode::Standalone { listener, policy } => (Some(listener), policy, Vec::new()),
        Mode::Embedded { stream, policy } => {
            let peer = peer_of(&stream).map_err(ServeError::InheritedPeer)?;
            if !policy.allows(&peer) {
                tracing::error!(
                    target: logging::TARGET,
                    peer_uid = peer.uid,
                    peer_pid = peer.pid,
                    "refusing the inherited connection: its peer does not have our uid"
                );
                return Err(ServeError::InheritedPeerRefused);
            }
            let conn = Conn::new(stream, peer).map_err(ServeError::InheritedSetup)?;
            (None, policy, vec![conn])
        }
    };
    loop {
        if listener.is_none() && conns.is_empty() {
            tracing::info!(target: logging::TARGET, "the runtime closed its connection; exiting");
            return Ok(());
        }
        let next = conns
            .iter()
            .map(Conn::deadline)
            .fold(None, deadline::earliest);
        let timeout = deadline::poll_timeout_ms(Instant::now(), next);
        // revents of the listener, then of each connection's descriptors
        // (how many each has: `counts`), in the order they were listed.
        let (revents, counts) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
            if let Some(l) = &listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            let mut counts = Vec::with_capacity(conns.len());
            for c in &conns {
                let before = fds.len();
                fds.extend(c.poll_fds());
                counts.push(fds.len() - before);
            }
            let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ServeError::Poll(e)),
            }
            let revents: Vec<PollFlags> = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            (revents, counts)
        };
        let mut rest = revents.as_slice();
        let accept_ready = match (&listener, rest.split_first()) {
            (Some(_), Some((first, others))) => {
                rest = others;
                !first.is_empty()
            }
            _ => false,
        };
        let now = Instant::now();
        let mut keep = Vec::with_capacity(conns.len());
        for (mut conn, n) in conns.into_iter().zip(counts) {
            let (mine, others) = rest.split_at(n.min(rest.len()));
            rest = others;
            if conn.on_events(mine, now, d) == Flow::Open {
                keep.push(conn);
            }
        }
        conns = keep;
        if accept_ready {
            if let Some(l) = &listener {
                accept_all(l, &policy, &mut conns);
            }
        }
    }
}

/// Accepts every pending connection (the listener is non-blocking).
fn accept_all(listener: &UnixListener, policy: &PeerPolicy, conns: &mut Vec<Conn>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ECONNABORTED, EMFILE and the like: this attempt is lost,
                // the listener is fine; poll will report the next one.
                tracing::warn!(target: logging::TARGET, error = %e, "accept failed");
                return;
            }
        };
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    target: logging::TARGET,
                    error = %logging::chain(&e),
                    "closing a connection whose peer is unknown"
                );
                continue;
            }
        };
        let (peer_pid, peer_uid, peer_gid) = (peer.pid, peer.uid, peer.gid);
        if !policy.allows(&peer) {
            tracing::warn!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                peer_gid,
                "refused a connection from a peer that is not allowed"
            );
            continue;
        }
        if conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                peer_gid,
                "refused a connection: too many open connections"
            );
            continue;
        }
        match Conn::new(stream, peer) {
            Ok(c) => {
                tracing::debug!(
                    target: logging::TARGET,
                    peer_pid,
                    peer_uid,
                    peer_gid,
                    "accepted a connection"
                );
                conns.push(c);
            }
            Err(e) => tracing::warn!(
                target: logging::TARGET,
                error = %e,
                "setting up a connection failed"
            ),
        }
    }
}
