//! The serve loop: one thread, one poll(2) over the listener (standalone
//! mode) and every connection, with a timeout to the earliest partial
//! frame's deadline. A readable connection's requests are served to
//! completion and answered at once, in order (see [`crate::conn`]): a
//! launch costs the time to start its shim, not the time its task takes to
//! start.
//!
//! Each new connection's SO_PEERCRED is checked before a byte is read; a
//! refused peer is closed without a reply. Embedded mode serves its single
//! inherited connection and returns when the peer closes it.

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

pub fn serve(mode: Mode, d: &Dispatcher) -> Result<(), ServeError> {
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
        let next = conns.iter().filter_map(Conn::deadline).min();
        let timeout = deadline::poll_timeout_ms(Instant::now(), next);
        // Whether each descriptor had an event: the listener's first, if
        // there is one, then each connection's in order.
        let events: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
            if let Some(l) = &listener {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            fds.extend(conns.iter().map(|c| PollFd::new(c.fd(), PollFlags::POLLIN)));
            let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ServeError::Poll(e)),
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let (accept_ready, conn_events) = match (&listener, events.split_first()) {
            (Some(_), Some((first, rest))) => (*first, rest),
            _ => (false, events.as_slice()),
        };
        let now = Instant::now();
        let mut conn_events = conn_events.iter();
        conns.retain_mut(|c| {
            // A hang-up or an error is an event too: the read finds it.
            let flow = match conn_events.next() {
                Some(true) => c.on_readable(d),
                _ => Flow::Open,
            };
            flow == Flow::Open && c.on_tick(now) == Flow::Open
        });
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
