//! A connection's replies, in request order. The peer may pipeline
//! requests and matches replies to them by order alone, so each request
//! takes a slot at the back of the queue: [`Reply::Ready`] at once (Ping,
//! Probe, a refused launch), or [`Reply::Pending`] for a launch whose shim
//! has not reported yet. Replies leave from the front only, and stop at the
//! first pending slot: a Pong behind a launch waits for the launch.
//!
//! At most [`MAX_SLOTS`] slots per connection; a full connection is not
//! read from, so its further requests wait in the socket buffer.

use std::collections::VecDeque;
use std::time::Instant;

use execgo_runtime_protocol::Response;

use crate::deadline;
use crate::pending::PendingLaunch;

/// Bound on the replies one connection may have outstanding.
pub const MAX_SLOTS: usize = 64;

pub enum Reply {
    Ready(Response),
    Pending(PendingLaunch),
}

#[derive(Default)]
pub struct ReplyQueue {
    slots: VecDeque<Reply>,
}

impl ReplyQueue {
    pub fn push(&mut self, reply: Reply) {
        self.slots.push_back(reply);
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= MAX_SLOTS
    }

    /// The pending launches, front to back: the order [`Self::advance`]
    /// takes their readiness in.
    pub fn pending(&self) -> impl Iterator<Item = &PendingLaunch> {
        self.slots.iter().filter_map(|s| match s {
            Reply::Pending(p) => Some(p),
            Reply::Ready(_) => None,
        })
    }

    /// The earliest report deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending()
            .map(PendingLaunch::deadline)
            .fold(None, deadline::earliest)
    }

    /// Moves every pending launch on: `readable[i]` tells whether the i-th
    /// of [`Self::pending`] had its report pipe readable (missing: not).
    /// A launch that has its answer becomes a ready slot where it stands.
    pub fn advance(&mut self, readable: &[bool], now: Instant) {
        let mut i = 0;
        for slot in &mut self.slots {
            if let Reply::Pending(p) = slot {
                let r = readable.get(i).copied().unwrap_or(false);
                i += 1;
                if let Some(resp) = p.advance(r, now) {
                    *slot = Reply::Ready(resp);
                }
            }
        }
    }

    /// Takes the front reply if it is ready.
    pub fn pop_ready(&mut self) -> Option<Response> {
        match self.slots.front()? {
            Reply::Ready(_) => match self.slots.pop_front() {
                Some(Reply::Ready(r)) => Some(r),
                _ => None,
            },
            Reply::Pending(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::report::{self, ReportReader, ShimReport};
    use execgo_runtime_protocol::{HelperErrorKind, Launched};
    use nix::fcntl::OFlag;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    fn pending(id: &str) -> (Reply, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let reader = ReportReader::new(r, Duration::from_secs(10), Instant::now()).unwrap();
        (Reply::Pending(PendingLaunch::new(id.into(), reader)), w)
    }

    fn launched(shim_pid: i32) -> Launched {
        Launched {
            shim_pid,
            shim_start_ticks: 1,
            pid: Some(shim_pid + 1),
            pgid: Some(shim_pid + 1),
            started_at: None,
            already_claimed: false,
        }
    }

    #[test]
    fn a_ready_reply_waits_behind_a_pending_launch() {
        let mut q = ReplyQueue::default();
        let (a, a_w) = pending("a");
        q.push(a);
        q.push(Reply::Ready(Response::Pong));
        assert_eq!(q.pop_ready(), None, "the Pong must not overtake");
        q.advance(&[true], Instant::now());
        assert_eq!(q.pop_ready(), None, "no report yet");
        report::send(&a_w, &ShimReport::Launched(launched(10))).unwrap();
        q.advance(&[true], Instant::now());
        assert_eq!(q.pop_ready(), Some(Response::Launched(launched(10))));
        assert_eq!(q.pop_ready(), Some(Response::Pong));
        assert_eq!(q.pop_ready(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_later_launch_finishing_first_still_waits_its_turn() {
        let mut q = ReplyQueue::default();
        q.push(Reply::Ready(Response::Pong));
        let (a, a_w) = pending("a");
        let (b, b_w) = pending("b");
        q.push(a);
        q.push(b);
        assert_eq!(
            q.pending().map(|p| p.task_id()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(q.pop_ready(), Some(Response::Pong));
        // b reports first; its readiness is the second entry.
        report::send(&b_w, &ShimReport::Launched(launched(20))).unwrap();
        q.advance(&[false, true], Instant::now());
        assert_eq!(q.pending().count(), 1);
        assert_eq!(q.pop_ready(), None, "b is done but a is still pending");
        // A child forked meanwhile by a parallel test may hold the dropped
        // write end until it execs or exits: end-of-file can come later.
        drop(a_w);
        let give_up = Instant::now() + Duration::from_secs(10);
        while q.pending().count() > 0 {
            assert!(Instant::now() < give_up, "no end-of-file");
            q.advance(&[true], Instant::now());
            std::thread::sleep(Duration::from_millis(5));
        }
        match q.pop_ready() {
            Some(Response::Error(e)) => {
                assert_eq!(e.kind, HelperErrorKind::Internal);
                assert!(e.message.contains("exited without reporting"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.pop_ready(), Some(Response::Launched(launched(20))));
        assert!(q.is_empty());
    }

    #[test]
    fn deadlines_and_the_cap() {
        let mut q = ReplyQueue::default();
        assert_eq!(q.deadline(), None);
        let (a, _a_w) = pending("a");
        q.push(a);
        let d = q.deadline().unwrap();
        q.advance(&[], d - Duration::from_millis(1));
        assert_eq!(q.pop_ready(), None);
        q.advance(&[], d);
        assert!(matches!(q.pop_ready(), Some(Response::Error(_))));
        for _ in 0..MAX_SLOTS - 1 {
            q.push(Reply::Ready(Response::Pong));
        }
        assert!(!q.is_full());
        q.push(Reply::Ready(Response::Pong));
        assert!(q.is_full());
        assert_eq!(q.pop_ready(), Some(Response::Pong));
        assert!(!q.is_full());
    }
}
