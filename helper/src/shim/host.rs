//! The real [`Steps`]: each method does one step on the host through the
//! step's module and keeps what later steps need (descriptors, the exec
//! plan). The order and the decisions are [`super::script`]'s.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use execgo_runtime_protocol::{LaunchProfile, Outcome, SandboxSpec};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{Gid, Uid};

use super::claim::{self, Claim, ClaimRecord};
use super::monitor::{self, Monitor};
use super::relay::Relay;
use super::script::{Finished, ShimError, Steps};
use super::spawn::{self, Plan, SandboxPlan, Started};
use super::stdio::{self, TaskStdio};
use super::{control, isolate, resolve, result, workspace, ShimContext};
use crate::cgroup::task::{Need, TaskCgroups, TaskLimits};
use crate::cgroup::HostFs;
use crate::{logging, sys, uid_lease};
use execgo_runtime_protocol::taskdir::{self, now_rfc3339, StartedRecord, STARTED};

pub struct Host {
    ctx: ShimContext,
    me: ClaimRecord,
    control: Option<File>,
    workspace: Option<OwnedFd>,
    stdio: Option<TaskStdio>,
    /// The task's output, on its way into the logs.
    relay: Relay,
    plan: Option<Plan>,
    cgroups: Option<TaskCgroups>,
    /// The join file of each task cgroup, for the task child to join.
    cgroup_join: Vec<OwnedFd>,
    /// Read end of the pid namespace init's report pipe.
    report: Option<OwnedFd>,
    /// That init, once it reported: exiting, not yet reaped.
    init: Option<nix::unistd::Pid>,
    sigchld: Option<SignalFd>,
    /// From the claim until the result is written.
    result: Option<result::ResultFile>,
    /// The task's main process, once spawned (its group's id).
    main_pid: Option<nix::unistd::Pid>,
    /// `/proc/thread-self` of the host's procfs, opened before a sidecar
    /// task's shim joins the main container's mount namespace.
    thread_dir: Option<OwnedFd>,
    /// A sandbox's claim is made durable during the spawn, while the
    /// sandbox child sets up (see [`spawn::spawn`]).
    claim_durable_at_spawn: bool,
    /// The task's cgroups were found empty after the clean-up: no process
    /// of the task is left anywhere.
    emptied: bool,
}

impl Host {
    pub fn new(ctx: ShimContext) -> Host {
        Host {
            me: ClaimRecord {
                shim_pid: nix::unistd::getpid().as_raw(),
                shim_start_ticks: taskdir::own_start_ticks().unwrap_or(0),
            },
            ctx,
            control: None,
            workspace: None,
            stdio: None,
            relay: Relay::default(),
            plan: None,
            cgroups: None,
            cgroup_join: Vec::new(),
            report: None,
            init: None,
            sigchld: None,
            claim_durable_at_spawn: false,
            emptied: false,
            result: None,
            main_pid: None,
            thread_dir: None,
        }
    }

    /// The sandbox's namespaces, for a `linux_sandbox` task.
    fn sandbox(&self) -> Option<&SandboxSpec> {
        match &self.ctx.launch.profile {
            LaunchProfile::Process => None,
            LaunchProfile::LinuxSandbox(spec) => Some(spec),
        }
    }

    /// The runtime's uid/gid when files we create must be handed to it:
    /// we are root and it is not.
    fn hand_over_to(&self) -> Option<(Uid, Gid)> {
        (self.ctx.privileged && self.ctx.peer_uid != 0).then(|| self.runtime_owner())
    }

    /// Who gets what the task leaves: see [`super::runtime_owner`].
    fn runtime_owner(&self) -> (Uid, Gid) {
        super::runtime_owner(self.ctx.privileged, self.ctx.peer_uid, self.ctx.peer_gid)
    }

