//! A connection's replies that the kernel has not taken yet. They are
//! written without blocking (`MSG_DONTWAIT`), in order, and timed: each
//! reply must be taken within the connection's write timeout of being
//! queued, so a peer that reads nothing, or a byte now and then, is found
//! out in bounded time whatever it does. How many bytes may wait here is
//! bounded by the connection, which stops serving requests (and reading)
//! while [`Outbox::len`] is at its high-water mark (see [`crate::conn`]).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};

/// Replies queued within this long of the newest time mark share it (the
/// older one, so a deadline comes early rather than late): the number of
/// marks is bounded by the write timeout over this, not by the number of
/// replies.
const MARK_GRANULARITY: Duration = Duration::from_millis(100);

/// Unsent reply bytes, with when they were queued.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already sent.
    start: usize,
    /// Bytes ever queued, and ever sent: offsets in the connection's
    /// output stream.
    queued: u64,
    sent: u64,
    /// (stream offset a group of replies ends at, when the group's first
    /// one was queued), oldest first; only groups not yet wholly sent.
    marks: VecDeque<(u64, Instant)>,
}

impl Outbox {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the oldest reply still (partly) unsent was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.marks.front().map(|&(_, at)| at)
    }

    /// Queues one encoded reply.
    pub fn push(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
        match self.marks.back_mut() {
            Some((end, at)) if now.saturating_duration_since(*at) < MARK_GRANULARITY => {
                *end = self.queued;
            }
            _ => self.marks.push_back((self.queued, now)),
        }
    }

    /// Writes as much as the socket takes now. `Ok` also when it takes
    /// nothing more (EAGAIN): poll for `POLLOUT` then. An error means the
    /// peer is gone (EPIPE, ECONNRESET).
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        while !self.is_empty() {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(fd.as_raw_fd(), &self.buf[self.start..], flags) {
                Ok(n) => self.consume(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.sent += n as u64;
        while self.marks.front().is_some_and(|&(end, _)| end <= self.sent) {
            self.marks.pop_front();
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= self.buf.len() / 2 {
            // Moves at most as many bytes as were sent since the last move.
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn marks_follow_what_is_sent() {
        let t0 = Instant::now();
        let mut o = Outbox::default();
        assert_eq!(o.oldest(), None);
        o.push(b"abc", t0);
        o.push(b"de", t0 + Duration::from_millis(10));
        o.push(b"fgh", t0 + Duration::from_secs(1));
        assert_eq!(o.marks.len(), 2, "the first two share a mark");
        assert_eq!(o.oldest(), Some(t0));
        o.consume(4);
        assert_eq!(o.oldest(), Some(t0), "a reply partly sent keeps its time");
        o.consume(1);
        assert_eq!(o.oldest(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(o.len(), 3);
        o.consume(3);
        assert!(o.is_empty());
        assert_eq!(o.oldest(), None);
    }

    #[test]
    fn flush_stops_when_the_socket_is_full() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut o = Outbox::default();
        let reply = [7u8; 4096];
        let now = Instant::now();
        for _ in 0..1024 {
            o.push(&reply, now);
        }
        o.flush(ours.as_fd()).unwrap();
        let left = o.len();
        assert!(left > 0 && left < 4 << 20, "the kernel took part: {left}");
        let mut got = vec![0u8; 4 << 20];
        let mut total = 0;
        while !o.is_empty() {
            total += theirs.read(&mut got[total..]).unwrap();
            o.flush(ours.as_fd()).unwrap();
        }
        drop(ours);
        theirs.read_to_end(&mut Vec::new()).unwrap();
        assert!(total <= 4 << 20);
        drop(theirs);
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        o.push(b"x", now);
        assert_eq!(o.flush(ours.as_fd()), Err(Errno::EPIPE));
    }
}
