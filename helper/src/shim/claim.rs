//! `shim.claim`: the single-run guard of a task. The first shim creates it
//! as a symlink whose target is the claim record,
//! `{"shim_pid":N,"shim_start_ticks":N}`, with symlinkat(2); any later shim
//! for the same task gets EEXIST, logs that claim and exits without
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

use std::os::fd::{AsRawFd, BorrowedFd};

pub use execgo_runtime_protocol::taskdir::{ClaimRecord, CLAIM};
use nix::errno::Errno;

use crate::fs_at;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("creating {CLAIM} failed")]
    Create(#[source] Errno),
    #[error("syncing the task directory failed")]
    SyncDir(#[source] Errno),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// We own the task now.
    Taken,
    /// An earlier shim did; its record, or [`ClaimRecord::UNKNOWN`] when
    /// what is in the way is not a record.
    Existing(ClaimRecord),
}

/// Claims the task. Not durable yet: the caller creates the other entries
/// that must be durable before the task starts (the result's temp file),
/// then calls [`make_durable`], so one directory fsync covers them all.
pub fn take(dir: BorrowedFd<'_>, me: ClaimRecord) -> Result<Claim, ClaimError> {
    let record = me.encode();
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

/// The record of the claim in `dir`; [`ClaimRecord::UNKNOWN`] when there
/// is none or it is not a record.
pub fn read_existing(dir: BorrowedFd<'_>) -> ClaimRecord {
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), CLAIM)
        .ok()
        .and_then(|target| ClaimRecord::parse(target.as_encoded_bytes()))
        .unwrap_or(ClaimRecord::UNKNOWN)
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
    fn unreadable_claims_read_as_zero() {
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        // A plain file in the way.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CLAIM), b"").unwrap();
        let d = dir(tmp.path());
        assert_eq!(
            take(d.as_fd(), me).unwrap(),
            Claim::Existing(ClaimRecord::UNKNOWN)
        );
        // Something else in the way: still claimed, never run.
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("not a record", tmp.path().join(CLAIM)).unwrap();
        let d = dir(tmp.path());
        assert_eq!(
            take(d.as_fd(), me).unwrap(),
            Claim::Existing(ClaimRecord::UNKNOWN)
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(CLAIM)).unwrap();
        let d = dir(tmp.path());
        assert_eq!(
            take(d.as_fd(), me).unwrap(),
            Claim::Existing(ClaimRecord::UNKNOWN)
        );
    }
}