    /// Kills and reaps whatever of the task is left; the cgroups' memory
    /// peak, if measured.
    fn kill_leftovers(&mut self) -> Option<u64> {
        let Some(cg) = self.cgroups.as_ref() else {
            monitor::reap_leftovers();
            return None;
        };
        if self.init.is_some() {
            // The init killed and reaped everything else of its namespace
            // before it reported, and nothing leaves a pid namespace.
            self.emptied = true;
            return cg.memory_peak(&HostFs);
        }
        // Whatever of the task outlived its main process dies now, wherever
        // it moved its group or session; we reap what comes to us.
        self.emptied = cg.kill_all(&HostFs, monitor::reap_leftovers);
        if !self.emptied {
            tracing::warn!(
                target: logging::TARGET,
                pids = ?cg.pids(&HostFs),
                "processes of the task survived the cgroup kill"
            );
        }
        cg.memory_peak(&HostFs)
    }
}

/// How long the relay waits, after the task's clean-up, for output from a
/// writer still there (one that escaped a task without cgroups), counted
/// from its last byte.
const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

fn missing(step: &'static str) -> ShimError {
    ShimError::Order(step)
}

impl Steps for Host {
    fn identity(&self) -> ClaimRecord {
        self.me
    }

    fn wall_time_ms(&self) -> u64 {
        self.ctx.launch.limits.wall_time_ms
    }

    fn now(&self) -> String {
        now_rfc3339()
    }

    fn isolate(&mut self) -> Result<(), ShimError> {
        let mut keep = vec![self.ctx.task_dir.as_raw_fd()];
        keep.extend(self.ctx.rootfs.as_ref().map(AsRawFd::as_raw_fd));
        keep.extend(self.ctx.sidecar.as_ref().map(|t| t.pidfd.as_raw_fd()));
        keep.extend(self.ctx.workdir.as_ref().map(AsRawFd::as_raw_fd));
        keep.extend(self.ctx.netns.as_ref().map(AsRawFd::as_raw_fd));
        keep.extend(self.ctx.lease.as_ref().map(|l| l.dir().as_raw_fd()));
        // The journal socket, in journald mode: the shim logs there too.
        keep.extend(logging::journal_fd());
        let isolated = isolate::isolate(&keep);
        // shim.log gets a task directory descriptor of its own, even when
        // isolation failed, so the failure is told there.
        if let Ok(log_dir) = self.ctx.task_dir.try_clone() {
            logging::enter_shim(&self.ctx.launch.task_id, log_dir);
        }
        isolated?;
        logging::shim_info!(shim_pid = self.me.shim_pid, "shim started");
        Ok(())
    }

    fn claim(&mut self) -> Result<Claim, ShimError> {
        let c = claim::take(self.ctx.task_dir.as_fd(), self.me)?;
        if let Claim::Existing(earlier) = c {
            logging::shim_info!(
                claimed_by = earlier.shim_pid,
                "task already claimed; not running it again"
            );
        }
        Ok(c)
    }

    fn prepare_result(&mut self) -> Result<(), ShimError> {
        // Before the directory fsync that makes the claim durable (the next
        // step): that fsync covers this entry too, so at the end the result
        // needs only its own fdatasync.
        // With room for a result that leaves the log heads out, should the
        // task fill the file system.
        let template_len =
            serde_json::to_vec(&self.ctx.launch.result_template).map_or(0, |t| t.len());
        self.result = Some(result::create(
            self.ctx.task_dir.as_fd(),
            result::reserve_for(template_len),
        )?);
        Ok(())
    }

    fn make_claim_durable(&mut self) -> Result<(), ShimError> {
        // A sandbox child, cloned fork-like, sets up its namespaces while
        // the fsync runs and waits for it before the task starts; the
        // process profile's vfork-style spawn has nothing to overlap.
        if self.sandbox().is_some() {
            self.claim_durable_at_spawn = true;
            return Ok(());
        }
        claim::make_durable(self.ctx.task_dir.as_fd())?;
        Ok(())
    }

    fn become_subreaper(&mut self) -> Result<(), ShimError> {
        nix::sys::prctl::set_child_subreaper(true).map_err(ShimError::Subreaper)
    }

