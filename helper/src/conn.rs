//! One client connection: its bytes become frames (a [`FrameDecoder`]),
//! the handshake stage, its replies (an [`Outbox`]), its deadlines, and the
//! rule that any malformed input ends *this* connection, after a reply in
//! the shape the peer is waiting for, while the helper keeps serving the
//! others.
//!
//! Each whole frame is handled to completion and its reply queued at once,
//! so requests a peer pipelines are answered in request order. Nothing
//! blocks: reads and writes use `MSG_DONTWAIT` after poll said the socket
//! was ready, so a peer holds nothing but its own buffers, which are
//! bounded: while [`OUTBOX_HIGH_WATER`] reply bytes wait, no further frame
//! is served and nothing more is read ([`Conn::interest`] drops `POLLIN`),
//! so a peer that pipelines without reading meets back-pressure in its own
//! socket, not our memory. Each connection has deadlines ([`Limits`]):
//!
//! * the handshake must be done within [`HELLO_TIMEOUT`] of the accept;
//! * a started frame must be complete within [`PARTIAL_FRAME_TIMEOUT`];
//! * each reply must be taken by the peer within [`WRITE_TIMEOUT`] of being
//!   queued (a peer that reads nothing, or a byte now and then);
//! * a handshaken connection with nothing in flight is closed after
//!   [`IDLE_TIMEOUT`] without input (standalone mode only).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, encode, FrameDecoder, FrameError, Hello, HelloReply, HelperError, HelperErrorKind,
    Request, Response,
};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{recv, MsgFlags};
use serde::Serialize;

use crate::deadline;
use crate::dispatch::Dispatcher;
use crate::logging;
use crate::outbox::Outbox;
use crate::peer::Peer;

/// How long a new connection may take to complete its handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started but incomplete frame may wait for its remaining bytes.
pub const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a queued reply may wait for the peer to read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handshaken connection may stay silent with nothing in
/// flight (standalone mode; the hidden `--idle-timeout-secs` overrides it
/// for tests). The runtime reconnects on its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Reply bytes that may wait for the peer before the connection stops
/// serving requests and reading. A reply is small (the largest, `Probe`,
/// is well under a KiB), so at most this plus one reply is held.
pub const OUTBOX_HIGH_WATER: usize = 256 * 1024;
/// Bytes read per readable event (the decoder holds at most this plus one
/// incomplete frame).
const READ_CHUNK: usize = 64 * 1024;

/// A connection's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub hello: Duration,
    pub partial_frame: Duration,
    pub write: Duration,
    /// `None`: never closed for being idle (embedded mode, whose one
    /// connection ending ends the helper).
    pub idle: Option<Duration>,
}

impl Limits {
    pub const fn standard(idle: Option<Duration>) -> Limits {
        Limits {
            hello: HELLO_TIMEOUT,
            partial_frame: PARTIAL_FRAME_TIMEOUT,
            write: WRITE_TIMEOUT,
            idle,
        }
    }
}

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

/// Which deadline a connection missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Hello,
    PartialFrame,
    Write,
    Idle,
}

