//! Task uid leases: which uid of `--task-uid-range` belongs to which task.
//!
//! A lease is a symlink `/run/execgo-runtime-task-uids/<uid>` whose target
//! is the task's directory, `<data dir>/tasks/<task id>`. The table is the
//! host's, not a data dir's: two runtimes on one host (with data dirs of
//! their own, and the same default range) never hand out the same uid.
//! `symlinkat` fails on an existing name, so taking a uid is one exclusive
//! system call, and the table survives a `kill -9` of every component: it
//! is the directory itself. It is root's, mode 0700, on `/run`: neither a
//! runtime nor a task can touch it, and a reboot, which ends every
//! process, empties it.
//!
//! The rules:
//! - the helper takes a lease for a launch before the shim exists, from a
//!   cursor that walks the range, so consecutive tasks get different uids
//!   without looking at each other's leases;
//! - the task's shim gives its lease back once the task is over: every
//!   process of the uid is killed ([`kill_all`]), everything the task left
//!   in its workspace is handed to the runtime's user ([`hand_back`]), and
//!   only then is the symlink removed;
//! - a lease a helper finds in its way is stale when the shim that
//!   claimed its task is gone (or the task directory is); the helper then
//!   does the shim's release itself and takes the uid. A lease whose task
//!   has no claim yet belongs to a shim still starting and is left alone
//!   for [`UNCLAIMED_GRACE`].
//!
//! So a uid never goes to a second task while a process of the first runs
//! or a file it left in its workspace still belongs to it.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use execgo_runtime_protocol::taskdir::{is_alive, ClaimRecord, CLAIM, WORKSPACE};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use crate::identity::UidRange;
use crate::{fs_at, sys};

/// Where the host's task uid leases are.
pub const LEASE_DIR: &str = "/run/execgo-runtime-task-uids";

/// How long a lease whose task has no claim is taken for a shim still
/// starting. A shim claims its task within milliseconds of its launch.
pub const UNCLAIMED_GRACE: Duration = Duration::from_secs(60);

