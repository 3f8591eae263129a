//! One client connection: a byte buffer that becomes frames, the handshake
//! stage, the queue of replies in request order, and the rule that any
//! malformed input ends *this* connection (after an error reply when the
//! socket still takes one) while the helper keeps serving the others.
//!
//! Requests may be pipelined: the peer may write several before reading a
//! reply. Each takes a slot in the connection's [`ReplyQueue`]; a launch's
//! slot stays pending until its shim reports, and replies are written from
//! the front of the queue only, so they go out in request order. While the
//! queue is full ([`MAX_SLOTS`](crate::replies::MAX_SLOTS)) the socket is not read and further
//! requests wait in its buffer. A connection that closes drops its pending
//! launches; their shims carry on.
//!
//! Reads never block (`MSG_DONTWAIT` after poll said readable), so a peer
//! that stalls mid-frame holds nothing but its own buffer, and is dropped
//! once its partial frame is older than [`PARTIAL_FRAME_TIMEOUT`]. Writes
//! block for at most [`IO_TIMEOUT`] (SO_SNDTIMEO).

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, frame::payload_len, write_frame, FrameError, Hello, HelloReply, HelperError,
    HelperErrorKind, Request, Response,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{recv, MsgFlags};
use serde::Serialize;

use crate::deadline;
use crate::dispatch::Dispatcher;
use crate::logging;
use crate::peer::Peer;
use crate::replies::ReplyQueue;

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
    pub stream: UnixStream,
    pub peer: Peer,
    stage: Stage,
    buf: Vec<u8>,
    partial_since: Option<Instant>,
    replies: ReplyQueue,
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
            replies: ReplyQueue::default(),
        })
    }

    /// Whether to read requests: not while the reply queue is full.
    fn wants_input(&self) -> bool {
        !self.replies.is_full()
    }

    /// What to poll for this connection, in the order [`Self::on_events`]
    /// takes the results: the socket (`POLLIN` unless the queue is full;
    /// a hang-up is reported either way), then each pending launch's
    /// report pipe.
    pub fn poll_fds(&self) -> impl Iterator<Item = PollFd<'_>> {
        let socket = if self.wants_input() {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        std::iter::once(PollFd::new(self.stream.as_fd(), socket)).chain(
            self.replies
                .pending()
                .map(|p| PollFd::new(p.fd(), PollFlags::POLLIN)),
        )
    }

    /// The next time this connection needs attention without any event:
    /// its partial frame expires or a shim's time to report is up.
    pub fn deadline(&self) -> Option<Instant> {
        deadline::earliest(self.partial_deadline(), self.replies.deadline())
    }

    /// When this connection's incomplete frame expires, if it has one.
    fn partial_deadline(&self) -> Option<Instant> {
        self.partial_since
            .and_then(|t| t.checked_add(PARTIAL_FRAME_TIMEOUT))
    }

    /// Handles one poll round: `revents` as [`Self::poll_fds`] listed them
    /// (empty when nothing happened; deadlines are checked all the same).
    /// Reports are taken in, the socket read, complete frames served while
    /// the queue has room, and ready replies written from its front.
    pub fn on_events(&mut self, revents: &[PollFlags], now: Instant, d: &mut Dispatcher) -> Flow {
        let flow = self.step(revents, now, d);
        if flow == Flow::Close {
            // One line per task, so a task's log (TASK_ID) tells why its
            // launch was never answered.
            for p in self.replies.pending() {
                tracing::info!(
                    target: logging::TARGET,
                    peer_pid = self.peer.pid,
                    peer_uid = self.peer.uid,
                    task_id = p.task_id(),
                    "connection closed with the launch pending; the shim carries on"
                );
            }
        }
        flow
    }

    fn step(&mut self, revents: &[PollFlags], now: Instant, d: &mut Dispatcher) -> Flow {
        let (socket, reports) = match revents.split_first() {
            Some((s, r)) => (*s, r),
            None => (PollFlags::empty(), revents),
        };
        let readable: Vec<bool> = reports.iter().map(|r| !r.is_empty()).collect();
        self.replies.advance(&readable, now);
        if !socket.is_empty() {
            // Not polled for input (full queue): only a hang-up or an
            // error wakes us, and the peer can no longer take replies.
            let flow = if self.wants_input() {
                self.read()
            } else {
                tracing::debug!(
                    target: logging::TARGET,
                    peer_pid = self.peer.pid,
                    peer_uid = self.peer.uid,
                    "peer hung up with a full reply queue"
                );
                Flow::Close
            };
            if flow == Flow::Close {
                return Flow::Close;
            }
        }
        if self.pump(d) == Flow::Close {
            return Flow::Close;
        }
        if deadline::reached(now, self.partial_deadline()) {
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

    /// Reads what the socket holds into the buffer.
    fn read(&mut self) -> Flow {
        let mut chunk = [0u8; 64 * 1024];
        match recv(self.stream.as_raw_fd(), &mut chunk, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => {
                if !self.buf.is_empty() {
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
                self.buf.extend_from_slice(&chunk[..n]);
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

    /// Writes the ready replies at the front of the queue, then serves the
    /// buffered frames one by one while the queue has room, writing each
    /// reply that is ready at once.
    fn pump(&mut self, d: &mut Dispatcher) -> Flow {
        loop {
            if !self.flush() {
                return Flow::Close;
            }
            if self.replies.is_full() {
                // The frames left in the buffer wait for us, not for the
                // peer: no partial-frame clock while we do not read.
                self.partial_since = None;
                return Flow::Open;
            }
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

    /// Writes ready replies from the front of the queue, stopping at the
    /// first pending one; false when the peer is gone or stalled.
    fn flush(&mut self) -> bool {
        while let Some(resp) = self.replies.pop_ready() {
            if !self.send(&resp) {
                return false;
            }
        }
        true
    }

    fn on_frame(&mut self, payload: &[u8], d: &mut Dispatcher) -> Flow {
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
                    self.replies.push(reply);
                    Flow::Open
                }
                Err(e) => {
                    self.refuse(&e);
                    Flow::Close
                }
            },
        }
    }

    /// Answers malformed input in the shape the peer is waiting for: a
    /// rejected handshake before it, an `InvalidRequest` error after. The
    /// queue was just flushed, so it is empty or starts with a pending
    /// launch; in the latter case no error is written, as the peer would
    /// take it for that launch's reply: the connection just closes.
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
            Stage::Hello => {
                self.send(&HelloReply::Rejected { reason });
            }
            Stage::Ready if self.replies.is_empty() => {
                self.send(&Response::Error(HelperError {
                    kind: HelperErrorKind::InvalidRequest,
                    message: reason,
                }));
            }
            Stage::Ready => {}
        }
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
    use crate::pending::PendingLaunch;
    use crate::replies::{Reply, MAX_SLOTS};
    use crate::shim::report::{self, ReportReader, ShimReport};
    use execgo_runtime_protocol::{encode, read_frame, Launched, MAX_FRAME_BYTES};
    use nix::fcntl::OFlag;
    use std::os::fd::OwnedFd;

    fn socket_events(c: &Conn) -> PollFlags {
        c.poll_fds().next().unwrap().events()
    }

    #[test]
    fn a_full_queue_stops_reading_until_a_reply_leaves() {
        let (_tmp, mut d) = test_dispatcher();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // A reply that never comes fails the test instead of hanging it.
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer = crate::peer::peer_of(&ours).unwrap();
        let mut c = Conn::new(ours, peer).unwrap();
        c.stage = Stage::Ready;
        let now = Instant::now();
        let mut writers: Vec<OwnedFd> = Vec::new();
        for i in 0..MAX_SLOTS {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
            let reader = ReportReader::new(r, Duration::from_secs(10), now).unwrap();
            c.replies
                .push(Reply::Pending(PendingLaunch::new(format!("t{i}"), reader)));
            writers.push(w);
        }
        assert_eq!(c.poll_fds().count(), 1 + MAX_SLOTS);
        assert_eq!(socket_events(&c), PollFlags::empty(), "full: not read");
        // A request the peer sends now waits in the socket buffer.
        write_frame(&mut theirs, &Request::Ping).unwrap();
        assert_eq!(c.on_events(&[], now, &mut d), Flow::Open);
        assert!(c.buf.is_empty(), "nothing read while full");
        // The first launch reports: its reply leaves, the socket is read
        // again, and the Ping is answered after it.
        let l = Launched {
            shim_pid: 7,
            shim_start_ticks: 8,
            pid: None,
            pgid: None,
            started_at: None,
            already_claimed: true,
        };
        report::send(&writers[0], &ShimReport::Launched(l.clone())).unwrap();
        let mut revents = vec![PollFlags::empty(); 1 + MAX_SLOTS];
        revents[1] = PollFlags::POLLIN;
        assert_eq!(c.on_events(&revents, now, &mut d), Flow::Open);
        assert_eq!(socket_events(&c), PollFlags::POLLIN);
        assert_eq!(
            read_frame::<Response, _>(&mut theirs).unwrap(),
            Response::Launched(l)
        );
        let mut revents = vec![PollFlags::empty(); MAX_SLOTS];
        revents[0] = PollFlags::POLLIN;
        assert_eq!(c.on_events(&revents, now, &mut d), Flow::Open);
        // The Ping took the free slot, behind 63 pending launches.
        assert_eq!(c.poll_fds().count(), MAX_SLOTS);
        assert_eq!(socket_events(&c), PollFlags::empty());
        // They all end without a report; the errors, then the Pong. A child
        // forked meanwhile by a parallel test may hold a write end until it
        // execs or exits, so the hang-ups are reported until every pipe has
        // reached its end.
        writers.clear();
        let give_up = Instant::now() + Duration::from_secs(10);
        while c.poll_fds().count() > 1 {
            assert!(
                Instant::now() < give_up,
                "the pipes never reached their end"
            );
            let mut revents = vec![PollFlags::POLLHUP; c.poll_fds().count()];
            revents[0] = PollFlags::empty();
            assert_eq!(c.on_events(&revents, now, &mut d), Flow::Open);
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 1..MAX_SLOTS {
            match read_frame::<Response, _>(&mut theirs).unwrap() {
                Response::Error(e) => assert_eq!(e.kind, HelperErrorKind::Internal),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            read_frame::<Response, _>(&mut theirs).unwrap(),
            Response::Pong
        );
        assert_eq!(c.poll_fds().count(), 1);
        // A hang-up reported while the queue is full closes the connection.
        for i in 0..MAX_SLOTS {
            let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
            let reader = ReportReader::new(r, Duration::from_secs(10), now).unwrap();
            c.replies
                .push(Reply::Pending(PendingLaunch::new(format!("u{i}"), reader)));
        }
        let mut revents = vec![PollFlags::empty(); 1 + MAX_SLOTS];
        revents[0] = PollFlags::POLLHUP;
        assert_eq!(c.on_events(&revents, now, &mut d), Flow::Close);
    }

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
