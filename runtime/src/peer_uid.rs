//! Which user owns the local socket at the other end of an accepted TCP
//! connection: one `NETLINK_SOCK_DIAG` exact query per connection
//! ([sock_diag(7)](https://man7.org/linux/man-pages/man7/sock_diag.7.html)).
//!
//! The request is an `inet_diag_req_v2` naming the peer's socket by its
//! 4-tuple as the peer sees it (its address and port as the source, ours
//! as the destination). The kernel looks the socket up in this network
//! namespace's TCP tables and answers with one `inet_diag_msg`, whose
//! `idiag_uid` is the socket's owner (the uid that created it, as the
//! runtime's user namespace sees it), or with `NLMSG_ERROR` `ENOENT` when
//! no socket has that 4-tuple: the peer is then not on this host (or its
//! socket is gone or hidden, see [`Unknown`]).
//!
//! The layouts are those of `linux/netlink.h`, `linux/sock_diag.h` and
//! `linux/inet_diag.h`, written out by hand (a request and one reply
//! message; a crate family for them would be larger than this file).
//! Multi-byte fields are in host order except ports and addresses, which
//! are in network order.
//!
//! The kernel answers an exact query while the request is being sent, so
//! the reply is already queued when `sendto` returns; the socket is
//! non-blocking and the receive waits on the reactor, under a time limit,
//! should that ever not hold.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// How long a lookup may take before it counts as failed.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLMSG_ERROR: u16 = 0x2;
// linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
// linux/inet_diag.h
const INET_DIAG_SOCKID_LEN: usize = 48;
const INET_DIAG_REQ_V2_LEN: usize = 8 + INET_DIAG_SOCKID_LEN;
const INET_DIAG_MSG_LEN: usize = 4 + INET_DIAG_SOCKID_LEN + 20;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// `idiag_timer` of a time-wait mini-socket (`inet_twsk_diag_fill`).
const TIMER_TIME_WAIT: u8 = 3;
// include/net/tcp_states.h
const TCP_TIME_WAIT: u8 = 6;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;

/// The length of a request: header and `inet_diag_req_v2`.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;

/// What the kernel said about the peer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A full socket with this 4-tuple exists; this uid created it.
    Uid(u32),
    /// No owner can be named.
    Unknown(Unknown),
}

/// Why no owner can be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// No socket in this network namespace has the peer's 4-tuple: the peer
    /// is on another host, or in another network namespace, or its socket
    /// is gone, or bound to a device the lookup does not name.
    NoSocket,
    /// The peer closed its end and the kernel keeps only a time-wait
    /// mini-socket, which records no owner (it reports uid 0).
    TimeWait,
}

