//! The shim's launch, as a script: [`run`] calls the named steps of
//! [`Steps`] in order, and owns every decision between them (when to report,
//! when a failure becomes a `launch_failed` result, when to stop). The real
//! steps are in [`super::host`]; the tests below drive the script with a
//! recording fake, so its order and failure paths are checked without
//! forking anything.
//!
//! The rules the script keeps: the task never execs before its claim is
//! durable; once the claim is taken and durable, every way out leaves a
//! `result.json` that says why.

use execgo_runtime_protocol::{HelperError, HelperErrorKind, Launched, Outcome, TaskErrorCode};

use super::claim::{Claim, ClaimError, ClaimRecord};
use super::control::ControlError;
use super::isolate::IsolateError;
use super::monitor::{Ended, MonitorError};
use super::report::ShimReport;
use super::resolve::ResolveError;
use super::result::{self, ResultError};
use super::spawn::{SpawnError, Started};
use super::stdio::StdioError;
use super::workspace::WorkspaceError;
use crate::logging;

/// A failed step; the message (with its sources) is what `result.json` or
/// the helper's error reply shows.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("isolating the shim failed")]
    Isolate(#[from] IsolateError),
    #[error("claiming the task failed")]
    Claim(#[from] ClaimError),
    #[error("becoming the child subreaper failed")]
    Subreaper(#[source] nix::errno::Errno),
    #[error("creating the control fifo failed")]
    Control(#[from] ControlError),
    #[error("preparing the workspace failed")]
    Workspace(#[from] WorkspaceError),
    #[error("opening the task's stdio failed")]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("watching for child exits failed")]
    Watch(#[source] nix::errno::Errno),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the shim lost track of the task")]
    Monitor(#[from] MonitorError),
    #[error("writing result.json failed")]
    Result(#[from] ResultError),
    #[error("a step ran out of order: {0}")]
    Order(&'static str),
}

/// What the steps produce for the script to reason about.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ended: Ended,
    pub finished_at: String,
}

/// One method per launch step, in the order [`run`] calls them.
pub trait Steps {
    /// Pid and start ticks of this shim, for the claim and the report.
    fn identity(&self) -> ClaimRecord;
    /// The task's wall time, for the timeout message.
    fn wall_time_ms(&self) -> u64;
    fn now(&self) -> String;

    fn isolate(&mut self) -> Result<(), ShimError>;
    /// Takes the claim and, when it is ours, prepares the result's file.
    fn claim(&mut self) -> Result<Claim, ShimError>;
    /// The directory fsync that makes both durable.
    fn make_claim_durable(&mut self) -> Result<(), ShimError>;
    fn become_subreaper(&mut self) -> Result<(), ShimError>;
    fn open_control(&mut self) -> Result<(), ShimError>;
    fn prepare_workspace(&mut self) -> Result<(), ShimError>;
    fn open_stdio(&mut self) -> Result<(), ShimError>;
    fn resolve_program(&mut self) -> Result<(), ShimError>;
    fn watch_children(&mut self) -> Result<(), ShimError>;
    /// Starts the task; `Ok` once it has exec'd.
    fn spawn(&mut self) -> Result<Started, ShimError>;
    /// Sends the one report to the helper and closes the pipe. Never fails:
    /// a helper that went away does not stop the task.
    fn report(&mut self, report: ShimReport);
    fn monitor(&mut self, started: &Started) -> Result<Finished, ShimError>;
    fn clean_up(&mut self);
    fn write_result(&mut self, outcome: &Outcome) -> Result<(), ShimError>;
}

/// The launch. Returns the shim's exit code.
pub fn run<S: Steps>(s: &mut S) -> i32 {
    let me = s.identity();
    // 1. Isolate first: nothing of the helper (its sockets, its data dir)
    //    may reach the task, and diagnostics need a home (shim.log, created
    //    by the first line that goes there).
    if let Err(e) = s.isolate() {
        s.report(failed(HelperErrorKind::LaunchFailed, &e));
        return 1;
    }
    // 2. Claim before anything visible happens, so a repeated launch never
    //    runs the task twice. Until the claim is durable (step 3), failures
    //    are the helper's to report; after it, they are the task's, in
    //    result.json.
    match s.claim() {
        Ok(Claim::Taken) => {}
        Ok(Claim::Existing(earlier)) => {
            s.report(ShimReport::Launched(Launched {
                shim_pid: earlier.shim_pid,
                shim_start_ticks: earlier.shim_start_ticks,
                pid: None,
                pgid: None,
                started_at: None,
                already_claimed: true,
            }));
            return 0;
        }
        Err(e) => {
            s.report(failed(HelperErrorKind::LaunchFailed, &e));
            return 1;
        }
    }
    // 3. Durable before the task can exec, so that it runs exactly once
    //    across a power loss too. Alone on purpose: overlapping it with the
    //    set-up would take a second thread, which costs more here than it
    //    hides (see `spawn`'s module documentation). A failure is a failed
    //    claim: nothing runs, the helper reports it.
    if let Err(e) = s.make_claim_durable() {
        s.report(failed(HelperErrorKind::LaunchFailed, &e));
        return 1;
    }
    // 4-9. Set-up, in an order where each step only needs earlier ones:
    //    subreaper before any child exists (so orphans of the task come to
    //    us); the control FIFO before the task starts (so a kill is never
    //    lost); workspace and stdio before the program is resolved; every
    //    C string prepared and SIGCHLD blocked before the spawn (so the
    //    child allocates nothing and its exit cannot be missed).
    let prepared = s
        .become_subreaper()
        .and_then(|()| s.open_control())
        .and_then(|()| s.prepare_workspace())
        .and_then(|()| s.open_stdio())
        .and_then(|()| s.resolve_program())
        .and_then(|()| s.watch_children());
    // 10. Spawn and exec the task.
    let started = match prepared.and_then(|()| s.spawn()) {
        Ok(started) => started,
        // 11. It never ran: result.json says why, then the report.
        Err(e) => return fail_launch(s, me, &e),
    };
    // 12. Running: tell the helper, which tells the runtime.
    s.report(ShimReport::Launched(Launched {
        shim_pid: me.shim_pid,
        shim_start_ticks: me.shim_start_ticks,
        pid: Some(started.pid),
        pgid: Some(started.pid),
        started_at: Some(started.started_at.clone()),
        already_claimed: false,
    }));
    // 13-14. Follow it to its end, then leave nothing behind.
    let monitored = s.monitor(&started);
    s.clean_up();
    // 15-16. Classify and record.
    let outcome = match monitored {
        Ok(f) => result::finished(
            me.shim_pid,
            &started,
            &f.ended,
            f.finished_at,
            s.wall_time_ms(),
        ),
        Err(e) => result::lost(me.shim_pid, &started, logging::chain(&e), s.now()),
    };
    match s.write_result(&outcome) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(
                target: logging::TARGET,
                error = %logging::chain(&e),
                "writing result.json failed"
            );
            1
        }
    }
}

fn failed(kind: HelperErrorKind, e: &ShimError) -> ShimReport {
    ShimReport::Failed(HelperError {
        kind,
        message: logging::chain(e),
    })
}

/// Records a launch that failed after the claim, then reports it as
/// launched without a pid (the runtime reads result.json).
fn fail_launch<S: Steps>(s: &mut S, me: ClaimRecord, e: &ShimError) -> i32 {
    let message = logging::chain(e);
    tracing::warn!(
        target: logging::TARGET,
        error = message.as_str(),
        "the task could not be started"
    );
    let outcome = result::not_started(me.shim_pid, TaskErrorCode::LaunchFailed, message, s.now());
    match s.write_result(&outcome) {
        Ok(()) => {
            s.report(ShimReport::Launched(Launched {
                shim_pid: me.shim_pid,
                shim_start_ticks: me.shim_start_ticks,
                pid: None,
                pgid: None,
                started_at: None,
                already_claimed: false,
            }));
            0
        }
        Err(w) => {
            s.report(failed(HelperErrorKind::Internal, &w));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Rusage;
    use execgo_runtime_protocol::{ExitKind, TaskStatus};
    use std::time::Instant;

    /// Records each step; fails the one named in `fail`.
    #[derive(Default)]
    struct Fake {
        calls: Vec<&'static str>,
        fail: Vec<&'static str>,
        existing: bool,
        execd: bool,
        reports: Vec<ShimReport>,
        results: Vec<Outcome>,
    }

    impl Fake {
        fn step(&mut self, name: &'static str) -> Result<(), ShimError> {
            self.calls.push(name);
            if self.fail.contains(&name) {
                Err(ShimError::Order(name))
            } else {
                Ok(())
            }
        }
    }

    impl Steps for Fake {
        fn identity(&self) -> ClaimRecord {
            ClaimRecord {
                shim_pid: 100,
                shim_start_ticks: 200,
            }
        }
        fn wall_time_ms(&self) -> u64 {
            1000
        }
        fn now(&self) -> String {
            "2026-01-01T00:00:09.000Z".into()
        }
        fn isolate(&mut self) -> Result<(), ShimError> {
            self.step("isolate")
        }
        fn claim(&mut self) -> Result<Claim, ShimError> {
            self.step("claim")?;
            Ok(if self.existing {
                Claim::Existing(ClaimRecord {
                    shim_pid: 7,
                    shim_start_ticks: 8,
                })
            } else {
                Claim::Taken
            })
        }
        fn make_claim_durable(&mut self) -> Result<(), ShimError> {
            self.step("sync_claim")
        }
        fn become_subreaper(&mut self) -> Result<(), ShimError> {
            self.step("subreaper")
        }
        fn open_control(&mut self) -> Result<(), ShimError> {
            self.step("control")
        }
        fn prepare_workspace(&mut self) -> Result<(), ShimError> {
            self.step("workspace")
        }
        fn open_stdio(&mut self) -> Result<(), ShimError> {
            self.step("stdio")
        }
        fn resolve_program(&mut self) -> Result<(), ShimError> {
            self.step("resolve")
        }
        fn watch_children(&mut self) -> Result<(), ShimError> {
            self.step("watch")
        }
        fn spawn(&mut self) -> Result<Started, ShimError> {
            self.step("spawn")?;
            self.execd = true;
            Ok(Started {
                pid: 300,
                started_at: "2026-01-01T00:00:00.000Z".into(),
                at: Instant::now(),
            })
        }
        fn report(&mut self, report: ShimReport) {
            self.calls.push("report");
            self.reports.push(report);
        }
        fn monitor(&mut self, started: &Started) -> Result<Finished, ShimError> {
            self.step("monitor")?;
            Ok(Finished {
                ended: Ended {
                    exit: ExitKind::Code(0),
                    usage: Rusage::default(),
                    timed_out: false,
                    kill_requested: false,
                    at: started.at,
                },
                finished_at: "2026-01-01T00:00:01.000Z".into(),
            })
        }
        fn clean_up(&mut self) {
            self.calls.push("clean_up");
        }
        fn write_result(&mut self, outcome: &Outcome) -> Result<(), ShimError> {
            self.step("write_result")?;
            self.results.push(outcome.clone());
            Ok(())
        }
    }

    const HAPPY: [&str; 14] = [
        "isolate",
        "claim",
        "sync_claim",
        "subreaper",
        "control",
        "workspace",
        "stdio",
        "resolve",
        "watch",
        "spawn",
        "report",
        "monitor",
        "clean_up",
        "write_result",
    ];

    #[test]
    fn happy_path_runs_every_step_in_order() {
        let mut f = Fake::default();
        assert_eq!(run(&mut f), 0);
        assert_eq!(f.calls, HAPPY);
        assert!(f.execd);
        match &f.reports[..] {
            [ShimReport::Launched(l)] => {
                assert_eq!(l.pid, Some(300));
                assert_eq!(l.pgid, Some(300));
                assert_eq!(l.shim_pid, 100);
                assert_eq!(l.shim_start_ticks, 200);
                assert!(!l.already_claimed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.results[0].status, TaskStatus::Success);
        assert_eq!(f.results[0].pid, Some(300));
    }

    #[test]
    fn an_existing_claim_stops_everything() {
        let mut f = Fake {
            existing: true,
            ..Default::default()
        };
        assert_eq!(run(&mut f), 0);
        assert_eq!(f.calls, ["isolate", "claim", "report"]);
        match &f.reports[..] {
            [ShimReport::Launched(l)] => {
                assert!(l.already_claimed);
                assert_eq!((l.shim_pid, l.shim_start_ticks), (7, 8));
                assert_eq!((l.pid, l.pgid, l.started_at.as_deref()), (None, None, None));
            }
            other => panic!("{other:?}"),
        }
        assert!(f.results.is_empty());
    }

    #[test]
    fn failures_before_the_claim_is_durable_are_reported_not_recorded() {
        for step in ["isolate", "claim", "sync_claim"] {
            let mut f = Fake {
                fail: vec![step],
                ..Default::default()
            };
            assert_eq!(run(&mut f), 1);
            assert_eq!(f.calls.last(), Some(&"report"));
            assert!(f.results.is_empty(), "{step}");
            assert!(!f.execd, "{step}");
            assert!(!f.calls.contains(&"spawn"), "{step}");
            assert!(matches!(
                &f.reports[..],
                [ShimReport::Failed(HelperError {
                    kind: HelperErrorKind::LaunchFailed,
                    ..
                })]
            ));
        }
    }

    #[test]
    fn failures_after_the_claim_become_launch_failed_results() {
        for step in [
            "subreaper",
            "control",
            "workspace",
            "stdio",
            "resolve",
            "watch",
            "spawn",
        ] {
            let mut f = Fake {
                fail: vec![step],
                ..Default::default()
            };
            assert_eq!(run(&mut f), 0, "{step}");
            let at = HAPPY.iter().position(|s| *s == step).unwrap();
            let mut want: Vec<&str> = HAPPY[..=at].to_vec();
            want.extend(["write_result", "report"]);
            assert_eq!(f.calls, want, "{step}");
            let o = &f.results[0];
            assert_eq!(o.status, TaskStatus::Failed);
            assert_eq!(o.error.as_ref().unwrap().code, TaskErrorCode::LaunchFailed);
            assert_eq!(o.started_at, None);
            assert_eq!(o.pid, None);
            assert_eq!(o.shim_pid, Some(100));
            match &f.reports[..] {
                [ShimReport::Launched(l)] => {
                    assert_eq!(l.pid, None);
                    assert!(!l.already_claimed);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_unwritable_result_is_reported_as_internal() {
        let mut f = Fake {
            fail: vec!["resolve", "write_result"],
            ..Default::default()
        };
        assert_eq!(run(&mut f), 1);
        assert!(matches!(
            &f.reports[..],
            [ShimReport::Failed(HelperError {
                kind: HelperErrorKind::Internal,
                ..
            })]
        ));
        let mut f = Fake {
            fail: vec!["write_result"],
            ..Default::default()
        };
        assert_eq!(run(&mut f), 1, "a task that ran but left no result");
    }

    #[test]
    fn a_lost_task_is_recorded_as_internal() {
        let mut f = Fake {
            fail: vec!["monitor"],
            ..Default::default()
        };
        assert_eq!(run(&mut f), 0);
        assert_eq!(
            f.calls[f.calls.len() - 3..],
            ["monitor", "clean_up", "write_result"]
        );
        let o = &f.results[0];
        assert_eq!(o.error.as_ref().unwrap().code, TaskErrorCode::Internal);
        assert_eq!(o.pid, Some(300));
        assert!(o.started_at.is_some());
    }
}
