//! `shim.claim`: the single-run guard of a task. The first shim creates it
//! with `O_CREAT|O_EXCL` and writes `{"shim_pid":N,"shim_start_ticks":N}`;
//! any later shim for the same task finds it, reports that claim and exits
//! without running anything. The runtime reads it back after a crash.

use std::io::{Read, Write};
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::fs_at::{self, Access, AtError};

pub const CLAIM: &str = "shim.claim";

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("creating {CLAIM} failed")]
    Create(#[source] AtError),
    #[error("writing {CLAIM} failed")]
    Write(#[source] std::io::Error),
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
    /// An earlier shim did; its record, or zeros if unreadable (the earlier
    /// shim may be between create and write).
    Existing(ClaimRecord),
}

/// Claims the task, durably: file and directory are fsynced before the
/// task can start.
pub fn claim(dir: BorrowedFd<'_>, me: ClaimRecord) -> Result<Claim, ClaimError> {
    let mut file = match fs_at::open_file(dir, CLAIM, Access::CreateNew(0o644)) {
        Ok(f) => f,
        Err(e) if e.open_errno() == Some(Errno::EEXIST) => {
            return Ok(Claim::Existing(read_existing(dir)))
        }
        Err(e) => return Err(ClaimError::Create(e)),
    };
    let bytes = serde_json::to_vec(&me).map_err(|e| ClaimError::Write(e.into()))?;
    file.write_all(&bytes).map_err(ClaimError::Write)?;
    file.sync_all().map_err(ClaimError::Write)?;
    fs_at::sync_dir(dir).map_err(ClaimError::SyncDir)?;
    Ok(Claim::Taken)
}

fn read_existing(dir: BorrowedFd<'_>) -> ClaimRecord {
    let mut bytes = Vec::new();
    let read = fs_at::open_file(dir, CLAIM, Access::Read)
        .ok()
        .and_then(|f| f.take(4096).read_to_end(&mut bytes).ok());
    read.and_then(|_| parse(&bytes)).unwrap_or(ClaimRecord {
        shim_pid: 0,
        shim_start_ticks: 0,
    })
}

pub fn parse(bytes: &[u8]) -> Option<ClaimRecord> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use std::os::fd::AsFd;

    #[test]
    fn first_claim_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        assert_eq!(claim(d.as_fd(), me).unwrap(), Claim::Taken);
        let written = std::fs::read_to_string(tmp.path().join(CLAIM)).unwrap();
        assert_eq!(written, r#"{"shim_pid":7,"shim_start_ticks":99}"#);
        let other = ClaimRecord {
            shim_pid: 8,
            shim_start_ticks: 100,
        };
        assert_eq!(claim(d.as_fd(), other).unwrap(), Claim::Existing(me));
    }

    #[test]
    fn unreadable_claim_reads_as_zero() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CLAIM), b"").unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let me = ClaimRecord {
            shim_pid: 7,
            shim_start_ticks: 99,
        };
        assert_eq!(
            claim(d.as_fd(), me).unwrap(),
            Claim::Existing(ClaimRecord {
                shim_pid: 0,
                shim_start_ticks: 0
            })
        );
        assert_eq!(parse(b"{\"shim_pid\":1}"), None);
    }
}