impl Unknown {
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::NoSocket => "no local socket has the peer's address and port",
            Unknown::TimeWait => "the peer's socket is closed (time-wait keeps no owner)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerUidError {
    #[error("opening a sock_diag netlink socket failed")]
    Socket(#[source] io::Error),
    #[error("sending the sock_diag request failed")]
    Send(#[source] io::Error),
    #[error("receiving the sock_diag reply failed")]
    Recv(#[source] io::Error),
    #[error("the kernel did not answer the sock_diag request within {0:?}")]
    Timeout(Duration),
    #[error("the kernel refused the sock_diag request")]
    Kernel(#[source] io::Error),
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
    #[error("the connection's two addresses are of different families")]
    MixedFamilies,
}

/// The owner of the socket at the other end of the TCP connection whose
/// local end is `local` and remote end `peer` (an accepted connection's
/// `local_addr` and `peer_addr`).
pub async fn owner(peer: SocketAddr, local: SocketAddr) -> Result<Owner, PeerUidError> {
    let request = encode_request(SEQ, peer, local)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| PeerUidError::Socket(e.into()))?;
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| PeerUidError::Send(e.into()))?;
    let reply = tokio::time::timeout(LOOKUP_TIMEOUT, receive(fd))
        .await
        .map_err(|_| PeerUidError::Timeout(LOOKUP_TIMEOUT))??;
    decode_reply(&reply, SEQ, peer, local)
}

/// Every lookup has a socket of its own, so one sequence number will do.
const SEQ: u32 = 1;

/// The one datagram the kernel answers with (a message and its
/// attributes fit in far less than 8 KiB).
async fn receive(fd: OwnedFd) -> Result<Vec<u8>, PeerUidError> {
    let mut buf = vec![0u8; 8192];
    let afd = crate::sys::async_fd(fd).map_err(PeerUidError::Recv)?;
    loop {
        let mut guard = afd.readable().await.map_err(PeerUidError::Recv)?;
        match guard
            .try_io(|fd| recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from))
        {
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(PeerUidError::Recv(e)),
            Err(_would_block) => {}
        }
    }
}

/// Both ends of a connection in one family: IPv4 (v4-mapped IPv6
/// addresses, as a dual-stack listener reports IPv4 peers, are IPv4) or
/// IPv6.
fn canonical_pair(peer: SocketAddr, local: SocketAddr) -> Result<(IpAddr, IpAddr), PeerUidError> {
    let (p, l) = (peer.ip().to_canonical(), local.ip().to_canonical());
    if p.is_ipv4() != l.is_ipv4() {
        return Err(PeerUidError::MixedFamilies);
    }
    Ok((p, l))
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for the TCP socket whose local
/// end is `peer` and remote end `local` (the peer's own view).
pub fn encode_request(
    seq: u32,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<[u8; REQUEST_LEN], PeerUidError> {
    let (p, l) = canonical_pair(peer, local)?;
    let family = if p.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    let mut b = [0u8; REQUEST_LEN];
    // struct nlmsghdr
    b[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in the sender.
    // struct inet_diag_req_v2: family, protocol, idiag_ext 0 (no
    // extensions), pad, idiag_states (any state)
    let r = NLMSG_HDRLEN;
    b[r] = family;
    b[r + 1] = libc::IPPROTO_TCP as u8;
    b[r + 4..r + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: sport, dport, src, dst, if, cookie
    let id = r + 8;
    b[id..id + 2].copy_from_slice(&peer.port().to_be_bytes());
    b[id + 2..id + 4].copy_from_slice(&local.port().to_be_bytes());
    b[id + 4..id + 20].copy_from_slice(&addr_bytes(p));
    b[id + 20..id + 36].copy_from_slice(&addr_bytes(l));
    // The loopback device: local traffic goes through it, and the kernel's
    // lookup then matches sockets bound to no device as well as those bound
    // to `lo` (SO_BINDTODEVICE); 0 would miss the latter.
    b[id + 36..id + 40].copy_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    // No cookie, so the kernel skips the cookie check.
    b[id + 40..id + 44].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    b[id + 44..id + 48].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    Ok(b)
}

/// The loopback device's index in every network namespace
/// (`LOOPBACK_IFINDEX` in `include/net/flow.h`).
const LOOPBACK_IFINDEX: u32 = 1;

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The address an `inet_diag_sockid` field holds for `family`.
fn addr_of(family: u8, bytes: &[u8]) -> Result<IpAddr, PeerUidError> {
    match i32::from(family) {
        libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(a)).to_canonical())
        }
        _ => Err(PeerUidError::Malformed("unknown address family")),
    }
}

/// Reads the kernel's answer to [`encode_request`]`(seq, peer, local)`.
///
/// The kernel's exact lookup falls back to a listening socket when no
/// connection has the 4-tuple (it is the lookup an incoming packet gets),
/// so the answer counts only if it names exactly the 4-tuple asked for.
pub fn decode_reply(
    buf: &[u8],
    seq: u32,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Owner, PeerUidError> {
    let (p, l) = canonical_pair(peer, local)?;
    if buf.len() < NLMSG_HDRLEN {
        return Err(PeerUidError::Malformed("shorter than a netlink header"));
    }
    let len = u32_ne(buf, 0) as usize;
    if len < NLMSG_HDRLEN || len > buf.len() {
        return Err(PeerUidError::Malformed("bad netlink message length"));
    }
    let kind = u16_ne(buf, 4);
    if u32_ne(buf, 8) != seq {
        return Err(PeerUidError::Malformed("reply to another request"));
    }
    let body = &buf[NLMSG_HDRLEN..len];
    match kind {
        NLMSG_ERROR => {
            if body.len() < 4 {
                return Err(PeerUidError::Malformed("short netlink error"));
            }
            match -(u32_ne(body, 0) as i32) {
                0 => Err(PeerUidError::Malformed(
                    "an acknowledgement instead of a reply",
                )),
                libc::ENOENT => Ok(Owner::Unknown(Unknown::NoSocket)),
                errno => Err(PeerUidError::Kernel(io::Error::from_raw_os_error(errno))),
            }
        }
        SOCK_DIAG_BY_FAMILY => {
            if body.len() < INET_DIAG_MSG_LEN {
                return Err(PeerUidError::Malformed("short inet_diag_msg"));
            }
            // struct inet_diag_msg
            let family = body[0];
            let state = body[1];
            let timer = body[2];
            let id = 4;
            let sport = u16::from_be_bytes([body[id], body[id + 1]]);
            let dport = u16::from_be_bytes([body[id + 2], body[id + 3]]);
            let src = addr_of(family, &body[id + 4..id + 20])?;
            let dst = addr_of(family, &body[id + 20..id + 36])?;
            let after_id = id + INET_DIAG_SOCKID_LEN;
            // idiag_expires, idiag_rqueue, idiag_wqueue, then:
            let uid = u32_ne(body, after_id + 12);
            if (sport, dport, src, dst) != (peer.port(), local.port(), p, l) {
                // A listener on the peer's port, not the peer's socket.
                return Ok(Owner::Unknown(Unknown::NoSocket));
            }
            if timer == TIMER_TIME_WAIT || state == TCP_TIME_WAIT {
                return Ok(Owner::Unknown(Unknown::TimeWait));
            }
            if state == TCP_LISTEN || state == TCP_NEW_SYN_RECV {
                // Neither can be a connecting socket with this 4-tuple.
                return Err(PeerUidError::Malformed("not a connected socket"));
            }
            Ok(Owner::Uid(uid))
        }
        _ => Err(PeerUidError::Malformed("unexpected netlink message type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The request for 127.0.0.1:40000 → 127.0.0.1:8080, as the kernel
    /// headers lay it out on a little-endian host.
    #[cfg(target_endian = "little")]
    #[rustfmt::skip]
    const V4_REQUEST: [u8; 72] = [
        // nlmsghdr: len 72, type 20, flags NLM_F_REQUEST, seq 7, pid 0
        72, 0, 0, 0,  20, 0,  1, 0,  7, 0, 0, 0,  0, 0, 0, 0,
        // inet_diag_req_v2: AF_INET, IPPROTO_TCP, ext 0, pad, states ~0
        2, 6, 0, 0,  0xff, 0xff, 0xff, 0xff,
        // sockid: sport 40000, dport 8080 (big-endian)
        0x9c, 0x40,  0x1f, 0x90,
        // src 127.0.0.1
        127, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        // dst 127.0.0.1
        127, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        // if: lo; cookie: none
        1, 0, 0, 0,  0xff, 0xff, 0xff, 0xff,  0xff, 0xff, 0xff, 0xff,
    ];

    #[cfg(target_endian = "little")]
    #[test]
    fn an_ipv4_request_is_laid_out_as_the_kernel_reads_it() {
        let r = encode_request(7, sa("127.0.0.1:40000"), sa("127.0.0.1:8080")).unwrap();
        assert_eq!(r, V4_REQUEST);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn a_v4_mapped_peer_is_asked_for_as_ipv4() {
        // A dual-stack listener reports an IPv4 client this way.
        let r = encode_request(
            7,
            sa("[::ffff:127.0.0.1]:40000"),
            sa("[::ffff:127.0.0.1]:8080"),
        )
        .unwrap();
        assert_eq!(r, V4_REQUEST);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn an_ipv6_request_carries_both_addresses_whole() {
        let r = encode_request(1, sa("[::1]:40000"), sa("[fd00::2]:8080")).unwrap();
        assert_eq!(r[16], 10, "AF_INET6");
        assert_eq!(r[17], 6, "IPPROTO_TCP");
        let mut src = [0u8; 16];
        src[15] = 1;
        assert_eq!(&r[28..44], &src);
        let mut dst = [0u8; 16];
        dst[0] = 0xfd;
        dst[15] = 2;
        assert_eq!(&r[44..60], &dst);
    }

    #[test]
    fn mixed_families_are_refused() {
        assert!(matches!(
            encode_request(1, sa("127.0.0.1:1"), sa("[::1]:2")),
            Err(PeerUidError::MixedFamilies)
        ));
    }

    /// A reply message: nlmsghdr, inet_diag_msg, then the attributes the
    /// kernel always adds (INET_DIAG_SHUTDOWN here).
    #[allow(clippy::too_many_arguments)]
    fn reply(
        seq: u32,
        family: u8,
        state: u8,
        timer: u8,
        sport: u16,
        dport: u16,
        src: IpAddr,
        dst: IpAddr,
        uid: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut m = Vec::new();
        let len = (NLMSG_HDRLEN + INET_DIAG_MSG_LEN + 8) as u32;
        m.extend(len.to_ne_bytes());
        m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(1234u32.to_ne_bytes());
        m.extend([family, state, timer, 0]);
        m.extend(sport.to_be_bytes());
        m.extend(dport.to_be_bytes());
        let bytes = |ip: IpAddr| match (family, ip) {
            (2, IpAddr::V4(v4)) => addr_bytes(IpAddr::V4(v4)),
            (10, IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            (_, ip) => addr_bytes(ip),
        };
        m.extend(bytes(src));
        m.extend(bytes(dst));
        m.extend(0u32.to_ne_bytes()); // if
        m.extend([0xaa; 8]); // cookie
        m.extend(0u32.to_ne_bytes()); // expires
        m.extend(0u32.to_ne_bytes()); // rqueue
        m.extend(0u32.to_ne_bytes()); // wqueue
        m.extend(uid.to_ne_bytes());
        m.extend(inode.to_ne_bytes());
        // struct nlattr { len 5, type INET_DIAG_SHUTDOWN (8) }, u8, padding
        m.extend(5u16.to_ne_bytes());
        m.extend(8u16.to_ne_bytes());
        m.extend([0, 0, 0, 0]);
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_established_socket_names_its_owner() {
        let (peer, local) = (sa("127.0.0.1:40000"), sa("127.0.0.1:8080"));
        let r = reply(
            1,
            2,
            1,
            0,
            40000,
            8080,
            ip("127.0.0.1"),
            ip("127.0.0.1"),
            65534,
            99,
        );
        assert_eq!(decode_reply(&r, 1, peer, local).unwrap(), Owner::Uid(65534));
    }

    #[test]
    fn a_dual_stack_peer_socket_matches_an_ipv4_connection() {
        // The client used an AF_INET6 socket towards a v4-mapped address:
        // the kernel reports it as AF_INET6 with mapped addresses.
        let (peer, local) = (sa("[::ffff:127.0.0.1]:40000"), sa("127.0.0.1:8080"));
        let r = reply(
            1,
            10,
            1,
            0,
            40000,
            8080,
            ip("127.0.0.1"),
            ip("127.0.0.1"),
            1000,
            99,
        );
        assert_eq!(decode_reply(&r, 1, peer, local).unwrap(), Owner::Uid(1000));
    }

    #[test]
    fn ipv6_loopback_is_matched_whole() {
        let (peer, local) = (sa("[::1]:40000"), sa("[::1]:8080"));
        let r = reply(1, 10, 1, 0, 40000, 8080, ip("::1"), ip("::1"), 7, 99);
        assert_eq!(decode_reply(&r, 1, peer, local).unwrap(), Owner::Uid(7));
    }

    #[test]
    fn a_listener_on_the_peers_port_is_not_the_peer() {
        // The kernel's lookup falls back to a listener: 0.0.0.0:40000,
        // no remote end.
        let (peer, local) = (sa("10.0.0.9:40000"), sa("10.0.0.5:8080"));
        let r = reply(
            1,
            2,
            TCP_LISTEN,
            0,
            40000,
            0,
            ip("0.0.0.0"),
            ip("0.0.0.0"),
            0,
            5,
        );
        assert_eq!(
            decode_reply(&r, 1, peer, local).unwrap(),
            Owner::Unknown(Unknown::NoSocket)
        );
    }

    #[test]
    fn a_time_wait_socket_has_no_owner_even_though_it_says_uid_0() {
        let (peer, local) = (sa("127.0.0.1:40000"), sa("127.0.0.1:8080"));
        // inet_twsk_diag_fill: state is the substate (FIN_WAIT2 here),
        // timer 3, uid 0, inode 0.
        let r = reply(
            1,
            2,
            5,
            3,
            40000,
            8080,
            ip("127.0.0.1"),
            ip("127.0.0.1"),
            0,
            0,
        );
        assert_eq!(
            decode_reply(&r, 1, peer, local).unwrap(),
            Owner::Unknown(Unknown::TimeWait)
        );
    }

    fn error_reply(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend(36u32.to_ne_bytes());
        m.extend(NLMSG_ERROR.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend((-errno).to_ne_bytes());
        m.extend([0u8; 16]); // the request's header, echoed
        m
    }

    #[test]
    fn enoent_means_no_local_socket() {
        let (peer, local) = (sa("192.0.2.9:40000"), sa("192.0.2.2:8080"));
        assert_eq!(
            decode_reply(&error_reply(1, libc::ENOENT), 1, peer, local).unwrap(),
            Owner::Unknown(Unknown::NoSocket)
        );
        let e = decode_reply(&error_reply(1, libc::EINVAL), 1, peer, local).unwrap_err();
        assert!(matches!(e, PeerUidError::Kernel(_)), "{e:?}");
    }

    #[test]
    fn malformed_replies_are_errors_not_owners() {
        let (peer, local) = (sa("127.0.0.1:40000"), sa("127.0.0.1:8080"));
        let good = reply(
            1,
            2,
            1,
            0,
            40000,
            8080,
            ip("127.0.0.1"),
            ip("127.0.0.1"),
            0,
            9,
        );
        for cut in [0, 8, 16, 40, NLMSG_HDRLEN + INET_DIAG_MSG_LEN - 1] {
            assert!(
                decode_reply(&good[..cut], 1, peer, local).is_err(),
                "cut at {cut}"
            );
        }
        assert!(
            decode_reply(&good, 2, peer, local).is_err(),
            "another sequence"
        );
        let mut odd = good.clone();
        odd[4] = 3; // NLMSG_DONE
        assert!(decode_reply(&odd, 1, peer, local).is_err());
        assert!(decode_reply(&error_reply(1, 0), 1, peer, local).is_err());
    }

    /// The real kernel, unprivileged: the owner of our own client socket is
    /// us, over IPv4, IPv6 and a dual-stack listener.
    #[tokio::test]
    async fn the_kernel_names_our_own_client_socket() {
        let me = nix::unistd::geteuid().as_raw();
        for (listen, connect_ip) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("[::1]:0", "::1"),
            ("[::]:0", "127.0.0.1"),
        ] {
            let Ok(listener) = tokio::net::TcpListener::bind(listen).await else {
                println!("skipped {listen}: cannot bind (no IPv6?)");
                continue;
            };
            let port = listener.local_addr().unwrap().port();
            let client = tokio::net::TcpStream::connect((connect_ip, port))
                .await
                .unwrap();
            let (server, peer) = listener.accept().await.unwrap();
            let local = server.local_addr().unwrap();
            assert_eq!(
                owner(peer, local).await.unwrap(),
                Owner::Uid(me),
                "{listen} ← {connect_ip}"
            );
            // The server's own end is not mistaken for the peer's.
            assert_eq!(client.local_addr().unwrap().port(), peer.port());
        }
    }

    #[tokio::test]
    async fn the_kernel_knows_no_socket_for_a_made_up_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        // Nobody connected from 127.0.0.1:1.
        assert_eq!(
            owner(sa("127.0.0.1:1"), local).await.unwrap(),
            Owner::Unknown(Unknown::NoSocket)
        );
    }
}
