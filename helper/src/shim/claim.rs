//! `shim.claim`: the single-run guard of a task. The first shim creates it
//! as a symlink whose target is the claim record,
//! `{"shim_pid":N,"shim_start_ticks":N}`, with symlinkat(2); any later shim
//! for the same task gets EEXIST, reports that claim and exits without
//! running anything. The runtime reads it back (readlink) after a crash.
//!
//! Why a symlink: symlinkat is exclusive like `O_CREAT|O_EXCL` and creates
//! the name and its content in one step, so a claim is never seen empty
//! (a file would be, between its create and its write) and it needs no
//! fsync of its own: the target lives in the symlink's inode (ext4 keeps
//! targets under 60 bytes there, XFS and btrfs inline short ones too; a
//! record is at most ~53 bytes, see the tests), which a journaling file
//! system (ext4 with its default journal, XFS, btrfs) commits in the same
//! transaction as the directory entry, so the directory's fsync makes both
//! durable. Caveat: ext4 *without* a journal
//! writes the new inode back on its own schedule, so after a power loss
//! there the entry may survive without its content; that file system keeps
//! no ordering promise for metadata at all (it needs fsck after a crash).
//!
//! Claims written by older shims are regular files holding the same JSON;
//! they are still read (readlinkat fails with EINVAL on them).

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::fs_at::{self, Access};

pub const CLAIM: &str = "shim.claim";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("encoding the claim failed")]
    Encode(#[source] serde_json::Error),
    #[error("creating {CLAIM} failed")]
    Create(#[source] Errno),
    #[error("syncing the task directory failed")]
    SyncDir(#[source] Errno),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// We own the task now.
    Taken,
    /// An earlier shim did; its record, or zeros if unreadable (a claim
    /// file of an older shim may be between its create and its write).
    Existing(ClaimRecord),
}

/// Claims the task. Not durable yet: the caller creates the other entries
/// that must be durable before the task starts (the result's temp file),
/// then calls [`make_durable`], so one directory fsync covers them all.
pub fn take(dir: BorrowedFd<'_>, me: ClaimRecord) -> Result<Claim, ClaimError> {
    let record = serde_json::to_string(&me).map_err(ClaimError::Encode)?;
    match nix::unistd::symlinkat(record.as_str(), Some(dir.as_raw_fd()), CLAIM) {
        Ok(()) => Ok(Claim::Taken),
        Err(Errno::EEXIST) => Ok(Claim::Existing(read_existing(dir))),
        Err(e) => Err(ClaimError::Create(e)),
    }
}

/// fsync of the task directory: makes a [`take`]n claim durable (see the
/// module documentation for why that covers its record) together with every
/// entry created in the directory since.
pub fn make_durable(dir: BorrowedFd<'_>) -> Result<(), ClaimError> {
    fs_at::sync_dir(dir).map_err(ClaimError::SyncDir)
}

fn read_existing(dir: BorrowedFd<'_>) -> ClaimRecord {
    let bytes = match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), CLAIM) {
        Ok(target) => Some(target.into_vec()),
        // Not a symlink: a claim file of an older shim.
        Err(Errno::EINVAL) => read_file(dir),
        Err(_) => None,
    };
    bytes.and_then(|b| parse(&b)).unwrap_or(ClaimRecord {
        shim_pid: 0,
        shim_start_ticks: 0,
    })
}

fn read_file(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    fs_at::open_file(dir, CLAIM, Access::Read)
        .ok()?
        .take(4096)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

pub fn parse(bytes: &[u8]) -> Option<ClaimRecord> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::{AsFd, OwnedFd};

    fn dir(path: &std::path::Path) -> OwnedFd {
        crate::sys::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    const ZERO: ClaimRecord = ClaimRecord {
        shim_pid: 0,
        shim_start_ticks: 0,
    };

    #[test]
    fn first_claim_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        assert_eq!(take(d.as_fd(), me).unwrap(), Claim::Taken);
        make_durable(d.as_fd()).unwrap();
        // A symlink whose target is the record.
        let path = tmp.path().join(CLAIM);
        assert!(path.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(&path).unwrap().to_str().unwrap(),
            r#"{"shim_pid":7,"shim_start_ticks":99}"#
        );
        let other = ClaimRecord {
            shim_pid: 8,
            shim_start_ticks: 100,
        };
        assert_eq!(take(d.as_fd(), other).unwrap(), Claim::Existing(me));
        // The loser changed nothing.
        assert_eq!(
            std::fs::read_link(&path).unwrap().to_str().unwrap(),
            r#"{"shim_pid":7,"shim_start_ticks":99}"#
        );
    }

    #[test]
    fn records_fit_in_the_inode() {
        // PID_MAX_LIMIT, and 100 years of uptime at 1000 ticks a second:
        // still a "fast" symlink on ext4 (target under 60 bytes).
        let big = ClaimRecord {
            shim_pid: 4_194_304,
            shim_start_ticks: 100 * 365 * 24 * 3600 * 1000,
        };
        assert!(serde_json::to_string(&big).unwrap().len() < 60);
    }

    #[test]
    fn a_claim_file_of_an_older_shim_still_counts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(CLAIM),
            br#"{"shim_pid":5,"shim_start_ticks":6}"#,
        )
        .unwrap();
        let d = dir(tmp.path());
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        assert_eq!(
            take(d.as_fd(), me).unwrap(),
            Claim::Existing(ClaimRecord {
                shim_pid: 5,
                shim_start_ticks: 6
            })
        );
    }

    #[test]
    fn unreadable_claims_read_as_zero() {
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        // An older shim's file between its create and its write.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CLAIM), b"").unwrap();
        let d = dir(tmp.path());
        assert_eq!(take(d.as_fd(), me).unwrap(), Claim::Existing(ZERO));
        // Something else in the way: still claimed, never run.
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("not a record", tmp.path().join(CLAIM)).unwrap();
        let d = dir(tmp.path());
        assert_eq!(take(d.as_fd(), me).unwrap(), Claim::Existing(ZERO));
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(CLAIM)).unwrap();
        let d = dir(tmp.path());
        assert_eq!(take(d.as_fd(), me).unwrap(), Claim::Existing(ZERO));
        assert_eq!(parse(b"{\"shim_pid\":1}"), None);
    }
}