    fn open_control(&mut self) -> Result<(), ShimError> {
        let owner = self.hand_over_to().map(|(uid, _)| uid);
        self.control = Some(control::create(self.ctx.task_dir.as_fd(), owner)?);
        Ok(())
    }

    fn prepare_workspace(&mut self) -> Result<(), ShimError> {
        // The task writes its workspace, so it owns what we create there;
        // without a task user, the runtime does (when we are root).
        let owner = match self.ctx.task_identity {
            Some(t) => Some(t.nix()),
            None => self.hand_over_to(),
        };
        let workspace = workspace::prepare(
            self.ctx.task_dir.as_fd(),
            &self.ctx.launch.workspace_subdir,
            owner,
        )?;
        // An absolute working directory (opened by the helper beneath its
        // --workdir-root) replaces the workspace as the task's cwd; the
        // workspace still exists, as for every task.
        self.workspace = Some(match &self.ctx.workdir {
            Some(dir) => dir.try_clone().map_err(ShimError::Workdir)?,
            None => workspace,
        });
        Ok(())
    }

    fn open_stdio(&mut self) -> Result<(), ShimError> {
        let (io, relay) = stdio::open(
            self.ctx.task_dir.as_fd(),
            self.ctx.launch.script_fd,
            self.ctx.launch.limits.max_log_bytes,
        )?;
        self.stdio = Some(io);
        self.relay = relay;
        Ok(())
    }

    fn create_cgroups(&mut self) -> Result<(), ShimError> {
        // Every profile's limits live in its cgroups, for the whole task; a
        // task without limits gets one cgroup, to be contained.
        let l = &self.ctx.launch.limits;
        let limits = TaskLimits {
            memory_bytes: l.memory_bytes,
            pids_max: l.pids_max,
            cpu_millis: l.cpu_millis,
        };
        let Some(placement) = &self.ctx.cgroups else {
            // A memory limit becomes RLIMIT_AS (see resolve_program); the
            // others have nothing else to hold them, and the runtime sends
            // them only where the probe found their controller.
            return limits.without_cgroups().map_err(ShimError::Cgroup);
        };
        let need = Need::of(self.sandbox().is_some(), &limits);
        let cg = placement
            .create(&self.ctx.launch.task_id, need, &HostFs)
            .map_err(ShimError::Cgroup)?;
        // Without a memory hierarchy the memory limit is RLIMIT_AS too.
        let limits = TaskLimits {
            memory_bytes: limits.memory_bytes.filter(|_| cg.has("memory")),
            ..limits
        };
        if let Err(e) = cg.set_limits(&limits, &HostFs) {
            cg.remove(&HostFs);
            return Err(ShimError::Cgroup(e));
        }
        // Kept before the fds are opened, so a failure still removes them.
        let procs = cg.join_fds();
        self.cgroups = Some(cg);
        self.cgroup_join = procs.map_err(ShimError::Cgroup)?;
        Ok(())
    }

