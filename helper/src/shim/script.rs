//! The shim's launch, as a script: [`run`] calls the named steps of
//! [`Steps`] in order, and owns every decision between them (when a
//! failure becomes a `launch_failed` result, when to stop). The real steps
//! are in [`super::host`]; the tests below drive the script with a
//! recording fake, so its order and failure paths are checked without
//! forking anything.
//!
//! The shim tells the runtime everything through the task directory: the
//! claim (`shim.claim`), the start (`started`), the end (`result.json`).
//! The rules the script keeps: the task never execs before its claim is
//! durable; `started` exists only for a task that exec'd; once the claim
//! and the result's temp file exist, every way out leaves a `result.json`
//! that says why.

use execgo_runtime_protocol::{Outcome, TaskErrorCode};

use super::claim::{Claim, ClaimError, ClaimRecord};
use super::control::ControlError;
use super::isolate::IsolateError;
use super::monitor::{Ended, MonitorError};
use super::resolve::ResolveError;
use super::result::{self, ResultError};
use super::spawn::{SpawnError, Started};
use super::stdio::StdioError;
use super::workspace::WorkspaceError;
use crate::logging;

/// A failed step; the message (with its sources) is what `result.json` or
/// `shim.log` shows.
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
    #[error("duplicating the working directory's descriptor failed")]
    Workdir(#[source] std::io::Error),
    #[error("opening the task's stdio failed")]
    Stdio(#[from] StdioError),
    #[error("creating the task's cgroups failed")]
    Cgroup(#[source] crate::cgroup::CgroupError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("watching for child exits failed")]
    Watch(#[source] nix::errno::Errno),
    #[error("clearing the capability sets the task would inherit failed")]
    Capabilities(#[source] caps::errors::CapsError),
    #[error("emptying the capability bounding set the task would inherit failed")]
    Bounding(#[source] nix::errno::Errno),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("creating the started record failed")]
    Started(#[source] nix::errno::Errno),
    #[error("the shim lost track of the task")]
    Monitor(#[from] MonitorError),
    #[error("writing result.json failed")]
    Result(#[from] ResultError),
    #[error("a step ran out of order: {0}")]
    Order(&'static str),
    #[error("compiling the sandbox's seccomp filters failed")]
    Seccomp(#[source] crate::seccomp::SeccompError),
    #[error("joining the main container's namespaces failed (sidecar mode)")]
    JoinTarget(#[source] nix::errno::Errno),
}

impl ShimError {
    /// The error code of a launch that failed with this.
    fn code(&self) -> TaskErrorCode {
        match self {
            ShimError::Spawn(e) if e.is_sandbox_setup() => TaskErrorCode::SandboxSetupFailed,
            ShimError::Seccomp(_) | ShimError::JoinTarget(_) => TaskErrorCode::SandboxSetupFailed,
            _ => TaskErrorCode::LaunchFailed,
        }
    }
}

/// What the steps produce for the script to reason about.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ended: Ended,
    pub finished_at: String,
}

/// Exit codes of the shim. Nobody waits for it (it is nobody's child); they
/// are for whoever traces it, and the tests.
pub mod exit {
    /// The task ran and `result.json` says how it ended, or it could not be
    /// started and `result.json` says why, or an earlier shim claimed it.
    pub const DONE: i32 = 0;
    /// No `result.json` could be written, or the shim failed before it
    /// claimed the task; `shim.log` says why.
    pub const FAILED: i32 = 1;
}

/// One method per launch step, in the order [`run`] calls them.
pub trait Steps {
    /// Pid and start ticks of this shim, for the claim.
    fn identity(&self) -> ClaimRecord;
    /// The task's wall time, for the timeout message.
    fn wall_time_ms(&self) -> u64;
    fn now(&self) -> String;

    fn isolate(&mut self) -> Result<(), ShimError>;
    fn claim(&mut self) -> Result<Claim, ShimError>;
    /// Creates the result's temp file, which every later way out writes.
    fn prepare_result(&mut self) -> Result<(), ShimError>;
    /// The directory fsync that makes the claim and the temp file durable.
    fn make_claim_durable(&mut self) -> Result<(), ShimError>;
    fn become_subreaper(&mut self) -> Result<(), ShimError>;
    fn open_control(&mut self) -> Result<(), ShimError>;
    fn prepare_workspace(&mut self) -> Result<(), ShimError>;
    fn open_stdio(&mut self) -> Result<(), ShimError>;
    /// Creates the task's own cgroups, where the host has them; the task
    /// child joins them before it execs.
    fn create_cgroups(&mut self) -> Result<(), ShimError>;
    /// Sidecar mode: joins the main container's namespaces, after every
    /// file of the task is open; nothing otherwise.
    fn join_target(&mut self) -> Result<(), ShimError>;
    fn resolve_program(&mut self) -> Result<(), ShimError>;
    fn watch_children(&mut self) -> Result<(), ShimError>;
    /// Empties the capability sets the task child inherits (bounding,
    /// ambient, inheritable); the shim keeps its own.
    fn narrow_capabilities(&mut self) -> Result<(), ShimError>;
    /// Starts the task; `Ok` once it has exec'd.
    fn spawn(&mut self) -> Result<Started, ShimError>;
    /// Creates `started`, telling the runtime the task runs.
    fn record_started(&mut self, started: &Started) -> Result<(), ShimError>;
    fn monitor(&mut self, started: &Started) -> Result<Finished, ShimError>;
    /// Kills whatever of the task is left (its cgroups, else its group),
    /// reaps it, removes the cgroups; returns their memory peak, if
    /// measured. Also after a failed launch.
    fn clean_up(&mut self) -> Option<u64>;
    fn write_result(&mut self, outcome: &Outcome) -> Result<(), ShimError>;
    /// Reaps a pid namespace's init that ended the monitor by its report,
    /// and removes the task's cgroups, emptied by [`Steps::clean_up`]:
    /// after the result, which waits for neither.
    fn remove_cgroups(&mut self);
    /// Gives the task's leased uid back once nothing of the task can run
    /// any more: every process of the uid killed (where the cgroups did
    /// not already), what the task left handed to the runtime's user, the
    /// lease removed. A failure keeps the lease (logged). Nothing without
    /// a lease.
    fn give_back_identity(&mut self);
    /// Removes a lease under which nothing ran (the task was claimed by
    /// an earlier shim, or this one stops before it could run anything).
    fn drop_lease(&mut self);
    /// The uid the task runs as, for the result.
    fn task_uid(&self) -> Option<u32>;
    /// Whether what the main process leaves running is kept after its
    /// exit (`LaunchSpec::keep_descendants`).
    fn keeps_descendants(&self) -> bool;
    /// The cgroups' memory peak so far, if measured.
    fn memory_peak(&self) -> Option<u64>;
    /// After the result of a task that keeps its descendants: watches them
    /// until none is left, or stops them (at once with `kill_now`, else on
    /// a kill byte) and waits until none is left.
    fn keep_leftovers(&mut self, kill_now: bool);
}

/// The launch. Returns the shim's exit code (see [`exit`]).
pub fn run<S: Steps>(s: &mut S) -> i32 {
    let me = s.identity();
    // 1. Isolate first: nothing of the helper (its sockets, its data dir)
    //    may reach the task, and diagnostics need a home (shim.log, created
    //    by the first line that goes there).
    if let Err(e) = s.isolate() {
        s.drop_lease();
        return unclaimed(&e);
    }
    // 2. Claim before anything visible happens, so a repeated launch never
    //    runs the task twice. Until the claim exists, a failure leaves the
    //    task directory as it was: the runtime sees this shim gone without
    //    a claim.
    match s.claim() {
        Ok(Claim::Taken) => {}
        // An earlier shim has it: nothing else is touched.
        Ok(Claim::Existing(_)) => {
            s.drop_lease();
            return exit::DONE;
        }
        Err(e) => {
            s.drop_lease();
            return unclaimed(&e);
        }
    }
    // 3. The temp file every later way out writes its result into. Without
    //    it none can be written: the runtime finds the claim of a shim
    //    that is gone, with no result.
    if let Err(e) = s.prepare_result() {
        tracing::error!(
            target: logging::TARGET,
            error = %logging::chain(&e),
            "preparing result.json failed; the task will not run"
        );
        s.drop_lease();
        return exit::FAILED;
    }
    // 4. Durable before the task can exec, so that it runs exactly once
    //    across a power loss too. Then the set-up, in an order where each
    //    step only needs earlier ones: subreaper before any child exists
    //    (so orphans of the task come to us); the control FIFO before the
    //    task starts (so a kill is never lost); workspace and stdio before
    //    the program is resolved; every C string prepared and SIGCHLD
    //    blocked before the spawn (so the child allocates nothing and its
    //    exit cannot be missed); last, the capability sets the task would
    //    inherit emptied.
    let prepared = s
        .make_claim_durable()
        .and_then(|()| s.become_subreaper())
        .and_then(|()| s.open_control())
        .and_then(|()| s.prepare_workspace())
        .and_then(|()| s.open_stdio())
        .and_then(|()| s.create_cgroups())
        .and_then(|()| s.join_target())
        .and_then(|()| s.resolve_program())
        .and_then(|()| s.watch_children())
        .and_then(|()| s.narrow_capabilities());
    // 5. Spawn and exec the task.
    let started = match prepared.and_then(|()| s.spawn()) {
        Ok(started) => started,
        // It never ran: result.json says why, and there is no `started`.
        Err(e) => return fail_launch(s, me, &e),
    };
    // 6. Running: the runtime learns it from `started`. Without it, the
    //    task runs all the same (it cannot be un-run); result.json will
    //    carry its pid and start.
    if let Err(e) = s.record_started(&started) {
        tracing::warn!(
            target: logging::TARGET,
            error = %logging::chain(&e),
            "recording the start failed; the task runs on"
        );
    }
    // 7. Follow it to its end.
    let monitored = s.monitor(&started);
    // 7b. A task that keeps its descendants (OpenSandbox's bootstrap
    //     pattern: `sh -c 'daemon &'`) ends with its main process: the
    //     result goes out now, and what it left running is kept, this shim
    //     watching it, until a kill (a delete) or until none is left. Only
    //     then is everything killed, reaped and the cgroups removed.
    if s.keeps_descendants() {
        if let Ok(f) = &monitored {
            let kill_now = f.ended.kill_requested || f.ended.timed_out;
            let memory_peak = s.memory_peak();
            let outcome = classify(s, me, &started, monitored, memory_peak);
            let code = record(s, &outcome);
            s.keep_leftovers(kill_now);
            s.clean_up();
            s.give_back_identity();
            s.remove_cgroups();
            return code;
        }
    }
    // 8. Leave nothing behind, and give the uid back before the result
    //    says the task is over: a terminal task holds nothing.
    let memory_peak = s.clean_up();
    s.give_back_identity();
    // 9-10. Classify and record.
    let outcome = classify(s, me, &started, monitored, memory_peak);
    let code = record(s, &outcome);
    s.remove_cgroups();
    code
}

/// The outcome of a task that ran.
fn classify<S: Steps>(
    s: &S,
    me: ClaimRecord,
    started: &Started,
    monitored: Result<Finished, ShimError>,
    memory_peak: Option<u64>,
) -> Outcome {
    let mut outcome = match monitored {
        Ok(f) => result::finished(
            me.shim_pid,
            started,
            &f.ended,
            f.finished_at,
            s.wall_time_ms(),
        ),
        Err(e) => result::lost(me.shim_pid, started, logging::chain(&e), s.now()),
    };
    if let Some(usage) = outcome.usage.as_mut() {
        usage.memory_peak_bytes = memory_peak;
    }
    outcome
}

/// A failure before the task is claimed: logged, nothing else.
fn unclaimed(e: &ShimError) -> i32 {
    tracing::error!(
        target: logging::TARGET,
        error = %logging::chain(e),
        "the shim failed before claiming the task"
    );
    exit::FAILED
}

/// Records a launch that failed after the claim.
fn fail_launch<S: Steps>(s: &mut S, me: ClaimRecord, e: &ShimError) -> i32 {
    let message = logging::chain(e);
    tracing::warn!(
        target: logging::TARGET,
        error = message.as_str(),
        "the task could not be started"
    );
    // Nothing of it may stay behind: cgroups already made go.
    s.clean_up();
    s.give_back_identity();
    let outcome = result::not_started(me.shim_pid, e.code(), message, s.now());
    let code = record(s, &outcome);
    s.remove_cgroups();
    code
}

fn record<S: Steps>(s: &mut S, outcome: &Outcome) -> i32 {
    let outcome = Outcome {
        task_uid: s.task_uid(),
        ..outcome.clone()
    };
    match s.write_result(&outcome) {
        Ok(()) => exit::DONE,
        Err(e) => {
            tracing::error!(
                target: logging::TARGET,
                error = %logging::chain(&e),
                "writing result.json failed"
            );
            exit::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Rusage;
    use execgo_runtime_protocol::{ExitKind, TaskStatus};
    use std::time::Instant;

    /// Records each step; fails the ones named in `fail`.
    #[derive(Default)]
    struct Fake {
        calls: Vec<&'static str>,
        fail: Vec<&'static str>,
        existing: bool,
        execd: bool,
        /// The pids `record_started` was given.
        started: Vec<i32>,
        results: Vec<Outcome>,
        /// `keeps_descendants`, and what `monitor` reports as asked.
        keep: bool,
        killed: bool,
        /// The `kill_now` each `keep_leftovers` was given.
        kept: Vec<bool>,
    }

    impl Fake {
        fn failing(steps: &[&'static str]) -> Fake {
            Fake {
                fail: steps.to_vec(),
                ..Default::default()
            }
        }

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
        fn prepare_result(&mut self) -> Result<(), ShimError> {
            self.step("prepare_result")
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
        fn narrow_capabilities(&mut self) -> Result<(), ShimError> {
            self.step("capabilities")
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
        fn record_started(&mut self, started: &Started) -> Result<(), ShimError> {
            assert!(self.execd, "started recorded before the exec");
            self.step("record_started")?;
            self.started.push(started.pid);
            Ok(())
        }
        fn monitor(&mut self, started: &Started) -> Result<Finished, ShimError> {
            self.step("monitor")?;
            Ok(Finished {
                ended: Ended {
                    exit: ExitKind::Code(0),
                    usage: Rusage::default(),
                    timed_out: false,
                    kill_requested: self.killed,
                    oom_killed: false,
                    at: started.at,
                    init: None,
                },
                finished_at: "2026-01-01T00:00:01.000Z".into(),
            })
        }
        fn create_cgroups(&mut self) -> Result<(), ShimError> {
            self.step("cgroups")
        }
        fn join_target(&mut self) -> Result<(), ShimError> {
            self.step("join_target")
        }
        fn clean_up(&mut self) -> Option<u64> {
            self.calls.push("clean_up");
            Some(4096)
        }
        fn write_result(&mut self, outcome: &Outcome) -> Result<(), ShimError> {
            self.step("write_result")?;
            self.results.push(outcome.clone());
            Ok(())
        }
        fn remove_cgroups(&mut self) {
            self.calls.push("remove_cgroups");
        }
        fn give_back_identity(&mut self) {
            self.calls.push("give_back");
        }
        fn drop_lease(&mut self) {
            self.calls.push("drop_lease");
        }
        fn task_uid(&self) -> Option<u32> {
            Some(4242)
        }
        fn keeps_descendants(&self) -> bool {
            self.keep
        }
        fn memory_peak(&self) -> Option<u64> {
            Some(2048)
        }
        fn keep_leftovers(&mut self, kill_now: bool) {
            self.calls.push("keep_leftovers");
            self.kept.push(kill_now);
        }
    }

    const HAPPY: [&str; 20] = [
        "isolate",
        "claim",
        "prepare_result",
        "sync_claim",
        "subreaper",
        "control",
        "workspace",
        "stdio",
        "cgroups",
        "join_target",
        "resolve",
        "watch",
        "capabilities",
        "spawn",
        "record_started",
        "monitor",
        "clean_up",
        "give_back",
        "write_result",
        "remove_cgroups",
    ];

    #[test]
    fn a_task_keeping_its_descendants_is_recorded_before_they_are_killed() {
        let mut f = Fake {
            keep: true,
            ..Default::default()
        };
        assert_eq!(run(&mut f), exit::DONE);
        let tail = &f.calls[f.calls.len() - 6..];
        assert_eq!(
            tail,
            [
                "monitor",
                "write_result",
                "keep_leftovers",
                "clean_up",
                "give_back",
                "remove_cgroups"
            ]
        );
        assert_eq!(f.kept, [false], "ended by itself: nothing is killed yet");
        assert_eq!(f.results[0].status, TaskStatus::Success);
        let usage = f.results[0].usage.as_ref().unwrap();
        assert_eq!(usage.memory_peak_bytes, Some(2048));

        // Killed while running: what it left dies at once.
        let mut f = Fake {
            keep: true,
            killed: true,
            ..Default::default()
        };
        run(&mut f);
        assert_eq!(f.kept, [true]);

        // A monitor failure takes the ordinary path: everything dies first.
        let mut f = Fake {
            keep: true,
            fail: vec!["monitor"],
            ..Default::default()
        };
        run(&mut f);
        assert!(f.kept.is_empty());
        let tail = &f.calls[f.calls.len() - 5..];
        assert_eq!(
            tail,
            [
                "monitor",
                "clean_up",
                "give_back",
                "write_result",
                "remove_cgroups"
            ]
        );
    }

    #[test]
    fn happy_path_runs_every_step_in_order() {
        let mut f = Fake::default();
        assert_eq!(run(&mut f), exit::DONE);
        assert_eq!(f.calls, HAPPY);
        assert!(f.execd);
        assert_eq!(f.started, [300], "started names the task's process");
        assert_eq!(f.results[0].status, TaskStatus::Success);
        assert_eq!(
            f.results[0].task_uid,
            Some(4242),
            "the result names the uid"
        );
        assert_eq!(f.results[0].pid, Some(300));
        assert_eq!(f.results[0].shim_pid, Some(100));
        let usage = f.results[0].usage.as_ref().unwrap();
        assert_eq!(usage.memory_peak_bytes, Some(4096), "the cgroups' peak");
    }

    #[test]
    fn an_existing_claim_stops_everything() {
        let mut f = Fake {
            existing: true,
            ..Default::default()
        };
        assert_eq!(run(&mut f), exit::DONE);
        assert_eq!(f.calls, ["isolate", "claim", "drop_lease"]);
        assert!(f.started.is_empty());
        assert!(f.results.is_empty());
    }

    #[test]
    fn failures_before_the_claim_touch_nothing() {
        for step in ["isolate", "claim"] {
            let mut f = Fake::failing(&[step]);
            assert_eq!(run(&mut f), exit::FAILED, "{step}");
            assert_eq!(f.calls[f.calls.len() - 2..], [step, "drop_lease"]);
            assert!(f.results.is_empty(), "{step}");
            assert!(f.started.is_empty(), "{step}");
            assert!(!f.execd, "{step}");
        }
    }

    #[test]
    fn without_a_result_file_the_task_does_not_run() {
        let mut f = Fake::failing(&["prepare_result"]);
        assert_eq!(run(&mut f), exit::FAILED);
        assert_eq!(
            f.calls,
            ["isolate", "claim", "prepare_result", "drop_lease"]
        );
        assert!(f.results.is_empty());
        assert!(!f.execd);
    }

    #[test]
    fn failures_after_the_claim_become_launch_failed_results_without_a_start() {
        for step in [
            "sync_claim",
            "subreaper",
            "control",
            "workspace",
            "stdio",
            "cgroups",
            "join_target",
            "resolve",
            "watch",
            "capabilities",
            "spawn",
        ] {
            let mut f = Fake::failing(&[step]);
            assert_eq!(run(&mut f), exit::DONE, "{step}");
            let at = HAPPY.iter().position(|s| *s == step).unwrap();
            let mut want: Vec<&str> = HAPPY[..=at].to_vec();
            want.extend(["clean_up", "give_back", "write_result", "remove_cgroups"]);
            assert_eq!(f.calls, want, "{step}");
            assert!(f.started.is_empty(), "no started after {step} failed");
            assert!(!f.calls.contains(&"record_started"), "{step}");
            let o = &f.results[0];
            assert_eq!(o.status, TaskStatus::Failed);
            assert_eq!(o.error.as_ref().unwrap().code, TaskErrorCode::LaunchFailed);
            assert_eq!(o.started_at, None);
            assert_eq!(o.pid, None);
            assert_eq!(o.shim_pid, Some(100));
        }
    }

    #[test]
    fn a_start_that_cannot_be_recorded_still_runs_to_a_result() {
        let mut f = Fake::failing(&["record_started"]);
        assert_eq!(run(&mut f), exit::DONE);
        assert_eq!(f.calls, HAPPY);
        assert_eq!(f.results[0].status, TaskStatus::Success);
        assert_eq!(f.results[0].pid, Some(300));
    }

    #[test]
    fn an_unwritable_result_fails_the_shim() {
        let mut f = Fake::failing(&["resolve", "write_result"]);
        assert_eq!(run(&mut f), exit::FAILED, "a launch failure left no result");
        let mut f = Fake::failing(&["write_result"]);
        assert_eq!(
            run(&mut f),
            exit::FAILED,
            "a task that ran but left no result"
        );
        assert_eq!(f.started, [300]);
    }

    #[test]
    fn a_lost_task_is_recorded_as_internal() {
        let mut f = Fake::failing(&["monitor"]);
        assert_eq!(run(&mut f), exit::DONE);
        assert_eq!(
            f.calls[f.calls.len() - 5..],
            [
                "monitor",
                "clean_up",
                "give_back",
                "write_result",
                "remove_cgroups"
            ]
        );
        let o = &f.results[0];
        assert_eq!(o.error.as_ref().unwrap().code, TaskErrorCode::Internal);
        assert_eq!(o.pid, Some(300));
        assert!(o.started_at.is_some());
    }
}
