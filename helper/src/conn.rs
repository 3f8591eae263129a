//! One client connection: a byte buffer that becomes frames, the handshake
//! stage, and the rule that any malformed input ends *this* connection
//! (after an error reply when the socket still takes one) while the helper
//! keeps serving the others.
//!
//! Reads never block (`MSG_DONTWAIT` after poll said readable), so a peer
//! that stalls mid-frame holds nothing but its own buffer, and is dropped
//! once its partial frame is older than [`PARTIAL_FRAME_TIMEOUT`]. Writes
//! block for at most [`IO_TIMEOUT`] (SO_SNDTIMEO).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, frame::payload_len, write_frame, FrameError, Hello, HelloReply, HelperError,
    HelperErrorKind, Request, Response,
};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use serde::Serialize;

use crate::dispatch::Dispatcher;
use crate::log;
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
    /// Handshake done: each [`Request`] gets one [`Response`].
    Ready,
}

pub struct Conn {
    pub stream: UnixStream,
    pub peer: Peer,
    stage: Stage,
    buf: Vec<u8>,
    partial_since: Option<Instant>,
}

/// Splits the next complete frame off the front of `buf`. The length
/// prefix is checked against the cap as soon as its 4 bytes are in, before
/// waiting for (or buffering) the payload.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(prefix);
    let len = payload_len(p)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let payload = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Ok(Some(payload))
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            peer,
            stage: Stage::Hello,
            buf: Vec::new(),
            partial_since: None,
        })
    }

    /// When this connection's incomplete frame expires, if it has one.
    pub fn partial_deadline(&self) -> Option<Instant> {
        self.partial_since
            .and_then(|t| t.checked_add(PARTIAL_FRAME_TIMEOUT))
    }

    fn fields(&self) -> [(&'static str, serde_json::Value); 2] {
        [
            ("peer_pid", self.peer.pid.into()),
            ("peer_uid", self.peer.uid.into()),
        ]
    }

    /// Handles readiness: reads what is there and serves every complete
    /// frame in it.
    pub fn on_readable(&mut self, d: &mut Dispatcher) -> Flow {
        let mut chunk = [0u8; 64 * 1024];
        match recv(self.stream.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => {
                if !self.buf.is_empty() {
                    log::debug("peer closed mid-frame", &self.fields());
                }
                return Flow::Close;
            }
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Flow::Open,
            Err(e) => {
                log::debug(
                    "reading from peer failed",
                    &[("error", e.to_string().into()), self.fields()[0].clone()],
                );
                return Flow::Close;
            }
        }
        loop {
            match take_frame(&mut self.buf) {
                Ok(Some(payload)) => {
                    if self.on_frame(&payload, d) == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(None) => {
                    self.partial_since = match (self.buf.is_empty(), self.partial_since) {
                        (true, _) => None,
                        (false, Some(t)) => Some(t),
                        (false, None) => Some(Instant::now()),
                    };
                    return Flow::Open;
                }
                Err(e) => {
                    self.refuse(&e);
                    return Flow::Close;
                }
            }
        }
    }

    /// Called when the partial-frame deadline passed: the peer stalled.
    pub fn on_stalled(&mut self) {
        log::warn(
            "peer stalled in the middle of a frame; closing its connection",
            &self.fields(),
        );
    }

    fn on_frame(&mut self, payload: &[u8], d: &mut Dispatcher) -> Flow {
        match self.stage {
            Stage::Hello => match decode::<Hello>(payload) {
                Ok(hello) => {
                    let reply = d.hello(&hello);
                    let accepted = matches!(reply, HelloReply::Accepted { .. });
                    if let HelloReply::Rejected { reason } = &reply {
                        let mut f = self.fields().to_vec();
                        f.push(("reason", reason.clone().into()));
                        log::warn("handshake rejected", &f);
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
                    let resp = d.handle(&self.peer, req);
                    if self.send(&resp) {
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
        let reason = format!("malformed frame: {}", log::chain(e));
        let mut f = self.fields().to_vec();
        f.push(("error", reason.clone().into()));
        log::warn("closing a connection after malformed input", &f);
        match self.stage {
            Stage::Hello => {
                self.send(&HelloReply::Rejected { reason });
            }
            Stage::Ready => {
                self.send(&Response::Error(HelperError {
                    kind: HelperErrorKind::InvalidRequest,
                    message: reason,
                }));
            }
        }
    }

    /// Writes one frame; false when the peer is gone or stalled.
    fn send<T: Serialize>(&mut self, msg: &T) -> bool {
        match write_frame(&mut &self.stream, msg) {
            Ok(()) => true,
            Err(e) => {
                log::debug(
                    "writing to peer failed",
                    &[("error", log::chain(&e).into()), self.fields()[0].clone()],
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgo_runtime_protocol::{encode, MAX_FRAME_BYTES};

    #[test]
    fn frames_split_and_wait_for_more() {
        let mut buf = encode(&Request::Ping).unwrap();
        buf.extend(encode(&Request::Probe).unwrap());
        let whole = buf.clone();
        let mut partial = whole[..whole.len() - 1].to_vec();
        let first = take_frame(&mut partial).unwrap().unwrap();
        assert_eq!(decode::<Request>(&first).unwrap(), Request::Ping);
        assert_eq!(take_frame(&mut partial).unwrap(), None);
        partial.push(*whole.last().unwrap());
        let second = take_frame(&mut partial).unwrap().unwrap();
        assert_eq!(decode::<Request>(&second).unwrap(), Request::Probe);
        assert!(partial.is_empty());
        assert_eq!(take_frame(&mut vec![1, 0]).unwrap(), None);
    }

    #[test]
    fn oversized_prefix_fails_before_the_payload_arrives() {
        let mut buf = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
        assert!(matches!(
            take_frame(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
