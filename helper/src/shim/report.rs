//! The shim's one message to the helper, over a close-on-exec pipe: either
//! the launch went as far as it could ([`Launched`], which also covers an
//! exec failure already recorded in `result.json`, and an earlier claim), or
//! it failed before the task was claimed. One protocol frame, then EOF.
//! The shim writes it with [`send`]; the helper reads it with a
//! [`ReportReader`] from its serve loop, never blocking on one shim.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, encode, frame::payload_len, FrameError, HelperError, Launched,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use serde::{Deserialize, Serialize};

use crate::deadline;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimReport {
    Launched(Launched),
    Failed(HelperError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("encoding the report failed")]
    Encode(#[source] FrameError),
    #[error("writing the report failed")]
    Write(#[source] io::Error),
    #[error("the shim did not report within {0:?}")]
    Timeout(Duration),
    #[error("the shim exited without reporting")]
    Missing,
    #[error("the shim's report was cut short")]
    Truncated,
    #[error("reading the shim's report failed")]
    Read(#[source] Errno),
    #[error("the shim's report is malformed")]
    Decode(#[source] FrameError),
}

/// Writes the report (shim side). A helper that went away is not an error
/// worth stopping the task for; the caller decides.
pub fn send(pipe: &OwnedFd, report: &ShimReport) -> Result<(), ReportError> {
    let bytes = encode(report).map_err(ReportError::Encode)?;
    let mut off = 0;
    while off < bytes.len() {
        match nix::unistd::write(pipe, &bytes[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(ReportError::Write(e.into())),
        }
    }
    Ok(())
}

/// The helper's end of the report pipe, read without blocking as the serve
/// loop's poll(2) finds it readable: bytes are gathered until one whole
/// frame is in, the pipe ends (the shim exited) or the deadline passes.
/// The helper never waits on one shim, so launches overlap.
pub struct ReportReader {
    pipe: OwnedFd,
    buf: Vec<u8>,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl ReportReader {
    /// Takes the read end and makes it `O_NONBLOCK` (the write end keeps
    /// blocking semantics for the shim); the deadline is `now + timeout`.
    pub fn new(pipe: OwnedFd, timeout: Duration, now: Instant) -> Result<ReportReader, Errno> {
        let flags = OFlag::from_bits_truncate(fcntl(pipe.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            pipe.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(ReportReader {
            pipe,
            buf: Vec::new(),
            timeout,
            deadline: deadline::after(now, timeout),
        })
    }

    /// The descriptor to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// When the shim's time to report is up (`None`: never).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Reads what the pipe holds. `None`: no whole report yet, poll again;
    /// otherwise the report, or why there will be none.
    pub fn on_readable(&mut self) -> Option<Result<ShimReport, ReportError>> {
        let mut chunk = [0u8; 4096];
        loop {
            match complete_frame(&self.buf) {
                Ok(Some(frame)) => return Some(decode(frame).map_err(ReportError::Decode)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match nix::unistd::read(self.pipe.as_raw_fd(), &mut chunk) {
                Ok(0) if self.buf.is_empty() => return Some(Err(ReportError::Missing)),
                Ok(0) => return Some(Err(ReportError::Truncated)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return None,
                Err(e) => return Some(Err(ReportError::Read(e))),
            }
        }
    }

    /// [`ReportError::Timeout`] once the deadline has come.
    pub fn on_deadline(&self, now: Instant) -> Option<ReportError> {
        deadline::reached(now, self.deadline).then_some(ReportError::Timeout(self.timeout))
    }
}

fn complete_frame(buf: &[u8]) -> Result<Option<&[u8]>, ReportError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(prefix);
    let len = payload_len(p).map_err(ReportError::Decode)?;
    Ok(buf.get(4..4 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use execgo_runtime_protocol::HelperErrorKind;

    fn launched() -> ShimReport {
        ShimReport::Launched(Launched {
            shim_pid: 10,
            shim_start_ticks: 20,
            pid: Some(11),
            pgid: Some(11),
            started_at: Some("2026-01-01T00:00:00.000Z".into()),
            already_claimed: false,
        })
    }

    fn reader(timeout: Duration) -> (ReportReader, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (ReportReader::new(r, timeout, Instant::now()).unwrap(), w)
    }

    #[test]
    fn round_trip_over_a_pipe() {
        let (mut r, w) = reader(Duration::from_secs(1));
        assert!(r.on_readable().is_none(), "nothing written yet");
        send(&w, &launched()).unwrap();
        // The frame is decoded as soon as it is whole, before EOF.
        assert_eq!(r.on_readable().unwrap().unwrap(), launched());
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let (mut r, w) = reader(Duration::from_secs(1));
        let bytes = encode(&launched()).unwrap();
        // Part of the prefix, then part of the payload, then the rest.
        for part in [&bytes[..2], &bytes[2..9]] {
            nix::unistd::write(&w, part).unwrap();
            assert!(r.on_readable().is_none());
        }
        nix::unistd::write(&w, &bytes[9..]).unwrap();
        assert_eq!(r.on_readable().unwrap().unwrap(), launched());
    }

    /// Reads until the reader has an outcome. A child forked meanwhile by a
    /// parallel test may hold a dropped write end until it execs or exits,
    /// so end-of-file can come a little after the drop.
    fn outcome(r: &mut ReportReader) -> Result<ShimReport, ReportError> {
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(outcome) = r.on_readable() {
                return outcome;
            }
            assert!(Instant::now() < give_up, "no end-of-file");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn eof_and_truncation() {
        let (mut r, w) = reader(Duration::from_secs(1));
        drop(w);
        assert!(matches!(outcome(&mut r), Err(ReportError::Missing)));

        let (mut r, w) = reader(Duration::from_secs(1));
        let bytes = encode(&ShimReport::Failed(HelperError {
            kind: HelperErrorKind::LaunchFailed,
            message: "x".into(),
        }))
        .unwrap();
        nix::unistd::write(&w, &bytes[..bytes.len() - 1]).unwrap();
        assert!(r.on_readable().is_none(), "short, but the shim may go on");
        drop(w);
        assert!(matches!(outcome(&mut r), Err(ReportError::Truncated)));
    }

    #[test]
    fn timeout_and_malformed() {
        let start = Instant::now();
        let (r, _w) = reader(Duration::from_millis(50));
        let d = r.deadline().unwrap();
        assert!(d >= start + Duration::from_millis(50));
        assert!(r.on_deadline(d - Duration::from_millis(1)).is_none());
        assert!(matches!(
            r.on_deadline(d),
            Some(ReportError::Timeout(t)) if t == Duration::from_millis(50)
        ));

        let (mut r, w) = reader(Duration::from_secs(1));
        nix::unistd::write(&w, &[1, 0, 0, 0, 0xff]).unwrap();
        assert!(matches!(r.on_readable(), Some(Err(ReportError::Decode(_)))));
    }

    #[test]
    fn encoded_report_is_one_frame() {
        let bytes = encode(&launched()).unwrap();
        assert!(complete_frame(&bytes).unwrap().is_some());
        assert!(complete_frame(&bytes[..3]).unwrap().is_none());
    }
}
