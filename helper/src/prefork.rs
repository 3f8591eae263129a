//! A shim forked ahead of its launch. Starting a shim costs a fork of the
//! helper through a short-lived intermediate (see [`crate::sys::detach`])
//! and the new process's first steps, all of it between the runtime's
//! request and the task's start (figures in docs/benchmarks.md).
//! So once a launch has been asked for, the helper keeps one shim forked
//! ahead (the *spare*), made between requests the way a shim is made: a
//! detached copy of the helper, nobody's child. It drops every descriptor
//! of the helper's but its end of a socket pair, puts 0, 1 and 2 on
//! `/dev/null`, and waits.
//!
//! A launch hands the spare what a freshly forked shim would have found in
//! its copy of memory: the launch request as the runtime sent it (the spare
//! validates it again, with the same pure code), the peer's ids, and the
//! descriptors the helper opened for it (task directory, rootfs, working
//! directory, network namespace), over the socket pair (`SCM_RIGHTS`). The
//! rest (task identity, cgroup placement, seccomp filters, whether we are
//! privileged) is the helper's start-up state, the same in the spare's
//! copy. From there on it is a shim like any other.
//!
//! The spare runs the task only once it has read the whole hand-over; the
//! helper answers `Launched` with the spare's pid only once it has written
//! all of it. A hand-over that fails (the spare died, say) is dropped and
//! the launch forks a shim as before: a task never gets two shims. A spare
//! whose helper exits reads end of file and exits. Sidecar launches always
//! fork their shim (the target is found per launch).

use std::cell::{Cell, RefCell};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use execgo_runtime_protocol::taskdir::start_ticks;
use execgo_runtime_protocol::{LaunchSpec, Launched};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::shim::{self, ShimContext};
use crate::validate::validate;
use crate::{logging, sys};

/// What every shim of this helper shares: start-up state, not per launch.
#[derive(Clone)]
pub struct Statics {
    pub privileged: bool,
    pub task_identity: Option<crate::identity::TaskIdentity>,
    /// The task uid leases (their directory stays open in the spare).
    pub leases: Option<Rc<crate::uid_lease::Leases>>,
    pub cgroups: Option<crate::cgroup::task::Placement>,
    pub seccomp: Option<crate::seccomp::TaskFilters>,
    /// `--max-log-bytes`: the most a launch may ask for.
    pub max_log_bytes: u64,
}

/// What a launch hands over besides its request.
pub struct Handover<'a> {
    pub spec: &'a LaunchSpec,
    pub peer_uid: u32,
    pub peer_gid: u32,
    /// The uid the helper leased for the task, if tasks get their own.
    pub task_uid: Option<u32>,
    pub task_dir: BorrowedFd<'a>,
    pub rootfs: Option<BorrowedFd<'a>>,
    pub workdir: Option<BorrowedFd<'a>>,
    pub netns: Option<BorrowedFd<'a>>,
}

struct Spare {
    pid: i32,
    start_ticks: u64,
    /// The helper's end of the socket pair.
    link: UnixStream,
}

/// The helper's spare shim, if it keeps one.
pub struct Prefork {
    statics: Statics,
    enabled: bool,
    spare: RefCell<Option<Spare>>,
    /// A launch has been asked for.
    wanted: Cell<bool>,
    /// Making one failed: none is made any more (the failure was logged).
    stopped: Cell<bool>,
}

/// The header before a hand-over's body: its length (u32, little-endian)
/// and which optional descriptors follow the task directory's.
const HEADER: usize = 8;
const HAS_ROOTFS: u8 = 1;
const HAS_WORKDIR: u8 = 2;
const HAS_NETNS: u8 = 4;
/// A hand-over's body is a launch request, whose frame the helper already
/// bounded; this only keeps a corrupt header from asking for more.
const MAX_BODY: usize = 64 << 20;

