//! One client connection: its bytes become frames (a [`FrameDecoder`]),
//! the handshake stage, and the rule that any malformed input ends *this*
//! connection, after a reply in the shape the peer is waiting for, while
//! the helper keeps serving the others.
//!
//! Each whole frame is handled to completion and its reply written at
//! once, so requests a peer pipelines are answered in request order. Reads
//! never block (`MSG_DONTWAIT` after poll said readable), so a peer that
//! stalls mid-frame holds nothing but its own buffer, and is dropped once
//! its partial frame is older than [`PARTIAL_FRAME_TIMEOUT`]. Writes block
//! for at most [`IO_TIMEOUT`] (SO_SNDTIMEO); a peer that does not read its
//! replies is dropped then.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, write_frame, FrameDecoder, FrameError, Hello, HelloReply, HelperError, HelperErrorKind,
    Request, Response,
};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use serde::Serialize;

use crate::deadline;
use crate::dispatch::Dispatcher;
use crate::logging;
use crate::peer::Peer;

/// Bound on a blocking write to a peer (and on reads, should one block).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started but incomplete frame may wait for its remaining bytes.
pub const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether to keep a connection after handling input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first frame must be a [`Hello`].
    Hello,
    /// Handshake done: each [`Request`] gets one [`Response`], in order.
    Ready,
}