/// How long [`kill_all`] keeps killing before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("creating or opening the task uid lease directory {0} failed")]
    Open(String, #[source] Errno),
    #[error("the task uid lease directory {path} belongs to uid {uid} with mode {mode:o}; it must be the helper's (uid {own}) and closed to everyone else")]
    Unsafe {
        path: String,
        uid: u32,
        mode: u32,
        own: u32,
    },
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

/// The lease table, this helper's data dir, and the cursor it takes uids
/// from.
pub struct Leases {
    dir: OwnedFd,
    /// Our data dir, canonical: leases name `<data_dir>/tasks/<id>`.
    data_dir: String,
    range: UidRange,
    /// How many uids the cursor has passed since start.
    cursor: Cell<u64>,
}

/// A lease found stale, and what its release needs.
struct Stale {
    /// The lease's target, as read.
    target: String,
    /// The task's workspace, when it still exists.
    workspace: Option<OwnedFd>,
    /// Who gets its files: the owner of its data dir.
    owner: (Uid, Gid),
}

impl Leases {
    /// Creates (mode 0700) or opens the lease directory `dir` (its parent
    /// must exist), and checks it is ours and closed to everyone else.
    /// `data_dir` is this helper's, canonical. The cursor starts at a
    /// place drawn from the clock and the process id, so helpers started
    /// together, or one restarted, do not walk first through the same
    /// uids.
    pub fn open(dir: &Path, data_dir: &str, range: UidRange) -> Result<Leases, LeaseError> {
        let path = dir.display().to_string();
        let open_err = |e| LeaseError::Open(path.clone(), e);
        match nix::unistd::mkdir(dir, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(open_err(e)),
        }
        let fd = sys::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(open_err)?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(open_err)?;
        let own = nix::unistd::geteuid().as_raw();
        if st.st_uid != own || st.st_mode & 0o077 != 0 {
            return Err(LeaseError::Unsafe {
                path,
                uid: st.st_uid,
                mode: st.st_mode & 0o7777,
                own,
            });
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
            ^ (u64::from(std::process::id()) << 20);
        Ok(Leases {
            dir: fd,
            data_dir: data_dir.to_string(),
            range,
            cursor: Cell::new(seed),
        })
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    /// The lease directory, kept open by shims (they give their lease back).
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// What a lease of `task_id` of this data dir names.
    fn target(&self, task_id: &str) -> String {
        format!("{}/tasks/{task_id}", self.data_dir)
    }

    /// Takes a uid for `task_id`: the next one after the cursor that is
    /// free, or whose lease is stale (released first, see the module
    /// documentation).
    pub fn acquire(&self, task_id: &str) -> Result<u32, LeaseError> {
        let target = self.target(task_id);
        for _ in 0..self.range.len() {
            let n = self.cursor.get();
            self.cursor.set(n.wrapping_add(1));
            let uid = self.range.nth(n);
            let name = uid.to_string();
            match nix::unistd::symlinkat(target.as_str(), Some(self.dir.as_raw_fd()), name.as_str())
            {
                Ok(()) => return Ok(uid),
                Err(Errno::EEXIST) => {}
                Err(source) => return Err(LeaseError::Take { uid, source }),
            }
            let Some(stale) = self.stale(&name) else {
                continue;
            };
            if let Err(e) =
                self.release_target(uid, &stale.target, stale.workspace.as_ref(), stale.owner)
            {
                tracing::warn!(
                    target: crate::logging::TARGET,
                    uid,
                    holder = stale.target.as_str(),
                    error = %crate::logging::chain(&e),
                    "a stale task uid lease could not be released; the uid stays leased"
                );
                continue;
            }
            tracing::info!(
                target: crate::logging::TARGET,
                uid,
                holder = stale.target.as_str(),
                "released the task uid of a task whose shim is gone"
            );
            match nix::unistd::symlinkat(target.as_str(), Some(self.dir.as_raw_fd()), name.as_str())
            {
                Ok(()) => return Ok(uid),
                Err(Errno::EEXIST) => {}
                Err(source) => return Err(LeaseError::Take { uid, source }),
            }
        }
        Err(LeaseError::Exhausted(self.range))
    }

    /// The uids leased to `task_id` of this data dir (one, unless a
    /// repeated launch's shim died before it removed its own).
    pub fn held_by(&self, task_id: &str) -> Result<Vec<u32>, Errno> {
        let target = self.target(task_id);
        let fd = sys::openat(
            self.dir.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Dir::from_fd(fd.into_raw_fd())?;
        let dir = entries.as_raw_fd();
        let mut uids = Vec::new();
        for entry in entries.iter() {
            let entry = entry?;
            let Some(uid) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let holder = nix::fcntl::readlinkat(Some(dir), entry.file_name());
            if holder.is_ok_and(|h| h.as_encoded_bytes() == target.as_bytes()) {
                uids.push(uid);
            }
        }
        Ok(uids)
    }

    /// Gives `task_id`'s lease `uid` back (see [`Self::release_target`]).
    pub fn release(
        &self,
        uid: u32,
        task_id: &str,
        workspace: Option<&OwnedFd>,
        owner: (Uid, Gid),
    ) -> Result<(), LeaseError> {
        self.release_target(uid, &self.target(task_id), workspace, owner)
    }

    /// Gives a lease back: kills every process of `uid`, hands what the
    /// task left in `workspace` (when there is one) to `owner`, then
    /// removes the lease if it still names `target`. On an error the
    /// lease stays: a uid that may still be in use is never handed out
    /// again.
    fn release_target(
        &self,
        uid: u32,
        target: &str,
        workspace: Option<&OwnedFd>,
        owner: (Uid, Gid),
    ) -> Result<(), LeaseError> {
        kill_all(uid, || {})?;
        if let Some(dir) = workspace {
            hand_back(dir.as_fd(), uid, owner)
                .map_err(|source| LeaseError::HandBack { uid, source })?;
        }
        self.forget_target(uid, target);
        Ok(())
    }

    /// Removes lease `uid` if it names `task_id` of this data dir (a lease
    /// taken for a launch that ran nothing, or one given back).
    pub fn forget(&self, uid: u32, task_id: &str) {
        self.forget_target(uid, &self.target(task_id));
    }

    fn forget_target(&self, uid: u32, target: &str) {
        let name = uid.to_string();
        let ours = nix::fcntl::readlinkat(Some(self.dir.as_raw_fd()), name.as_str())
            .is_ok_and(|t| t.as_encoded_bytes() == target.as_bytes());
        if ours {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.as_raw_fd()),
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }

    /// Lease `name` when it is stale: its task directory is gone, or its
    /// claim names a shim that is not alive, or it has no claim
    /// [`UNCLAIMED_GRACE`] after the lease was made. The task directory is
    /// found from `/` without following a symlink, whichever data dir it
    /// is in.
    fn stale(&self, name: &str) -> Option<Stale> {
        let target = nix::fcntl::readlinkat(Some(self.dir.as_raw_fd()), name).ok()?;
        let target = target.to_str()?.to_string();
        let (data_dir, task_id) = target.rsplit_once("/tasks/")?;
        if !execgo_runtime_protocol::valid_absolute_path(data_dir)
            || !execgo_runtime_protocol::valid_task_id(task_id)
        {
            // Not a helper's: nothing the helper writes looks like this.
            return None;
        }
        let root = sys::open(
            Path::new("/"),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let gone = |target: String| Stale {
            target,
            workspace: None,
            owner: (Uid::from_raw(0), Gid::from_raw(0)),
        };
        let Ok(data) = fs_at::open_dir_beneath(root.as_fd(), &data_dir[1..]) else {
            return Some(gone(target));
        };
        let Ok(task_dir) = fs_at::open_dir(data.as_fd(), "tasks")
            .and_then(|tasks| fs_at::open_dir(tasks.as_fd(), task_id))
        else {
            return Some(gone(target));
        };
        match nix::fcntl::readlinkat(Some(task_dir.as_raw_fd()), CLAIM) {
            Ok(claim) => {
                let record =
                    ClaimRecord::parse(claim.as_encoded_bytes()).unwrap_or(ClaimRecord::UNKNOWN);
                if is_alive(record.shim_pid, record.shim_start_ticks) {
                    return None;
                }
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
                if age <= UNCLAIMED_GRACE.as_secs() {
                    return None;
                }
            }
        }
        let st = nix::sys::stat::fstat(data.as_raw_fd()).ok()?;
        Some(Stale {
            target,
            workspace: fs_at::open_dir(task_dir.as_fd(), WORKSPACE).ok(),
            owner: (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid)),
        })
    }
}

/// Kills every process whose uid is `uid`, wherever it moved its group,
/// session or cgroup, until `/proc` shows none: a child takes the uid and
/// sends SIGKILL to every process it may signal (`kill(-1)`: those whose
/// real or saved uid is `uid`). The kernel's answer to `kill(-1)` cannot
/// tell "none" from "none permitted", hence the look at `/proc`; one round
/// is sent whatever `/proc` shows, as a `/proc` mounted `hidepid` may hide
/// them. `between` runs after each round, to reap what comes to the
/// caller.
pub fn kill_all(uid: u32, mut between: impl FnMut()) -> Result<(), LeaseError> {
    let deadline = Instant::now() + KILL_PATIENCE;
    loop {
        kill_round(uid)?;
        between();
        if !any_process_of(uid) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LeaseError::Survivors(uid));
        }
        // The kernel takes a moment to tear the killed down.
        std::thread::sleep(Duration::from_millis(2));
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
/// same number) to `owner`, `dir` included, and opens each such directory
/// to its new owner (`u+rwx`, as a task may leave read-only ones): the
/// runtime's user can then read and remove what the task left. Nothing is
/// followed: entries are looked at and changed with `AT_SYMLINK_NOFOLLOW`,
/// directories opened `O_NOFOLLOW` and only on `dir`'s file system. Only
/// called once no process of `uid` is left, so nothing moves underneath.
pub fn hand_back(dir: BorrowedFd<'_>, uid: u32, owner: (Uid, Gid)) -> Result<(), Errno> {
    let top = nix::sys::stat::fstat(dir.as_raw_fd())?;
    if top.st_uid == uid || top.st_gid == uid {
        nix::unistd::fchown(dir.as_raw_fd(), Some(owner.0), Some(owner.1))?;
        open_to_owner(dir.as_raw_fd(), top.st_mode)?;
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
                    Ok(sub) => {
                        if st.st_uid == uid || st.st_gid == uid {
                            open_to_owner(sub.as_raw_fd(), st.st_mode)?;
                        }
                        stack.push(sub);
                    }
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Adds `u+rwx` to an open directory's `mode`, if it lacks any of them.
fn open_to_owner(dir: RawFd, mode: u32) -> Result<(), Errno> {
    if mode & 0o700 != 0o700 {
        nix::sys::stat::fchmod(dir, Mode::from_bits_truncate((mode & 0o7777) | 0o700))?;
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

    /// A lease table in a tempdir and a data dir beside it, canonical.
    fn fixture(range: UidRange) -> (tempfile::TempDir, std::path::PathBuf, Leases) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("tasks")).unwrap();
        let data = std::fs::canonicalize(data).unwrap();
        let leases =
            Leases::open(&tmp.path().join("leases"), data.to_str().unwrap(), range).unwrap();
        (tmp, data, leases)
    }

    fn live_claim(task_dir: &std::path::Path) {
        let claim = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: execgo_runtime_protocol::taskdir::own_start_ticks().unwrap(),
        };
        std::fs::create_dir_all(task_dir).unwrap();
        std::os::unix::fs::symlink(claim.encode(), task_dir.join(CLAIM)).unwrap();
    }

    #[test]
    fn leases_are_exclusive_and_walk_the_range() {
        let (tmp, data, leases) = fixture(R);
        let mut got = Vec::new();
        for t in ["a", "b", "c"] {
            live_claim(&data.join("tasks").join(t));
            got.push(leases.acquire(t).unwrap());
        }
        let lease = |uid: u32| std::fs::read_link(tmp.path().join("leases").join(uid.to_string()));
        assert_eq!(
            lease(got[0]).unwrap(),
            data.join("tasks/a"),
            "a lease names its task's directory"
        );
        got.sort();
        assert_eq!(got, [R.first, R.first + 1, R.last], "each uid once");
        let e = leases.acquire("d").unwrap_err();
        assert!(matches!(e, LeaseError::Exhausted(_)), "{e}");
        assert!(e.to_string().contains("1879200000-1879200002"), "{e}");
        // Given back, a uid is taken again; forget() removes only the named
        // task's lease.
        let b = leases.held_by("b").unwrap();
        assert_eq!(b.len(), 1);
        leases.forget(b[0], "not-the-holder");
        assert!(leases.acquire("d").is_err());
        leases.forget(b[0], "b");
        assert!(lease(b[0]).is_err());
        assert_eq!(leases.acquire("d").unwrap(), b[0]);
        assert_eq!(leases.held_by("d").unwrap(), b);
    }

    #[test]
    fn two_data_dirs_share_one_table() {
        let tmp = tempfile::tempdir().unwrap();
        let one = UidRange {
            first: R.first,
            last: R.first,
        };
        let mut tables = Vec::new();
        for name in ["x", "y"] {
            let data = tmp.path().join(name);
            std::fs::create_dir_all(data.join("tasks/t")).unwrap();
            live_claim(&data.join("tasks/t"));
            let data = std::fs::canonicalize(data).unwrap();
            tables.push(
                Leases::open(&tmp.path().join("leases"), data.to_str().unwrap(), one).unwrap(),
            );
        }
        assert_eq!(tables[0].acquire("t").unwrap(), one.first);
        assert!(
            matches!(tables[1].acquire("t"), Err(LeaseError::Exhausted(_))),
            "the other data dir's running task holds the one uid"
        );
    }

    #[test]
    fn a_lease_whose_task_dir_is_gone_or_whose_shim_is_dead_is_stale() {
        if !root() {
            eprintln!("skipped: releasing a stale lease kills as its uid, which needs root");
            return;
        }
        let one = UidRange {
            first: R.first,
            last: R.first,
        };
        let (tmp, data, leases) = fixture(one);
        let task = data.join("tasks/dead");
        std::fs::create_dir_all(task.join("workspace")).unwrap();
        // The dead task's shim: a pid that is not alive with those ticks.
        let dead = ClaimRecord {
            shim_pid: std::process::id() as i32,
            shim_start_ticks: 1,
        };
        std::os::unix::fs::symlink(dead.encode(), task.join(CLAIM)).unwrap();
        let ws = task.join("workspace");
        std::fs::write(ws.join("left"), "x").unwrap();
        std::os::unix::fs::chown(&ws, Some(one.first), Some(one.first)).unwrap();
        std::os::unix::fs::chown(ws.join("left"), Some(one.first), Some(one.first)).unwrap();
        std::os::unix::fs::symlink(&task, tmp.path().join("leases").join(one.first.to_string()))
            .unwrap();
        assert_eq!(leases.acquire("new").unwrap(), one.first);
        let data_owner = std::fs::metadata(&data).unwrap().uid();
        assert_eq!(
            std::fs::metadata(ws.join("left")).unwrap().uid(),
            data_owner,
            "handed back"
        );
        assert_eq!(std::fs::metadata(&ws).unwrap().uid(), data_owner);
        // Taken by "new" now, whose task dir does not exist: stale too.
        assert_eq!(leases.acquire("newer").unwrap(), one.first);
        // A target no helper writes is never taken for stale.
        std::fs::remove_file(tmp.path().join("leases").join(one.first.to_string())).unwrap();
        std::os::unix::fs::symlink(
            "elsewhere",
            tmp.path().join("leases").join(one.first.to_string()),
        )
        .unwrap();
        assert!(leases.acquire("newest").is_err());
    }

    #[test]
    fn an_unclaimed_lease_is_kept_for_a_starting_shim() {
        let one = UidRange {
            first: R.first,
            last: R.first,
        };
        let (_tmp, data, leases) = fixture(one);
        std::fs::create_dir_all(data.join("tasks/starting")).unwrap();
        assert_eq!(leases.acquire("starting").unwrap(), one.first);
        assert!(matches!(
            leases.acquire("other"),
            Err(LeaseError::Exhausted(_))
        ));
    }

    #[test]
    fn the_lease_dir_must_be_closed_to_others() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("leases")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("leases"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let e = Leases::open(&tmp.path().join("leases"), "/d", R)
            .err()
            .unwrap();
        assert!(e.to_string().contains("mode 755"), "{e}");
        let fresh = tmp.path().join("fresh");
        Leases::open(&fresh, "/d", R).unwrap();
        let m = std::fs::metadata(&fresh).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700, "created closed");
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
        // A read-only directory the task left: opened to the new owner.
        std::fs::set_permissions(
            ws.join("a/b"),
            std::os::unix::fs::PermissionsExt::from_mode(0o500),
        )
        .unwrap();
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
        let m = std::fs::metadata(ws.join("a/b")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700, "u+rwx added, nothing else");
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
