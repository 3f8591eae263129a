//! The serve loop: one thread, one poll(2) over the listener (standalone
//! mode, unless accepting is paused, see [`crate::accept`]) and every
//! connection, with a timeout to the earliest deadline. A connection is
//! polled for input while its unsent replies are below their bound and
//! for output while any wait (see [`crate::conn`]); its whole frames are
//! served to completion and answered in order: a launch costs the time to
//! start its shim, not the time its task takes to start. Nothing blocks,
//! so no peer can hold up another.
//!
//! Embedded mode serves its single inherited connection and returns when
//! it closes.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::accept::{accept_all, AcceptGate};
use crate::conn::{Conn, Flow, Limits};
use crate::deadline;
use crate::dispatch::Dispatcher;
use crate::logging;
use crate::peer::{peer_of, PeerError, PeerPolicy};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("poll failed")]
    Poll(#[source] Errno),
    #[error("the inherited connection's peer was refused")]
    InheritedPeerRefused,
    #[error("checking the inherited connection's peer failed")]
    InheritedPeer(#[source] PeerError),
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

pub fn serve(mode: Mode, d: &Dispatcher, limits: Limits) -> Result<(), ServeError> {
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
            let conn = Conn::new(stream, peer, limits, Instant::now());
            (None, policy, vec![conn])
        }
    };
    let mut gate = AcceptGate::default();
    loop {
        if listener.is_none() && conns.is_empty() {
            tracing::info!(target: logging::TARGET, "the runtime closed its connection; exiting");
            return Ok(());
        }
        let now = Instant::now();
        let accepting = listener.as_ref().filter(|_| gate.is_open(now));
        let next = conns
            .iter()
            .filter_map(Conn::deadline)
            .chain(gate.deadline())
            .min();
        // Idle work (a spare network namespace) waits for a poll that finds
        // nothing to do, so it never delays a request already waiting.
        let idle_work = d.has_idle_work();
        let timeout = if idle_work {
            0
        } else {
            deadline::poll_timeout_ms(now, next)
        };
        // Each descriptor's events: the listener's first, if it is polled,
        // then each connection's in order.
        let events: Vec<PollFlags> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(conns.len() + 1);
            if let Some(l) = accepting {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            fds.extend(conns.iter().map(|c| PollFd::new(c.fd(), c.interest())));
            let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ServeError::Poll(e)),
            }
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        if idle_work && events.iter().all(PollFlags::is_empty) {
            d.idle_work();
            continue;
        }
        let (accept_ready, conn_events) = match (accepting, events.split_first()) {
            (Some(_), Some((first, rest))) => (!first.is_empty(), rest),
            _ => (false, events.as_slice()),
        };
        let mut conn_events = conn_events.iter();
        conns.retain_mut(|c| {
            // A hang-up or an error is an event too: the read or the write
            // finds it.
            let flow = match conn_events.next() {
                Some(r) if !r.is_empty() => c.on_event(*r, d),
                _ => Flow::Open,
            };
            flow == Flow::Open && c.on_tick(Instant::now()) == Flow::Open
        });
        if let (true, Some(l)) = (accept_ready, &listener) {
            accept_all(l, &policy, limits, &mut gate, &mut conns);
        }
    }
}
