//! Who may talk to the helper: the kernel-reported credentials
//! (SO_PEERCRED, see unix(7)) of every connection, checked against the one
//! allowed uids and, optionally, gid. Root gets no exception: a root peer is
//! refused unless uid 0 is an allowed uid.

use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("reading the peer credentials (SO_PEERCRED) failed")]
    Credentials(#[source] Errno),
}

/// Credentials of a connected peer, as of its connect(2) or socketpair(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The allowed peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub uids: Vec<u32>,
    pub gid: Option<u32>,
}

impl PeerPolicy {
    pub fn allows(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid) && self.gid.is_none_or(|gid| peer.gid == gid)
    }
}

pub fn peer_of(stream: &UnixStream) -> Result<Peer, PeerError> {
    let cred = getsockopt(stream, PeerCredentials).map_err(PeerError::Credentials)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn policy() {
        let p = PeerPolicy {
            uids: vec![1000, 1002],
            gid: None,
        };
        assert!(p.allows(&peer(1002, 5)));
        assert!(p.allows(&peer(1000, 5)));
        assert!(!p.allows(&peer(0, 0)), "root is not implicitly allowed");
        assert!(!p.allows(&peer(1001, 5)));
        let p = PeerPolicy {
            uids: vec![1000],
            gid: Some(50),
        };
        assert!(p.allows(&peer(1000, 50)));
        assert!(!p.allows(&peer(1000, 51)));
        let root = PeerPolicy {
            uids: vec![0],
            gid: None,
        };
        assert!(root.allows(&peer(0, 0)));
    }

    #[test]
    fn socketpair_reports_our_own_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = peer_of(&a).unwrap();
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.pid, std::process::id() as i32);
    }
}