/// Exit codes of a spare that never became a shim (nobody waits for them;
/// they are for whoever traces it).
mod exit {
    /// Its helper went away (end of file).
    pub const UNUSED: i32 = 0;
    /// The hand-over could not be read or made sense of.
    pub const BAD_HANDOVER: i32 = 71;
}

impl Prefork {
    pub fn new(statics: Statics, enabled: bool) -> Prefork {
        Prefork {
            statics,
            enabled,
            spare: RefCell::new(None),
            wanted: Cell::new(false),
            stopped: Cell::new(false),
        }
    }

    /// Spares never made.
    #[cfg(test)]
    pub fn disabled() -> Prefork {
        Prefork::new(
            Statics {
                privileged: false,
                task_identity: None,
                leases: None,
                cgroups: None,
                seccomp: None,
                max_log_bytes: crate::cli::DEFAULT_MAX_LOG_BYTES,
            },
            false,
        )
    }

    pub fn enabled(&self) -> bool {
        self.enabled && !self.stopped.get()
    }

    /// Whether a spare should be made now.
    pub fn wants_one(&self) -> bool {
        self.enabled && self.wanted.get() && !self.stopped.get() && self.spare.borrow().is_none()
    }

    /// Makes the spare. A failure is logged and ends the making of spares.
    pub fn refill(&self) {
        match self.make() {
            Ok(spare) => *self.spare.borrow_mut() = Some(spare),
            Err(e) => {
                self.stopped.set(true);
                tracing::error!(
                    target: logging::TARGET,
                    error = %e,
                    "forking a spare shim failed; launches fork their own from now on"
                );
            }
        }
    }

    fn make(&self) -> Result<Spare, String> {
        let threads = sys::thread_count().map_err(|e| format!("counting threads: {e}"))?;
        if threads != 1 {
            return Err(format!("the helper has {threads} threads"));
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let statics = self.statics.clone();
        let pid = sys::spawn_detached(move || wait_for_launch(theirs, statics))
            .map_err(|e| logging::chain(&e))?;
        // Our copy of their end was moved into the closure and dropped with
        // it when spawn_detached returned.
        Ok(Spare {
            pid: pid.as_raw(),
            start_ticks: start_ticks(pid.as_raw()).unwrap_or(0),
            link: ours,
        })
    }

    /// Hands the launch to the spare: `Launched` with its pid once all of
    /// it is written; `None` (the spare is dropped) when there is no spare
    /// or it could not take it, and the caller forks a shim.
    pub fn hand_over(&self, h: &Handover<'_>) -> Option<Launched> {
        if !self.enabled {
            return None;
        }
        self.wanted.set(true);
        let mut spare = self.spare.borrow_mut().take()?;
        match send(&mut spare.link, h) {
            // The helper fills in the task's uid.
            Ok(()) => Some(Launched {
                shim_pid: spare.pid,
                shim_start_ticks: spare.start_ticks,
                task_uid: 0,
            }),
            Err(e) => {
                tracing::warn!(
                    target: logging::TARGET,
                    spare_pid = spare.pid,
                    error = %e,
                    "handing the launch to the spare shim failed; forking one"
                );
                None
            }
        }
    }
}

fn send(link: &mut UnixStream, h: &Handover<'_>) -> std::io::Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({
        "spec": h.spec,
        "peer_uid": h.peer_uid,
        "peer_gid": h.peer_gid,
        "task_uid": h.task_uid,
    }))
    .map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut fds: Vec<RawFd> = vec![h.task_dir.as_raw_fd()];
    let mut flags = 0u8;
    for (fd, bit) in [
        (h.rootfs, HAS_ROOTFS),
        (h.workdir, HAS_WORKDIR),
        (h.netns, HAS_NETNS),
    ] {
        if let Some(fd) = fd {
            fds.push(fd.as_raw_fd());
            flags |= bit;
        }
    }
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4] = flags;
    let sent = sendmsg::<()>(
        link.as_raw_fd(),
        &[IoSlice::new(&header)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)?;
    if sent < HEADER {
        link.write_all(&header[sent..])?;
    }
    link.write_all(&body)
}

