//! Task uid leases: which uid of `--task-uid-range` belongs to which task.
//!
//! A lease is a symlink `<data dir>/task-uids/<uid>` whose target is the
//! task id. `symlinkat` fails on an existing name, so taking a uid is one
//! exclusive system call, and the table survives a `kill -9` of every
//! component: it is the directory itself. The directory belongs to the
//! helper (root) with mode 0700, so neither the runtime nor a task can
//! touch it.
//!
//! The rules:
//! - the helper takes a lease for a launch before the shim exists, from a
//!   cursor that walks the range, so consecutive tasks get different uids
//!   without looking at each other's leases;
//! - the task's shim gives its lease back once the task is over: every
//!   process of the uid is killed ([`kill_all`]), everything the task left
//!   in its task directory is handed to the runtime's user
//!   ([`hand_back`]), and only then is the symlink removed;
//! - a lease the helper finds in its way is stale when the shim that
//!   claimed its task is gone (or the task directory is); the helper then
//!   does the shim's release itself and takes the uid. A lease whose task
//!   has no claim yet belongs to a shim still starting and is left alone
//!   for [`UNCLAIMED_GRACE`].
//!
//! So a uid never goes to a second task while a process of the first runs
//! or a file it left in its task directory still belongs to it.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

use execgo_runtime_protocol::taskdir::{is_alive, ClaimRecord, CLAIM};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::identity::UidRange;
use crate::{fs_at, sys};

/// The lease directory's name in the data dir.
pub const LEASE_DIR: &str = "task-uids";

/// How long a lease whose task has no claim is taken for a shim still
/// starting. A shim claims its task within milliseconds of its launch.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(60);

/// How long [`kill_all`] keeps killing before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("creating or opening {LEASE_DIR}/ in the data dir failed")]
    Open(#[source] Errno),
    #[error("{LEASE_DIR}/ in the data dir belongs to uid {uid} with mode {mode:o}; it must be the helper's (uid {own}) and closed to everyone else")]
    Unsafe { uid: u32, mode: u32, own: u32 },
    #[error("every uid of --task-uid-range {0} is leased to a task that is still running or still owns files")]
    Exhausted(UidRange),
    #[error("taking the lease of uid {uid} failed")]
    Take {
        uid: u32,
        #[source]
        source: Errno,
    },
    #[error("killing the processes of uid {uid} failed")]
    Kill {
        uid: u32,
        #[source]
        source: Errno,
    },
    #[error("processes of uid {0} were still alive after {KILL_PATIENCE:?} of killing")]
    Survivors(u32),
    #[error("handing the files of uid {uid} back failed")]
    HandBack {
        uid: u32,
        #[source]
        source: Errno,
    },
}

/// The lease table and the cursor the helper takes uids from.
pub struct Leases {
    dir: OwnedFd,
    range: UidRange,
    /// How many uids the cursor has passed since start.
    cursor: Cell<u64>,
}