pub struct Conn {
    stream: UnixStream,
    peer: Peer,
    stage: Stage,
    frames: FrameDecoder,
    /// When the bytes of an incomplete frame started waiting.
    partial_since: Option<Instant>,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            peer,
            stage: Stage::Hello,
            frames: FrameDecoder::default(),
            partial_since: None,
        })
    }

    /// The socket, to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// When this connection's incomplete frame expires, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.partial_since
            .and_then(|t| t.checked_add(PARTIAL_FRAME_TIMEOUT))
    }

    /// Handles a poll round in which the socket was readable (or hung up):
    /// reads what it holds and serves every whole frame, in order.
    pub fn on_readable(&mut self, d: &Dispatcher) -> Flow {
        if self.read() == Flow::Close {
            return Flow::Close;
        }
        loop {
            match self.frames.next_payload() {
                Ok(Some(payload)) => {
                    if self.on_frame(&payload, d) == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.refuse(&e);
                    return Flow::Close;
                }
            }
        }
        self.partial_since = match (self.frames.buffered(), self.partial_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(Instant::now()),
        };
        Flow::Open
    }

    /// Drops a peer whose partial frame has waited too long.
    pub fn on_tick(&self, now: Instant) -> Flow {
        if deadline::reached(now, self.deadline()) {
            tracing::warn!(
                target: logging::TARGET,
                peer_pid = self.peer.pid,
                peer_uid = self.peer.uid,
                "peer stalled in the middle of a frame; closing its connection"
            );
            return Flow::Close;
        }
        Flow::Open
    }

    /// Reads what the socket holds into the decoder.
    fn read(&mut self) -> Flow {
        let mut chunk = [0u8; 64 * 1024];
        match recv(self.stream.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => {
                if self.frames.buffered() > 0 {
                    tracing::debug!(
                        target: logging::TARGET,
                        peer_pid = self.peer.pid,
                        peer_uid = self.peer.uid,
                        "peer closed mid-frame"
                    );
                }
                Flow::Close
            }
            Ok(n) => {
                self.frames.push(&chunk[..n]);
                Flow::Open
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Flow::Open,
            Err(e) => {
                tracing::debug!(
                    target: logging::TARGET,
                    error = %e,
                    peer_pid = self.peer.pid,
                    "reading from peer failed"
                );
                Flow::Close
            }
        }
    }

    fn on_frame(&mut self, payload: &[u8], d: &Dispatcher) -> Flow {
        match self.stage {
            Stage::Hello => match decode::<Hello>(payload) {
                Ok(hello) => {
                    let reply = d.hello(&hello);
                    let accepted = matches!(reply, HelloReply::Accepted { .. });
                    if let HelloReply::Rejected { reason } = &reply {
                        tracing::warn!(
                            target: logging::TARGET,
                            peer_pid = self.peer.pid,
                            peer_uid = self.peer.uid,
                            reason = reason.as_str(),
                            "handshake rejected"
                        );
                    }
                    if self.send(&reply) && accepted {
                        self.stage = Stage::Ready;
                        Flow::Open
                    } else {
                        Flow::Close
                    }
                }
                Err(e) => {
                    self.refuse(&e);
                    Flow::Close
                }
            },
            Stage::Ready => match decode::<Request>(payload) {
                Ok(req) => {
                    let reply = d.handle(&self.peer, req);
                    if self.send(&reply) {
                        Flow::Open
                    } else {
                        Flow::Close
                    }
                }
                Err(e) => {
                    self.refuse(&e);
                    Flow::Close
                }
            },
        }
    }

    /// Answers malformed input in the shape the peer is waiting for: a
    /// rejected handshake before it, an `InvalidRequest` error after.
    fn refuse(&mut self, e: &FrameError) {
        let reason = format!("malformed frame: {}", logging::chain(e));
        tracing::warn!(
            target: logging::TARGET,
            peer_pid = self.peer.pid,
            peer_uid = self.peer.uid,
            error = reason.as_str(),
            "closing a connection after malformed input"
        );
        match self.stage {
            Stage::Hello => self.send(&HelloReply::Rejected { reason }),
            Stage::Ready => self.send(&Response::Error(HelperError {
                kind: HelperErrorKind::InvalidRequest,
                message: reason,
            })),
        };
    }

    /// Writes one frame; false when the peer is gone or stalled.
    fn send<T: Serialize>(&mut self, msg: &T) -> bool {
        match write_frame(&mut &self.stream, msg) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(
                    target: logging::TARGET,
                    error = %logging::chain(&e),
                    peer_pid = self.peer.pid,
                    "writing to peer failed"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_dispatcher;
    use execgo_runtime_protocol::{encode, read_frame, HelperCapabilities};
    use std::io::Write;

    fn pair() -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // A reply that never comes fails the test instead of hanging it.
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer = crate::peer::peer_of(&ours).unwrap();
        (Conn::new(ours, peer).unwrap(), theirs)
    }

    #[test]
    fn pipelined_frames_in_pieces_are_answered_in_order() {
        let (_tmp, d) = test_dispatcher();
        let (mut c, mut theirs) = pair();
        let mut bytes = encode(&Hello::current()).unwrap();
        for req in [Request::Ping, Request::Probe, Request::Ping] {
            bytes.extend(encode(&req).unwrap());
        }
        // All but the last byte: every whole frame is served, the rest
        // waits with its clock running.
        let (most, last) = bytes.split_at(bytes.len() - 1);
        theirs.write_all(most).unwrap();
        assert_eq!(c.on_readable(&d), Flow::Open);
        assert!(c.deadline().is_some(), "a partial frame is timed");
        let start = c.deadline().unwrap() - PARTIAL_FRAME_TIMEOUT;
        assert_eq!(c.on_tick(start), Flow::Open);
        theirs.write_all(last).unwrap();
        assert_eq!(c.on_readable(&d), Flow::Open);
        assert_eq!(c.deadline(), None);
        assert!(matches!(
            read_frame::<HelloReply, _>(&mut theirs).unwrap(),
            HelloReply::Accepted { .. }
        ));
        let caps = HelperCapabilities {
            process_group: true,
            ..Default::default()
        };
        for want in [Response::Pong, Response::Probe(caps), Response::Pong] {
            assert_eq!(read_frame::<Response, _>(&mut theirs).unwrap(), want);
        }
    }

    #[test]
    fn a_stalled_partial_frame_expires() {
        let (_tmp, d) = test_dispatcher();
        let (mut c, mut theirs) = pair();
        theirs.write_all(&[10, 0]).unwrap();
        assert_eq!(c.on_readable(&d), Flow::Open);
        let deadline = c.deadline().unwrap();
        assert_eq!(c.on_tick(deadline - Duration::from_millis(1)), Flow::Open);
        assert_eq!(c.on_tick(deadline), Flow::Close);
    }

    #[test]
    fn malformed_input_is_answered_then_closes() {
        let (_tmp, d) = test_dispatcher();
        let (mut c, mut theirs) = pair();
        let mut bytes = encode(&Hello::current()).unwrap();
        bytes.extend(encode(&Request::Ping).unwrap());
        // An oversized prefix is refused before its payload is waited for.
        bytes.extend((execgo_runtime_protocol::MAX_FRAME_BYTES + 1).to_le_bytes());
        theirs.write_all(&bytes).unwrap();
        assert_eq!(c.on_readable(&d), Flow::Close);
        read_frame::<HelloReply, _>(&mut theirs).unwrap();
        assert_eq!(
            read_frame::<Response, _>(&mut theirs).unwrap(),
            Response::Pong
        );
        match read_frame::<Response, _>(&mut theirs).unwrap() {
            Response::Error(e) => {
                assert_eq!(e.kind, HelperErrorKind::InvalidRequest);
                assert!(e.message.starts_with("malformed frame"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
