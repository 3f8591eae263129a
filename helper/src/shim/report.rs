//! The shim's one message to the helper, over a close-on-exec pipe: either
//! the launch went as far as it could ([`Launched`], which also covers an
//! exec failure already recorded in `result.json`, and an earlier claim), or
//! it failed before the task was claimed. One protocol frame, then EOF.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{
    decode, encode, frame::payload_len, FrameError, HelperError, Launched,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
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

/// Reads the report (helper side), giving up after `timeout`.
pub fn receive(pipe: OwnedFd, timeout: Duration) -> Result<ShimReport, ReportError> {
    let until = deadline::after(Instant::now(), timeout);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = complete_frame(&buf)? {
            return decode(frame).map_err(ReportError::Decode);
        }
        let ms = deadline::poll_timeout_ms(Instant::now(), until);
        if ms == 0 {
            return Err(ReportError::Timeout(timeout));
        }
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE),
        ) {
            Ok(0) => return Err(ReportError::Timeout(timeout)),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ReportError::Read(e)),
        }
        match nix::unistd::read(pipe.as_raw_fd(), &mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ReportError::Missing),
            Ok(0) => return Err(ReportError::Truncated),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(e) => return Err(ReportError::Read(e)),
        }
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
    use nix::fcntl::OFlag;

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

    #[test]
    fn round_trip_over_a_pipe() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        send(&w, &launched()).unwrap();
        drop(w);
        assert_eq!(receive(r, Duration::from_secs(1)).unwrap(), launched());
    }

    #[test]
    fn eof_timeout_and_truncation() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        drop(w);
        assert!(matches!(
            receive(r, Duration::from_secs(1)),
            Err(ReportError::Missing)
        ));

        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let t = Instant::now();
        assert!(matches!(
            receive(r, Duration::from_millis(50)),
            Err(ReportError::Timeout(_))
        ));
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(w);

        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let bytes = encode(&ShimReport::Failed(HelperError {
            kind: HelperErrorKind::LaunchFailed,
            message: "x".into(),
        }))
        .unwrap();
        nix::unistd::write(&w, &bytes[..bytes.len() - 1]).unwrap();
        drop(w);
        assert!(matches!(
            receive(r, Duration::from_secs(1)),
            Err(ReportError::Truncated)
        ));
    }

    #[test]
    fn encoded_report_is_one_frame() {
        let bytes = encode(&launched()).unwrap();
        assert!(complete_frame(&bytes).unwrap().is_some());
        assert!(complete_frame(&bytes[..3]).unwrap().is_none());
    }
}