impl Leases {
    /// Creates (mode 0700) or opens `task-uids/` under the data dir, and
    /// checks it is ours and closed to everyone else. The cursor starts
    /// at a place drawn from the clock, so a restarted helper does not
    /// walk first through the uids its predecessor just used.
    pub fn open(data_dir: BorrowedFd<'_>, range: UidRange) -> Result<Leases, LeaseError> {
        match nix::sys::stat::mkdirat(Some(data_dir.as_raw_fd()), LEASE_DIR, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(LeaseError::Open(e)),
        }
        let dir = fs_at::open_dir(data_dir, LEASE_DIR).map_err(LeaseError::Open)?;
        let st = nix::sys::stat::fstat(dir.as_raw_fd()).map_err(LeaseError::Open)?;
        let own = nix::unistd::geteuid().as_raw();
        if st.st_uid != own || st.st_mode & 0o077 != 0 {
            return Err(LeaseError::Unsafe {
                uid: st.st_uid,
                mode: st.st_mode & 0o7777,
                own,
            });
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Leases {
            dir,
            range,
            cursor: Cell::new(seed),
        })
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    /// The lease directory, for shims (they give their lease back).
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Takes a uid for `task_id`: the next one after the cursor that is
    /// free, or whose lease is stale (released first, see the module
    /// documentation). `tasks` is the data dir's `tasks/`; `owner` the
    /// runtime's user, who gets a stale task's files.
    pub fn acquire(
        &self,
        task_id: &str,
        tasks: BorrowedFd<'_>,
        owner: (Uid, Gid),
    ) -> Result<u32, LeaseError> {
        for _ in 0..self.range.len() {
            let n = self.cursor.get();
            self.cursor.set(n.wrapping_add(1));
            let uid = self.range.nth(n);
            let name = uid.to_string();
            match nix::unistd::symlinkat(task_id, Some(self.dir.as_raw_fd()), name.as_str()) {
                Ok(()) => return Ok(uid),
                Err(Errno::EEXIST) => {}
                Err(source) => return Err(LeaseError::Take { uid, source }),
            }
            let Some(holder) = self.stale_holder(&name, tasks) else {
                continue;
            };
            let task_dir = fs_at::open_dir(tasks, &holder).ok();
            if let Err(e) = release(self.dir.as_fd(), uid, &holder, task_dir.as_ref(), owner) {
                tracing::warn!(
                    target: crate::logging::TARGET,
                    uid,
                    holder = holder.as_str(),
                    error = %crate::logging::chain(&e),
                    "a stale task uid lease could not be released; the uid stays leased"
                );
                continue;
            }
            tracing::info!(
                target: crate::logging::TARGET,
                uid,
                holder = holder.as_str(),
                "released the task uid of a task whose shim is gone"
            );
            match nix::unistd::symlinkat(task_id, Some(self.dir.as_raw_fd()), name.as_str()) {
                Ok(()) => return Ok(uid),
                Err(Errno::EEXIST) => {}
                Err(source) => return Err(LeaseError::Take { uid, source }),
            }
        }
        Err(LeaseError::Exhausted(self.range))
    }

    /// The task holding lease `name` when the lease is stale: its task
    /// directory is gone, or its claim names a shim that is not alive. A
    /// task not claimed yet keeps its lease for [`UNCLAIMED_GRACE`].
    fn stale_holder(&self, name: &str, tasks: BorrowedFd<'_>) -> Option<String> {
        let target = nix::fcntl::readlinkat(Some(self.dir.as_raw_fd()), name).ok()?;
        let holder = target.to_str()?.to_string();
        if !execgo_runtime_protocol::valid_task_id(&holder) {
            // Not ours: nothing the helper writes looks like this.
            return None;
        }
        let Ok(task_dir) = fs_at::open_dir(tasks, &holder) else {
            return Some(holder);
        };
        match nix::fcntl::readlinkat(Some(task_dir.as_raw_fd()), CLAIM) {
            Ok(claim) => {
                let record =
                    ClaimRecord::parse(claim.as_encoded_bytes()).unwrap_or(ClaimRecord::UNKNOWN);
                (!is_alive(record.shim_pid, record.shim_start_ticks)).then_some(holder)
            }
            Err(_) => {
                let st = fstatat(
                    Some(self.dir.as_raw_fd()),
                    name,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()?;
                let age = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()?
                    .as_secs()
                    .saturating_sub(u64::try_from(st.st_mtime).unwrap_or(0));
                (age > UNCLAIMED_GRACE.as_secs()).then_some(holder)
            }
        }
    }
}

/// Gives a task's lease back: kills every process of `uid`, hands what
/// the task left in `task_dir` (when there is one) to `owner`, then
/// removes the lease if it still names `task_id`. On an error the lease
/// stays: a uid that may still be in use is never handed out again.
pub fn release(
    leases: BorrowedFd<'_>,
    uid: u32,
    task_id: &str,
    task_dir: Option<&OwnedFd>,
    owner: (Uid, Gid),
) -> Result<(), LeaseError> {
    kill_all(uid, || {})?;
    if let Some(dir) = task_dir {
        hand_back(dir.as_fd(), uid, owner)
            .map_err(|source| LeaseError::HandBack { uid, source })?;
    }
    forget(leases, uid, task_id);
    Ok(())
}

/// Removes lease `uid` if it names `task_id` (a lease taken for a launch
/// that ran nothing, or one released).
pub fn forget(leases: BorrowedFd<'_>, uid: u32, task_id: &str) {
    let name = uid.to_string();
    let ours = nix::fcntl::readlinkat(Some(leases.as_raw_fd()), name.as_str())
        .is_ok_and(|t| t.as_encoded_bytes() == task_id.as_bytes());
    if ours {
        let _ = nix::unistd::unlinkat(
            Some(leases.as_raw_fd()),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Kills every process whose uid is `uid`, wherever it moved its group,
/// session or cgroup, until `/proc` shows none: a child takes the uid and
/// sends SIGKILL to every process it may signal (`kill(-1)`: those whose
/// real or saved uid is `uid`). The kernel's answer to `kill(-1)` cannot
/// tell "none" from "none permitted", hence the look at `/proc`.
/// `between` runs between rounds, to reap what comes to the caller.
pub fn kill_all(uid: u32, mut between: impl FnMut()) -> Result<(), LeaseError> {
    let deadline = Instant::now() + KILL_PATIENCE;
    loop {
        if !any_process_of(uid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LeaseError::Survivors(uid));
        }
        kill_round(uid)?;
        between();
        if any_process_of(uid) {
            std::thread::sleep(Duration::from_millis(2));
            between();
        }
    }
}

/// Whether a process in our `/proc` has `uid` as its real, effective,
/// saved or file-system uid (zombies included: their parent has not
/// reaped them yet).
pub fn any_process_of(uid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let mut buf = String::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        buf.clear();
        let path = format!("/proc/{pid}/status");
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        if std::io::Read::read_to_string(&mut f, &mut buf).is_err() {
            continue;
        }
        if status_has_uid(&buf, uid) {
            return true;
        }
    }
    false
}

/// Whether a `/proc/<pid>/status` text's `Uid:` line holds `uid`.
fn status_has_uid(status: &str, uid: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().any(|t| t.parse() == Ok(uid)))
}

/// One `kill(-1, SIGKILL)` as `uid`, in a throwaway child.
fn kill_round(uid: u32) -> Result<(), LeaseError> {
    let err = |source| LeaseError::Kill { uid, source };
    match sys::fork().map_err(err)? {
        sys::Forked::Child => {
            let id = Uid::from_raw(uid);
            let code = match nix::unistd::setresuid(id, id, id) {
                Err(_) => 3,
                Ok(()) => match nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-1),
                    nix::sys::signal::Signal::SIGKILL,
                ) {
                    Ok(()) | Err(Errno::ESRCH) => 0,
                    Err(_) => 2,
                },
            };
            sys::exit_now(code)
        }
        sys::Forked::Parent(child) => {
            let status = loop {
                match nix::sys::wait::waitpid(child, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other.map_err(err)?,
                }
            };
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                nix::sys::wait::WaitStatus::Exited(_, 3) => Err(err(Errno::EPERM)),
                _ => Err(err(Errno::EIO)),
            }
        }
    }
}

