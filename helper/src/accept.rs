//! Admitting connections in standalone mode: accept, check the peer
//! (SO_PEERCRED) before a byte is read, and keep at most
//! [`MAX_CONNECTIONS`] open, making room for an allowed newcomer rather
//! than refusing it, so that silent connections cannot lock the runtime
//! out. When accept(2) fails for want of descriptors or memory, the
//! listener is left out of the poll set for [`ACCEPT_PAUSE`]: its backlog
//! would keep it readable, and poll would spin.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use crate::conn::{Conn, Limits};
use crate::logging;
use crate::peer::{peer_of, PeerPolicy};

/// At most this many open connections. The runtime uses one; the cap only
/// bounds what a misbehaving peer can hold.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the listener rests after accept(2) ran out of descriptors
/// (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM), or failed otherwise.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Whether the listener is polled, and whether the current shortage was
/// logged already (it is logged once, and its end once).
#[derive(Debug, Default)]
pub struct AcceptGate {
    paused_until: Option<Instant>,
    short: bool,
}

impl AcceptGate {
    /// Whether to poll the listener now.
    pub fn is_open(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|t| now >= t)
    }

    /// When a pause ends, to wake poll for it.
    pub fn deadline(&self) -> Option<Instant> {
        self.paused_until
    }

    fn pause(&mut self, now: Instant, error: &std::io::Error) {
        if !self.short {
            tracing::warn!(
                target: logging::TARGET,
                error = %error,
                pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                "accept failed; pausing new connections until it succeeds again"
            );
            self.short = true;
        }
        self.paused_until = crate::deadline::after(now, ACCEPT_PAUSE);
    }

    fn accepted(&mut self) {
        self.paused_until = None;
        if self.short {
            tracing::info!(target: logging::TARGET, "accepting connections again");
            self.short = false;
        }
    }
}

/// Accepts every pending connection (the listener is non-blocking), or
/// until accept fails for want of resources.
pub fn accept_all(
    listener: &UnixListener,
    policy: &PeerPolicy,
    limits: Limits,
    gate: &mut AcceptGate,
    conns: &mut Vec<Conn>,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => return,
                // This attempt is lost (the peer gave up, say); the next
                // one may be fine.
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                // EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected:
                // retrying at once would fail the same way.
                _ => {
                    gate.pause(Instant::now(), &e);
                    return;
                }
            },
        };
        gate.accepted();
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
            if let Some(i) = eviction_victim(conns) {
                let gone = conns.remove(i);
                let (handshaken, _) = gone.eviction_key();
                tracing::warn!(
                    target: logging::TARGET,
                    peer_pid = gone.peer().pid,
                    peer_uid = gone.peer().uid,
                    handshaken,
                    "too many open connections; closed the one waiting longest to admit a new one"
                );
            }
        }
        tracing::debug!(
            target: logging::TARGET,
            peer_pid,
            peer_uid,
            peer_gid,
            "accepted a connection"
        );
        conns.push(Conn::new(stream, peer, limits, Instant::now()));
    }
}

/// The connection to close to make room: the oldest still without a
/// handshake, else the one silent longest.
fn eviction_victim(conns: &[Conn]) -> Option<usize> {
    conns
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| c.eviction_key())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_pauses_and_reopens() {
        let now = Instant::now();
        let mut g = AcceptGate::default();
        assert!(g.is_open(now));
        assert_eq!(g.deadline(), None);
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        g.pause(now, &emfile);
        assert!(!g.is_open(now));
        assert!(g.short);
        assert_eq!(g.deadline(), Some(now + ACCEPT_PAUSE));
        assert!(g.is_open(now + ACCEPT_PAUSE));
        g.accepted();
        assert!(!g.short);
        assert!(g.is_open(now));
    }
}