pub struct Conn {
    stream: UnixStream,
    peer: Peer,
    stage: Stage,
    frames: FrameDecoder,
    outbox: Outbox,
    limits: Limits,
    accepted_at: Instant,
    /// When bytes last arrived (or the accept, before any did).
    last_input: Instant,
    /// When the bytes of an incomplete frame started waiting, while the
    /// connection waits for the peer's bytes (not for its own replies).
    partial_since: Option<Instant>,
    /// No more input is taken (end of file, malformed input, a rejected
    /// handshake): the connection closes once its replies are out.
    draining: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer, limits: Limits, now: Instant) -> Conn {
        Conn {
            stream,
            peer,
            stage: Stage::Hello,
            frames: FrameDecoder::default(),
            outbox: Outbox::default(),
            limits,
            accepted_at: now,
            last_input: now,
            partial_since: None,
            draining: false,
        }
    }

    /// The socket, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// What to poll for: input unless replies are backed up (or no more is
    /// taken), output while replies wait.
    pub fn interest(&self) -> PollFlags {
        let mut flags = PollFlags::empty();
        if self.wants_input() {
            flags |= PollFlags::POLLIN;
        }
        if !self.outbox.is_empty() {
            flags |= PollFlags::POLLOUT;
        }
        flags
    }

    fn wants_input(&self) -> bool {
        !self.draining && self.outbox.len() < OUTBOX_HIGH_WATER
    }

    /// Which connection goes first when one must make room: one still
    /// without a handshake before any with one, then the longest waiting
    /// (since its accept, or its last input). The smallest key goes.
    pub fn eviction_key(&self) -> (bool, Instant) {
        match self.stage {
            Stage::Hello => (false, self.accepted_at),
            Stage::Ready => (true, self.last_input),
        }
    }

    /// This connection's earliest deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadlines().map(|(at, _)| at)
    }

    fn deadlines(&self) -> Option<(Instant, Expired)> {
        let l = &self.limits;
        let hello = (self.stage == Stage::Hello)
            .then(|| deadline::after(self.accepted_at, l.hello))
            .flatten()
            .map(|t| (t, Expired::Hello));
        let partial = self
            .partial_since
            .and_then(|t| deadline::after(t, l.partial_frame))
            .map(|t| (t, Expired::PartialFrame));
        let write = self
            .outbox
            .oldest()
            .and_then(|t| deadline::after(t, l.write))
            .map(|t| (t, Expired::Write));
        let quiet = self.stage == Stage::Ready
            && !self.draining
            && self.outbox.is_empty()
            && self.frames.buffered() == 0;
        let idle = l
            .idle
            .filter(|_| quiet)
            .and_then(|d| deadline::after(self.last_input, d))
            .map(|t| (t, Expired::Idle));
        [hello, partial, write, idle]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// Handles a poll round in which the socket reported `revents`: sends
    /// what waits, then reads and serves every whole frame, in order, as
    /// far as the outbox allows.
    pub fn on_event(&mut self, revents: PollFlags, d: &Dispatcher) -> Flow {
        let hangup = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        if !self.outbox.is_empty() && (hangup || revents.contains(PollFlags::POLLOUT)) {
            if self.flush() == Flow::Close {
                return Flow::Close;
            }
            // Room again: serve what was read before the outbox filled.
            if self.serve(d) == Flow::Close {
                return Flow::Close;
            }
        }
        if hangup || revents.contains(PollFlags::POLLIN) {
            if self.wants_input() {
                if self.read() == Flow::Close || self.serve(d) == Flow::Close {
                    return Flow::Close;
                }
            } else if hangup {
                // Not reading, so the hang-up would be reported again and
                // again: the peer is gone with replies unsent.
                return Flow::Close;
            }
        }
        if self.draining && self.outbox.is_empty() {
            return Flow::Close;
        }
        Flow::Open
    }

    /// Drops a connection whose deadline has come, saying which.
    pub fn on_tick(&self, now: Instant) -> Flow {
        let Some((at, which)) = self.deadlines() else {
            return Flow::Open;
        };
        if !deadline::reached(now, Some(at)) {
            return Flow::Open;
        }
        let (peer_pid, peer_uid) = (self.peer.pid, self.peer.uid);
        match which {
            Expired::Hello => tracing::warn!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                "peer did not complete the handshake in time; closing its connection"
            ),
            Expired::PartialFrame => tracing::warn!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                "peer stalled in the middle of a frame; closing its connection"
            ),
            Expired::Write => tracing::warn!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                unsent_bytes = self.outbox.len(),
                "peer does not read its replies; closing its connection"
            ),
            Expired::Idle => tracing::info!(
                target: logging::TARGET,
                peer_pid,
                peer_uid,
                idle_secs = now.saturating_duration_since(self.last_input).as_secs(),
                "connection idle for too long; closing it"
            ),
        }
        Flow::Close
    }

    /// Reads what the socket holds (one chunk) into the decoder.
    fn read(&mut self) -> Flow {
        let mut chunk = [0u8; READ_CHUNK];
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
                // A peer that only shut down its writing side still gets
                // every reply.
                self.draining = true;
                self.partial_since = None;
                Flow::Open
            }
            Ok(n) => {
                self.frames.push(&chunk[..n]);
                self.last_input = Instant::now();
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

    /// Serves whole frames in order until none is left or the outbox is
    /// at its high-water mark.
    fn serve(&mut self, d: &Dispatcher) -> Flow {
        while self.wants_input() {
            match self.frames.next_payload() {
                Ok(Some(payload)) => {
                    if self.on_frame(&payload, d) == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.refuse(&e);
                    break;
                }
            }
        }
        // Only the peer's own silence runs the partial-frame clock; while
        // its replies back up, the write deadline applies instead.
        let waiting_for_peer = self.wants_input() && self.frames.buffered() > 0;
        self.partial_since = match (waiting_for_peer, self.partial_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
        };
        Flow::Open
    }

    fn on_frame(&mut self, payload: &[u8], d: &Dispatcher) -> Flow {
        match self.stage {
            Stage::Hello => match decode::<Hello>(payload) {
                Ok(hello) => {
                    let reply = d.hello(&hello);
                    if let HelloReply::Rejected { reason } = &reply {
                        tracing::warn!(
                            target: logging::TARGET,
                            peer_pid = self.peer.pid,
                            peer_uid = self.peer.uid,
                            reason = reason.as_str(),
                            "handshake rejected"
                        );
                        self.draining = true;
                    } else {
                        self.stage = Stage::Ready;
                    }
                    self.send(&reply)
                }
                Err(e) => {
                    self.refuse(&e);
                    Flow::Open
                }
            },
            Stage::Ready => match decode::<Request>(payload) {
                Ok(req) => {
                    let reply = d.handle(&self.peer, req);
                    self.send(&reply)
                }
                Err(e) => {
                    self.refuse(&e);
                    Flow::Open
                }
            },
        }
    }

    /// Answers malformed input in the shape the peer is waiting for: a
    /// rejected handshake before it, an `InvalidRequest` error after. No
    /// more input is taken; the connection closes once the answer is out.
    fn refuse(&mut self, e: &FrameError) {
        let reason = format!("malformed frame: {}", logging::chain(e));
        tracing::warn!(
            target: logging::TARGET,
            peer_pid = self.peer.pid,
            peer_uid = self.peer.uid,
            error = reason.as_str(),
            "closing a connection after malformed input"
        );
        self.draining = true;
        let _ = match self.stage {
            Stage::Hello => self.send(&HelloReply::Rejected { reason }),
            Stage::Ready => self.send(&Response::Error(HelperError {
                kind: HelperErrorKind::InvalidRequest,
                message: reason,
            })),
        };
    }

    /// Queues one frame, and writes it at once unless replies are backed
    /// up already (then the socket is full, and poll says when it is not).
    fn send<T: Serialize>(&mut self, msg: &T) -> Flow {
        let bytes = match encode(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    target: logging::TARGET,
                    error = %logging::chain(&e),
                    peer_pid = self.peer.pid,
                    "encoding a reply failed"
                );
                return Flow::Close;
            }
        };
        let was_empty = self.outbox.is_empty();
        self.outbox.push(&bytes, Instant::now());
        if was_empty {
            self.flush()
        } else {
            Flow::Open
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) -> Flow {
        match self.outbox.flush(self.stream.as_fd()) {
            Ok(()) => Flow::Open,
            Err(e) => {
                tracing::debug!(
                    target: logging::TARGET,
                    error = %e,
                    peer_pid = self.peer.pid,
                    "writing to peer failed"
                );
                Flow::Close
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::test_dispatcher;
    use execgo_runtime_protocol::{read_frame, HelperCapabilities};
    use std::io::Write;

    fn pair_with(limits: Limits) -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // A reply that never comes fails the test instead of hanging it.
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let peer = crate::peer::peer_of(&ours).unwrap();
        (Conn::new(ours, peer, limits, Instant::now()), theirs)
    }

    fn pair() -> (Conn, UnixStream) {
        pair_with(Limits::standard(Some(IDLE_TIMEOUT)))
    }

    fn readable(c: &mut Conn, d: &Dispatcher) -> Flow {
        c.on_event(PollFlags::POLLIN, d)
    }

    /// A connection with the handshake done and its reply read.
    fn ready(limits: Limits, d: &Dispatcher) -> (Conn, UnixStream) {
        let (mut c, mut theirs) = pair_with(limits);
        theirs
            .write_all(&encode(&Hello::current()).unwrap())
            .unwrap();
        assert_eq!(readable(&mut c, d), Flow::Open);
        assert!(matches!(
            read_frame::<HelloReply, _>(&mut theirs).unwrap(),
            HelloReply::Accepted { .. }
        ));
        (c, theirs)
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
        assert_eq!(readable(&mut c, &d), Flow::Open);
        let partial = c.partial_since.expect("a partial frame is timed");
        assert_eq!(c.deadline(), Some(partial + PARTIAL_FRAME_TIMEOUT));
        assert_eq!(c.on_tick(partial), Flow::Open);
        theirs.write_all(last).unwrap();
        assert_eq!(readable(&mut c, &d), Flow::Open);
        assert_eq!(c.partial_since, None);
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
        let (mut c, mut theirs) = ready(Limits::standard(None), &d);
        theirs.write_all(&[10, 0]).unwrap();
        assert_eq!(readable(&mut c, &d), Flow::Open);
        let deadline = c.deadline().unwrap();
        assert_eq!(deadline, c.partial_since.unwrap() + PARTIAL_FRAME_TIMEOUT);
        assert_eq!(c.on_tick(deadline - Duration::from_millis(1)), Flow::Open);
        assert_eq!(c.on_tick(deadline), Flow::Close);
    }

    #[test]
    fn the_handshake_has_a_deadline() {
        let (_tmp, d) = test_dispatcher();
        let (c, _theirs) = pair();
        let deadline = c.accepted_at + HELLO_TIMEOUT;
        assert_eq!(c.deadline(), Some(deadline));
        assert_eq!(c.on_tick(deadline - Duration::from_millis(1)), Flow::Open);
        assert_eq!(c.on_tick(deadline), Flow::Close);
        // Done, it is the idle deadline's turn, or none.
        let (c, _theirs) = ready(Limits::standard(Some(Duration::from_secs(7))), &d);
        assert_eq!(c.deadline(), Some(c.last_input + Duration::from_secs(7)));
        assert_eq!(
            c.on_tick(c.last_input + Duration::from_secs(7)),
            Flow::Close
        );
        let (c, _theirs) = ready(Limits::standard(None), &d);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn replies_back_up_to_the_high_water_mark_then_reading_stops() {
        let (_tmp, d) = test_dispatcher();
        let (mut c, mut theirs) = ready(Limits::standard(None), &d);
        let ping = encode(&Request::Ping).unwrap();
        let count = 4 * OUTBOX_HIGH_WATER / ping.len();
        let mut writer = theirs.try_clone().unwrap();
        let pings = std::thread::spawn(move || {
            for _ in 0..count {
                writer.write_all(&ping).unwrap();
            }
        });
        // The peer reads nothing: serve until the connection stops reading.
        let mut rounds = 0;
        while c.interest().contains(PollFlags::POLLIN) {
            assert_eq!(readable(&mut c, &d), Flow::Open);
            rounds += 1;
            assert!(rounds < 100_000, "never stopped reading");
        }
        assert!(c.outbox.len() >= OUTBOX_HIGH_WATER);
        assert!(c.outbox.len() < OUTBOX_HIGH_WATER + 64);
        assert!(c.frames.buffered() <= READ_CHUNK);
        assert!(c.interest().contains(PollFlags::POLLOUT));
        let oldest = c.outbox.oldest().unwrap();
        assert_eq!(c.deadline(), Some(oldest + WRITE_TIMEOUT));
        assert_eq!(c.on_tick(oldest + WRITE_TIMEOUT), Flow::Close);
        // Now it reads: every reply comes, in order, and serving resumes.
        let mut got = 0;
        while got < count {
            assert_eq!(
                read_frame::<Response, _>(&mut theirs).unwrap(),
                Response::Pong
            );
            got += 1;
            // What poll would report: the outbox drains as the peer reads.
            assert_eq!(c.on_event(c.interest(), &d), Flow::Open);
        }
        pings.join().unwrap();
        assert!(c.outbox.is_empty());
        assert_eq!(c.frames.buffered(), 0);
    }

    #[test]
    fn eof_closes_after_the_replies_are_out() {
        let (_tmp, d) = test_dispatcher();
        let (mut c, mut theirs) = ready(Limits::standard(None), &d);
        theirs.write_all(&encode(&Request::Ping).unwrap()).unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(readable(&mut c, &d), Flow::Open);
        assert_eq!(readable(&mut c, &d), Flow::Close);
        assert_eq!(
            read_frame::<Response, _>(&mut theirs).unwrap(),
            Response::Pong
        );
    }

    #[test]
    fn eviction_prefers_connections_without_a_handshake() {
        let (_tmp, d) = test_dispatcher();
        let (done, _a) = ready(Limits::standard(None), &d);
        let (fresh, _b) = pair();
        assert!(fresh.eviction_key() < done.eviction_key());
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
        assert_eq!(readable(&mut c, &d), Flow::Close);
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