/// Hands every entry of `dir`'s tree owned by `uid` (or its group, the
/// same number) to `owner`, `dir` included: the runtime's user can then
/// read and remove what the task left. Nothing is followed: entries are
/// looked at and changed with `AT_SYMLINK_NOFOLLOW`, directories opened
/// `O_NOFOLLOW` and only on `dir`'s file system. Only called once no
/// process of `uid` is left, so nothing moves underneath.
pub fn hand_back(dir: BorrowedFd<'_>, uid: u32, owner: (Uid, Gid)) -> Result<(), Errno> {
    let top = nix::sys::stat::fstat(dir.as_raw_fd())?;
    if top.st_uid == uid || top.st_gid == uid {
        nix::unistd::fchown(dir.as_raw_fd(), Some(owner.0), Some(owner.1))?;
    }
    let reopen = |parent: RawFd, name: &CStr| -> Result<OwnedFd, Errno> {
        let fd = nix::fcntl::openat(
            Some(parent),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        sys::adopt_fd(fd)
    };
    let mut stack = vec![reopen(dir.as_raw_fd(), c".")?];
    while let Some(current) = stack.pop() {
        // The Dir owns the descriptor from here, and closes it.
        let mut entries = Dir::from_fd(current.into_raw_fd())?;
        let mut subdirs: Vec<CString> = Vec::new();
        for entry in entries.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            subdirs.push(name.to_owned());
        }
        let parent = entries.as_raw_fd();
        for name in subdirs {
            let st = match fstatat(Some(parent), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if st.st_uid == uid || st.st_gid == uid {
                nix::unistd::fchownat(
                    Some(parent),
                    name.as_c_str(),
                    Some(owner.0),
                    Some(owner.1),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
            }
            let is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
            // Another file system mounted there is not the task's.
            if is_dir && st.st_dev == top.st_dev {
                match reopen(parent, &name) {
                    Ok(sub) => stack.push(sub),
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn dir(path: &std::path::Path) -> OwnedFd {
        sys::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    const R: UidRange = UidRange {
        first: 1_879_200_000,
        last: 1_879_200_002,
    };

    #[test]
    fn leases_are_exclusive_and_walk_the_range() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("tasks")).unwrap();
        let d = dir(data.path());
        let tasks = dir(&data.path().join("tasks"));
        let leases = Leases::open(d.as_fd(), R).unwrap();
        let me = (nix::unistd::geteuid(), nix::unistd::getegid());
        // The three tasks' dirs carry a claim by this (live) process.
        let claim = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: execgo_runtime_protocol::taskdir::own_start_ticks().unwrap(),
        };
        let mut got = Vec::new();
        for t in ["a", "b", "c"] {
            std::fs::create_dir(data.path().join("tasks").join(t)).unwrap();
            std::os::unix::fs::symlink(
                claim.encode(),
                data.path().join("tasks").join(t).join(CLAIM),
            )
            .unwrap();
            got.push(leases.acquire(t, tasks.as_fd(), me).unwrap());
        }
        got.sort();
        assert_eq!(got, [R.first, R.first + 1, R.last], "each uid once");
        let e = leases.acquire("d", tasks.as_fd(), me).unwrap_err();
        assert!(matches!(e, LeaseError::Exhausted(_)), "{e}");
        // A lease given back is taken again; forget() removes only the
        // named task's lease.
        let b = got[1];
        let holder = std::fs::read_link(data.path().join(LEASE_DIR).join(b.to_string())).unwrap();
        forget(leases.dir(), b, "not-the-holder");
        assert!(leases.acquire("d", tasks.as_fd(), me).is_err());
        forget(leases.dir(), b, holder.to_str().unwrap());
        assert_eq!(leases.acquire("d", tasks.as_fd(), me).unwrap(), b);
    }

    #[test]
    fn a_lease_whose_task_dir_is_gone_or_whose_shim_is_dead_is_stale() {
        if !root() {
            eprintln!("skipped: releasing a stale lease kills as its uid, which needs root");
            return;
        }
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("tasks/dead/workspace")).unwrap();
        let d = dir(data.path());
        let tasks = dir(&data.path().join("tasks"));
        let one = UidRange {
            first: R.first,
            last: R.first,
        };
        let leases = Leases::open(d.as_fd(), one).unwrap();
        let me = (nix::unistd::geteuid(), nix::unistd::getegid());
        // The dead task's shim: a pid that is not alive with those ticks.
        let dead = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: 1,
        };
        std::os::unix::fs::symlink(dead.encode(), data.path().join("tasks/dead").join(CLAIM))
            .unwrap();
        let ws = data.path().join("tasks/dead/workspace");
        std::fs::write(ws.join("left"), "x").unwrap();
        std::os::unix::fs::chown(&ws, Some(one.first), Some(one.first)).unwrap();
        std::os::unix::fs::chown(ws.join("left"), Some(one.first), Some(one.first)).unwrap();
        std::os::unix::fs::symlink(
            "dead",
            data.path().join(LEASE_DIR).join(one.first.to_string()),
        )
        .unwrap();
        assert_eq!(leases.acquire("new", tasks.as_fd(), me).unwrap(), one.first);
        assert_eq!(
            std::fs::metadata(ws.join("left")).unwrap().uid(),
            0,
            "handed back"
        );
        assert_eq!(std::fs::metadata(&ws).unwrap().uid(), 0);
        // Taken by "new" now, whose task dir does not exist: stale too.
        assert_eq!(
            leases.acquire("newer", tasks.as_fd(), me).unwrap(),
            one.first
        );
    }

    #[test]
    fn an_unclaimed_lease_is_kept_for_a_starting_shim() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("tasks/starting")).unwrap();
        let d = dir(data.path());
        let tasks = dir(&data.path().join("tasks"));
        let one = UidRange {
            first: R.first,
            last: R.first,
        };
        let leases = Leases::open(d.as_fd(), one).unwrap();
        let me = (nix::unistd::geteuid(), nix::unistd::getegid());
        assert_eq!(
            leases.acquire("starting", tasks.as_fd(), me).unwrap(),
            one.first
        );
        assert!(matches!(
            leases.acquire("other", tasks.as_fd(), me),
            Err(LeaseError::Exhausted(_))
        ));
    }

    #[test]
    fn the_lease_dir_must_be_closed_to_others() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(LEASE_DIR)).unwrap();
        std::fs::set_permissions(
            data.path().join(LEASE_DIR),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let d = dir(data.path());
        let e = Leases::open(d.as_fd(), R).err().unwrap();
        assert!(e.to_string().contains("mode 755"), "{e}");
    }

    #[test]
    fn hand_back_changes_only_the_uids_entries_and_follows_nothing() {
        if !root() {
            eprintln!("skipped: chown to another uid needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "").unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::write(ws.join("a/b/f"), "").unwrap();
        std::fs::write(ws.join("other"), "").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), ws.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.join("dirlink")).unwrap();
        let uid = R.first;
        for p in ["", "a", "a/b", "a/b/f"] {
            std::os::unix::fs::chown(ws.join(p), Some(uid), Some(uid)).unwrap();
        }
        std::os::unix::fs::lchown(ws.join("a/link"), Some(uid), Some(uid)).unwrap();
        std::os::unix::fs::lchown(ws.join("dirlink"), Some(uid), Some(uid)).unwrap();
        std::os::unix::fs::chown(ws.join("other"), Some(4242), Some(4242)).unwrap();
        std::os::unix::fs::chown(outside.path().join("victim"), Some(uid), Some(uid)).unwrap();
        let to = (Uid::from_raw(7), Gid::from_raw(8));
        hand_back(dir(&ws).as_fd(), uid, to).unwrap();
        for p in ["", "a", "a/b", "a/b/f"] {
            let m = std::fs::metadata(ws.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (7, 8), "{p}");
        }
        let l = std::fs::symlink_metadata(ws.join("a/link")).unwrap();
        assert_eq!(l.uid(), 7, "the link itself");
        assert_eq!(std::fs::metadata(ws.join("other")).unwrap().uid(), 4242);
        let v = std::fs::metadata(outside.path().join("victim")).unwrap();
        assert_eq!(v.uid(), uid, "nothing behind a link is touched");
    }

    #[test]
    fn kill_all_kills_every_process_of_the_uid_and_only_those() {
        if !root() {
            eprintln!("skipped: killing as another uid needs root");
            return;
        }
        use std::os::unix::process::CommandExt;
        let uid = R.last;
        let spawn = |as_uid: u32| {
            std::process::Command::new("/bin/sleep")
                .arg("30")
                .uid(as_uid)
                .gid(as_uid)
                .spawn()
                .unwrap()
        };
        let mut victims = [spawn(uid), spawn(uid)];
        let mut bystander = spawn(uid + 1);
        kill_all(uid, || {
            for v in victims.iter_mut() {
                let _ = v.try_wait();
            }
        })
        .unwrap();
        for v in victims.iter_mut() {
            let st = v.wait().unwrap();
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
        }
        assert!(bystander.try_wait().unwrap().is_none(), "another uid lives");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
        // Nobody left: done at once.
        assert!(!any_process_of(uid));
        kill_all(uid, || {}).unwrap();
    }

    #[test]
    fn the_uid_line_of_a_status_is_read_whole() {
        let status = "Name:\tsleep\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n";
        for uid in [1000, 1001, 1002, 1003] {
            assert!(status_has_uid(status, uid));
        }
        assert!(!status_has_uid(status, 5), "the gid line is not the uid's");
        assert!(!status_has_uid(status, 100));
        assert!(!status_has_uid("Name: x\n", 0));
    }
}
