//! A launch whose shim has not reported yet: the shim is forked and on its
//! own, the helper holds the read end of its report pipe (in the serve
//! loop's poll set) and the task id for the log. It becomes a reply once
//! the report is in, the pipe ends, or [`launch::REPORT_TIMEOUT`] passes.
//!
//! Dropping one (its connection closed) only closes the pipe: the shim
//! carries on, and its claim and `result.json` tell the runtime.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use execgo_runtime_protocol::Response;

use crate::launch::{self, LaunchError};
use crate::shim::report::ReportReader;

pub struct PendingLaunch {
    task_id: String,
    report: ReportReader,
}

impl PendingLaunch {
    pub fn new(task_id: String, report: ReportReader) -> PendingLaunch {
        PendingLaunch { task_id, report }
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The report pipe, to poll for `POLLIN`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.report.fd()
    }

    /// When the shim's time to report is up.
    pub fn deadline(&self) -> Option<Instant> {
        self.report.deadline()
    }

    /// Moves the launch on after a poll: reads the pipe when `readable`,
    /// then checks the deadline. `Some` is the launch's reply (logged as
    /// [`launch::answer`] logs it); `None`, keep polling.
    pub fn advance(&mut self, readable: bool, now: Instant) -> Option<Response> {
        let outcome = readable.then(|| self.report.on_readable()).flatten();
        let outcome = outcome.or_else(|| self.report.on_deadline(now).map(Err))?;
        Some(launch::answer(
            &self.task_id,
            outcome.map_err(LaunchError::Report),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::report::{self, ShimReport};
    use execgo_runtime_protocol::{HelperErrorKind, Launched};
    use nix::fcntl::OFlag;
    use std::time::Duration;

    #[test]
    fn becomes_the_launch_reply() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let now = Instant::now();
        let mut p = PendingLaunch::new(
            "t1".into(),
            ReportReader::new(r, Duration::from_secs(5), now).unwrap(),
        );
        assert_eq!(p.task_id(), "t1");
        assert!(p.advance(true, now).is_none(), "nothing in the pipe yet");
        let l = Launched {
            shim_pid: 3,
            shim_start_ticks: 4,
            pid: Some(5),
            pgid: Some(5),
            started_at: None,
            already_claimed: false,
        };
        report::send(&w, &ShimReport::Launched(l.clone())).unwrap();
        // Not readable per poll: the deadline alone is checked.
        assert!(p.advance(false, now).is_none());
        assert_eq!(p.advance(true, now), Some(Response::Launched(l)));
    }

    #[test]
    fn a_silent_shim_times_out_as_internal() {
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let now = Instant::now();
        let mut p = PendingLaunch::new(
            "t2".into(),
            ReportReader::new(r, Duration::from_secs(5), now).unwrap(),
        );
        assert!(p.advance(false, now + Duration::from_secs(4)).is_none());
        match p.advance(false, now + Duration::from_secs(5)) {
            Some(Response::Error(e)) => {
                assert_eq!(e.kind, HelperErrorKind::Internal);
                assert!(e.message.contains("did not report within"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