    fn join_target(&mut self) -> Result<(), ShimError> {
        let Some(target) = &self.ctx.sidecar else {
            return Ok(());
        };
        // Every file of the task (stdio, control, workspace, result) is
        // open already and stays in the runtime's data dir. The shim joins
        // the mount, uts, ipc and net namespaces itself (so the program is
        // found in the container's file system) and the pid namespace for
        // its children (setns(2) with a pidfd joins them all at once).
        self.thread_dir = open_thread_dir();
        use nix::sched::CloneFlags as C;
        let all =
            C::CLONE_NEWNS | C::CLONE_NEWUTS | C::CLONE_NEWIPC | C::CLONE_NEWNET | C::CLONE_NEWPID;
        nix::sched::setns(&target.pidfd, all).map_err(ShimError::JoinTarget)?;
        // The task starts in the container's root, as nsenter would.
        let root = File::open("/").map_err(|e| {
            ShimError::JoinTarget(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
        self.workspace = Some(OwnedFd::from(root));
        logging::shim_info!(
            target_pid = target.pid,
            "joined the main container's namespaces"
        );
        Ok(())
    }

    fn resolve_program(&mut self) -> Result<(), ShimError> {
        let l = &self.ctx.launch;
        let program = l.argv.first().ok_or(missing("argv"))?;
        // Sidecar mode: the container's environment, the task's on top.
        let env: Vec<(String, String)> = match &self.ctx.sidecar {
            Some(t) => {
                let mut merged: std::collections::BTreeMap<&str, &str> = t
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                merged.extend(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                merged
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }
            None => l.env.clone(),
        };
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let resolved = resolve::resolve(program, path_var)?;
        // The memory limit is the task cgroup's where it has the memory
        // controller (create_cgroups wrote it), else each process's
        // RLIMIT_AS.
        let in_cgroup = self.cgroups.as_ref().is_some_and(|c| c.has("memory"));
        let address_space = l.limits.memory_bytes.filter(|_| !in_cgroup);
        let mut plan = Plan::new(
            &resolved,
            &l.argv,
            &env,
            l.limits.cpu_time_sec,
            address_space,
        )?;
        plan.identity = self.ctx.task_identity.map(|t| (t.uid, t.gid));
        plan.joined_pid_ns = self.ctx.sidecar.is_some();
        let filters = self.ctx.seccomp.take();
        let sandbox = self.sandbox();
        // A process task where the host has no seccomp runs without its
        // filter (its plan says so); a sandbox never does.
        plan.seccomp = match (filters, sandbox) {
            (Some(filters), _) => Some(filters),
            (None, Some(_)) => Some(crate::seccomp::sandbox_filters().map_err(ShimError::Seccomp)?),
            (None, None) => None,
        };
        if let Some(spec) = sandbox {
            plan.sandbox = Some(SandboxPlan {
                rootfs: self.ctx.rootfs.as_ref().map(AsRawFd::as_raw_fd),
                netns: self.ctx.netns.as_ref().map(AsRawFd::as_raw_fd),
                spec: spec.clone(),
            });
        }
        self.plan = Some(plan);
        Ok(())
    }

    fn watch_children(&mut self) -> Result<(), ShimError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(ShimError::Watch)?;
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ShimError::Watch)?;
        self.sigchld = Some(sfd);
        Ok(())
    }

    fn narrow_capabilities(&mut self) -> Result<(), ShimError> {
        use caps::{CapSet, Capability};
        // Dropping from the bounding set needs CAP_SETPCAP; without it
        // (unprivileged) there is nothing an exec could gain anyway, with
        // NO_NEW_PRIVS set since start-up.
        let can_drop = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(ShimError::Capabilities)?;
        if can_drop {
            // Without reading each one first (`caps::clear` does): half the
            // system calls.
            sys::drop_bounding_set().map_err(ShimError::Bounding)?;
        }
        caps::clear(None, CapSet::Ambient).map_err(ShimError::Capabilities)?;
        caps::clear(None, CapSet::Inheritable).map_err(ShimError::Capabilities)?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<Started, ShimError> {
        let plan = self.plan.as_ref().ok_or(missing("plan"))?;
        let io = self.stdio.as_ref().ok_or(missing("stdio"))?;
        let cwd = self.workspace.as_ref().ok_or(missing("workspace"))?;
        // The process profile needs nothing beyond the steps so far; sandbox
        // profiles will add their set-up around the spawn here.
        let profile = match &self.ctx.launch.profile {
            LaunchProfile::Process => "process",
            LaunchProfile::LinuxSandbox(_) => "linux_sandbox",
        };
        // A pid namespace's init reports how the task ended on a pipe: its
        // own exit says nothing.
        let report = match self.sandbox() {
            Some(spec) if spec.pid => Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| ShimError::Spawn(spawn::SpawnError::Pipe(e)))?,
            ),
            _ => None,
        };
        let started = spawn::spawn(
            plan,
            io,
            cwd,
            &self.cgroup_join,
            report.as_ref().map(|(_, w)| w),
            self.claim_durable_at_spawn
                .then(|| self.ctx.task_dir.as_fd()),
        )?;
        self.report = report.map(|(r, _)| r);
        self.main_pid = Some(nix::unistd::Pid::from_raw(started.pid));
        // The task has its own copies; ours are not needed any more.
        self.stdio = None;
        self.workspace = None;
        self.cgroup_join.clear();
        // The namespace is the task's init's now; our hold would only keep
        // it alive past the task.
        self.ctx.netns = None;
        logging::shim_info!(
            pid = started.pid,
            profile,
            uid = self.ctx.task_identity.map(|t| t.uid),
            program = self.ctx.launch.argv.first().map(String::as_str),
            "task started"
        );
        Ok(started)
    }

    fn record_started(&mut self, started: &Started) -> Result<(), ShimError> {
        // A symlink, like the claim: it appears with its record, whole.
        let record = StartedRecord {
            pid: started.pid,
            started_at: started.started_at.clone(),
        };
        nix::unistd::symlinkat(
            record.encode().as_str(),
            Some(self.ctx.task_dir.as_raw_fd()),
            STARTED,
        )
        .map_err(ShimError::Started)
    }

    fn monitor(&mut self, started: &Started) -> Result<Finished, ShimError> {
        let sigchld = self.sigchld.as_ref().ok_or(missing("sigchld"))?;
        let control = self.control.as_ref().ok_or(missing("control"))?;
        let m = Monitor {
            pid: nix::unistd::Pid::from_raw(started.pid),
            cgroups: self.cgroups.as_ref(),
            started: started.at,
            wall_time: std::time::Duration::from_millis(self.ctx.launch.limits.wall_time_ms),
            grace: self.ctx.launch.termination_grace,
            sigchld,
            control,
            report: self.report.as_ref(),
            keep_descendants: self.ctx.launch.keep_descendants,
        };
        match m.run(&mut self.relay) {
            Ok(mut ended) => {
                self.init = ended.init;
                // An init reaped before its report was read: the report
                // is on the pipe all the same, unless the init was killed.
                if ended.init.is_none() {
                    if let Some(r) = self.report.as_ref().and_then(monitor::read_report) {
                        ended.exit = monitor::exit_kind(r.status);
                        ended.usage = r.usage;
                    }
                }
                if let Some(cg) = self.cgroups.as_ref() {
                    ended.oom_killed = cg.oom_killed(&HostFs);
                }
                Ok(Finished {
                    ended,
                    finished_at: now_rfc3339(),
                })
            }
            Err(e) => {
                // Never leave the task unwatched: kill its group and wait
                // for it, so what result.json says is final.
                let _ = nix::sys::signal::killpg(m.pid, Signal::SIGKILL);
                let _ = crate::sys::wait4(started.pid, false);
                Err(e.into())
            }
        }
    }

    fn give_back_identity(&mut self) {
        let (Some(leases), Some(id)) = (self.ctx.lease.take(), self.ctx.task_identity) else {
            return;
        };
        let owner = self.runtime_owner();
        let warn = |e: &dyn std::error::Error, what: &str| {
            tracing::error!(
                target: logging::TARGET,
                uid = id.uid,
                error = %logging::chain(e),
                "{what}; the task uid stays leased"
            );
        };
        // A task's processes cannot leave its cgroups: found empty, none
        // is left. Without cgroups, the uid says which are the task's.
        if !self.emptied {
            if let Err(e) = uid_lease::kill_all(id.uid, monitor::reap_leftovers) {
                return warn(&e, "killing what is left of the task failed");
            }
        }
        // What the task may have written: its workspace, or its working
        // directory (OpenSandbox's workingDir).
        let mut trees = Vec::new();
        if let Ok(ws) = crate::fs_at::open_dir(self.ctx.task_dir.as_fd(), workspace::WORKSPACE) {
            trees.push(ws);
        }
        if let Some(dir) = &self.ctx.workdir {
            if let Ok(d) = crate::sys::openat(
                dir.as_fd(),
                ".",
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) {
                trees.push(d);
            }
        }
        for tree in &trees {
            if let Err(e) = uid_lease::hand_back(tree.as_fd(), id.uid, owner) {
                return warn(&e, "handing the task's files back failed");
            }
        }
        leases.forget(id.uid, &self.ctx.launch.task_id);
    }

    fn drop_lease(&mut self) {
        if let (Some(leases), Some(id)) = (self.ctx.lease.take(), self.ctx.task_identity) {
            leases.forget(id.uid, &self.ctx.launch.task_id);
        }
    }

    fn task_uid(&self) -> Option<u32> {
        Some(
            self.ctx
                .task_identity
                .map_or_else(|| nix::unistd::geteuid().as_raw(), |t| t.uid),
        )
    }

    fn keeps_descendants(&self) -> bool {
        self.ctx.launch.keep_descendants
    }

    fn memory_peak(&self) -> Option<u64> {
        self.cgroups.as_ref().and_then(|cg| cg.memory_peak(&HostFs))
    }

    fn keep_leftovers(&mut self, kill_now: bool) {
        let (Some(sigchld), Some(control), Some(pgid)) =
            (self.sigchld.as_ref(), self.control.as_ref(), self.main_pid)
        else {
            return;
        };
        if self.thread_dir.is_none() {
            self.thread_dir = open_thread_dir();
        }
        let leftovers = monitor::Leftovers {
            pgid,
            thread_dir: self.thread_dir.as_ref().map(AsFd::as_fd),
            cgroups: self.cgroups.as_ref(),
            grace: self.ctx.launch.termination_grace,
            sigchld,
            control,
        };
        if let Err(e) = leftovers.keep(kill_now, &mut self.relay) {
            // clean_up, next, kills whatever is left.
            tracing::warn!(
                target: logging::TARGET,
                error = %logging::chain(&e),
                "watching what the task left running failed; killing it"
            );
        }
    }

    fn clean_up(&mut self) -> Option<u64> {
        // Our own copies of the task's pipes (a launch that failed still
        // holds them), so that the relay sees their end.
        self.stdio = None;
        let peak = self.kill_leftovers();
        // Every writer is dead now (but one that escaped a task without
        // cgroups): what they wrote goes into the logs before the result
        // reads their heads.
        self.relay.drain(DRAIN_PATIENCE);
        peak
    }

    fn remove_cgroups(&mut self) {
        if let Some(init) = self.init.take() {
            // It exits right after its report; its cgroups empty then.
            let _ = crate::sys::wait4(init.as_raw(), false);
        }
        let Some(cg) = self.cgroups.take() else {
            return;
        };
        for e in cg.remove(&HostFs) {
            tracing::warn!(
                target: logging::TARGET,
                error = %logging::chain(&e),
                "removing a task cgroup failed; the next sweep retries"
            );
        }
    }

    fn write_result(&mut self, outcome: &Outcome) -> Result<(), ShimError> {
        let dir = self.ctx.task_dir.as_fd();
        let limits = &self.ctx.launch.limits;
        // A task that keeps its descendants is recorded while they may
        // still write: what is in the pipes now goes in first.
        self.relay.pump_all();
        let (mut stdout, mut stderr) =
            result::read_logs(dir, limits.stdout_max_bytes, limits.stderr_max_bytes);
        // Output dropped at the cap makes a log truncated too.
        stdout.truncated |= self.relay.capped(0);
        stderr.truncated |= self.relay.capped(1);
        let body = result::merge(&self.ctx.launch.result_template, outcome, stdout, stderr)?;
        let file = self.result.take().ok_or(missing("result file"))?;
        result::write(dir, file, &body)?;
        logging::shim_info!(
            status = outcome.status.as_str(),
            error_code = outcome.error.as_ref().map(|e| e.code.as_str()),
            "result recorded"
        );
        Ok(())
    }
}

/// The shim's `/proc/thread-self` (`None` without procfs: leftovers are
/// then found through the cgroups only).
fn open_thread_dir() -> Option<OwnedFd> {
    use nix::fcntl::OFlag;
    crate::sys::open(
        std::path::Path::new("/proc/thread-self"),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}