/// The spare's life: drop the helper's descriptors, wait for a launch,
/// become its shim. Returns only when it will never be one.
fn wait_for_launch(link: UnixStream, statics: Statics) -> i32 {
    let mut keep = vec![link.as_raw_fd()];
    keep.extend(logging::journal_fd());
    keep.extend(statics.leases.as_ref().map(|l| l.dir().as_raw_fd()));
    if shim::isolate::drop_inherited(&keep).is_err() {
        return exit::BAD_HANDOVER;
    }
    match receive(link, statics) {
        Ok(Some(ctx)) => shim::run(ctx),
        Ok(None) => exit::UNUSED,
        Err(()) => exit::BAD_HANDOVER,
    }
}

/// Reads a hand-over and builds the shim's context from it and `statics`.
/// `None`: end of file, the helper is gone.
fn receive(mut link: UnixStream, statics: Statics) -> Result<Option<ShimContext>, ()> {
    let mut header = [0u8; HEADER];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = loop {
            match recvmsg::<()>(
                link.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(drop)?,
            }
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(drop)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // Descriptors the kernel just installed for us, ours alone.
                for fd in raw {
                    fds.push(sys::adopt_fd(fd).map_err(drop)?);
                }
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER {
        link.read_exact(&mut header[got..]).map_err(drop)?;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_BODY {
        return Err(());
    }
    let mut body = vec![0u8; len];
    link.read_exact(&mut body).map_err(drop)?;
    let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(drop)?;
    let spec: LaunchSpec = serde_json::from_value(v["spec"].take()).map_err(drop)?;
    let id = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(());
    let (peer_uid, peer_gid) = (id("peer_uid")?, id("peer_gid")?);
    // A leased uid, checked against our own range: the spare trusts the
    // helper no more than it must.
    let task_identity = match &statics.leases {
        Some(leases) => {
            let uid = id("task_uid")?;
            if !leases.range().contains(uid) {
                return Err(());
            }
            Some(crate::identity::TaskIdentity { uid, gid: uid })
        }
        None => statics.task_identity,
    };
    let flags = header[4];
    let mut fds = fds.into_iter();
    let task_dir = fds.next().ok_or(())?;
    let mut next_if = |bit: u8| -> Result<Option<OwnedFd>, ()> {
        if flags & bit == 0 {
            return Ok(None);
        }
        fds.next().map(Some).ok_or(())
    };
    let rootfs = next_if(HAS_ROOTFS)?;
    let workdir = next_if(HAS_WORKDIR)?;
    let netns = next_if(HAS_NETNS)?;
    let mut launch = validate(spec).map_err(drop)?;
    launch.limits.max_log_bytes = launch.limits.max_log_bytes.min(statics.max_log_bytes);
    let cgroups = statics.cgroups.filter(|_| launch.task_cgroups);
    let seccomp = statics.seccomp.map(|f| f.for_profile(&launch.profile));
    Ok(Some(ShimContext {
        launch,
        task_dir,
        peer_uid,
        peer_gid,
        privileged: statics.privileged,
        task_identity,
        lease: statics.leases,
        cgroups,
        rootfs,
        seccomp,
        sidecar: None,
        workdir,
        netns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn spec(task_id: &str) -> LaunchSpec {
        serde_json::from_value(serde_json::json!({
            "task_id": task_id,
            "argv": ["/bin/true"],
            "env": [],
            "workspace_subdir": null,
            "profile": "Process",
            "limits": {
                "wall_time_ms": 1000,
                "cpu_time_sec": null,
                "memory_bytes": null,
                "pids_max": null,
                "stdout_max_bytes": 4096,
                "stderr_max_bytes": 4096,
                "cpu_millis": null,
                "max_log_bytes": 1048576
            },
            "termination_grace_ms": 100,
            "result_template": "{}",
            "task_cgroups": false,
            "keep_descendants": false,
            "sidecar_target": null,
            "workdir": null,
            "script_fd": false
        }))
        .expect("a launch spec")
    }

    fn statics() -> Statics {
        Statics {
            privileged: false,
            task_identity: None,
            leases: None,
            cgroups: None,
            seccomp: None,
            max_log_bytes: crate::cli::DEFAULT_MAX_LOG_BYTES,
        }
    }

    fn ino(fd: BorrowedFd<'_>) -> u64 {
        nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino
    }

    #[test]
    fn a_hand_over_arrives_whole_with_its_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("w");
        std::fs::create_dir(&sub).unwrap();
        let task_dir = std::fs::File::open(dir.path()).unwrap();
        let workdir = std::fs::File::open(&sub).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let s = spec("t-1");
        send(
            &mut ours,
            &Handover {
                spec: &s,
                peer_uid: 1234,
                peer_gid: 5678,
                task_uid: None,
                task_dir: task_dir.as_fd(),
                rootfs: None,
                workdir: Some(workdir.as_fd()),
                netns: None,
            },
        )
        .unwrap();
        // The operator's --max-log-bytes holds over the runtime's ask.
        let capped = Statics {
            max_log_bytes: 4096,
            ..statics()
        };
        let ctx = receive(theirs, capped).unwrap().expect("a context");
        assert_eq!(ctx.launch.task_id, "t-1");
        assert_eq!(ctx.launch.limits.max_log_bytes, 4096, "clamped");
        assert_eq!((ctx.peer_uid, ctx.peer_gid), (1234, 5678));
        assert_eq!(ino(ctx.task_dir.as_fd()), ino(task_dir.as_fd()));
        let w = ctx.workdir.as_ref().expect("the workdir descriptor");
        assert_eq!(ino(w.as_fd()), ino(workdir.as_fd()));
        assert!(ctx.rootfs.is_none() && ctx.netns.is_none());
        assert!(ctx.sidecar.is_none());
    }

    #[test]
    fn end_of_file_is_no_launch_and_a_cut_hand_over_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(ours);
        assert!(matches!(receive(theirs, statics()), Ok(None)));

        // A header that promises more than ever comes.
        let dir = tempfile::tempdir().unwrap();
        let task_dir = std::fs::File::open(dir.path()).unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&100u32.to_le_bytes());
        sendmsg::<()>(
            ours.as_raw_fd(),
            &[IoSlice::new(&header)],
            &[ControlMessage::ScmRights(&[task_dir.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&ours).write_all(b"{\"spec\":").unwrap();
        drop(ours);
        assert!(receive(theirs, statics()).is_err());

        // A whole body that is not a valid launch.
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let mut bad = spec("t-2");
        bad.task_id = "../escape".into();
        send(
            &mut ours,
            &Handover {
                spec: &bad,
                peer_uid: 0,
                peer_gid: 0,
                task_uid: None,
                task_dir: task_dir.as_fd(),
                rootfs: None,
                workdir: None,
                netns: None,
            },
        )
        .unwrap();
        assert!(receive(theirs, statics()).is_err(), "validated again");
    }

    #[test]
    fn nothing_is_handed_over_when_disabled_or_without_a_spare() {
        let dir = tempfile::tempdir().unwrap();
        let task_dir = std::fs::File::open(dir.path()).unwrap();
        let s = spec("t-3");
        let h = Handover {
            spec: &s,
            peer_uid: 0,
            peer_gid: 0,
            task_uid: None,
            task_dir: task_dir.as_fd(),
            rootfs: None,
            workdir: None,
            netns: None,
        };
        let off = Prefork::disabled();
        assert!(off.hand_over(&h).is_none());
        assert!(!off.wants_one());
        let on = Prefork::new(statics(), true);
        assert!(!on.wants_one(), "none wanted before a launch");
        assert!(on.hand_over(&h).is_none(), "no spare yet");
        assert!(on.wants_one(), "asked once: a spare is kept from now on");
    }
}
