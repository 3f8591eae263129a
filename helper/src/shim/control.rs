//! The kill FIFO `tasks/<id>/control`. The runtime writes the byte `K` to
//! ask for the task to be killed; the shim polls the FIFO in its event loop.
//! The shim holds it open read-write, so it never sees end-of-file when a
//! writer closes, and a writer's non-blocking open succeeds exactly while a
//! shim is alive (ENXIO otherwise; see fifo(7)).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{Uid, UnlinkatFlags};

use crate::sys;

pub use execgo_runtime_protocol::taskdir::{CONTROL, KILL_BYTE as KILL};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("removing a stale {CONTROL} failed")]
    RemoveStale(#[source] Errno),
    #[error("mkfifoat {CONTROL} failed")]
    Create(#[source] Errno),
    #[error("handing {CONTROL} to uid {uid} failed")]
    Chown {
        uid: u32,
        #[source]
        source: Errno,
    },
    #[error("opening {CONTROL} failed")]
    Open(#[source] Errno),
    #[error("{CONTROL} was replaced by something that is not our fifo")]
    NotFifo,
    #[error("reading {CONTROL} failed")]
    Read(#[source] std::io::Error),
}

/// Creates the FIFO (mode 0600) and opens it. `owner`: the runtime's uid,
/// when it is not ours, so that it may write the FIFO.
pub fn create(dir: BorrowedFd<'_>, owner: Option<Uid>) -> Result<File, ControlError> {
    let raw = Some(dir.as_raw_fd());
    let mkfifo = || nix::unistd::mkfifoat(raw, CONTROL, Mode::from_bits_truncate(0o600));
    match mkfifo() {
        Ok(()) => {}
        // Only the claiming shim gets here, so anything in the way is
        // stale (or planted): removed, and the create repeated.
        Err(Errno::EEXIST) => {
            match nix::unistd::unlinkat(raw, CONTROL, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(ControlError::RemoveStale(e)),
            }
            mkfifo().map_err(ControlError::Create)?;
        }
        Err(e) => return Err(ControlError::Create(e)),
    }
    // Opened, checked, then handed over by descriptor: never chowned by
    // name, so a name swapped in meanwhile is never what root changes.
    let fd = sys::openat(
        dir,
        CONTROL,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(ControlError::Open)?;
    let st = fstat(fd.as_raw_fd()).map_err(ControlError::Open)?;
    let ours = st.st_uid == nix::unistd::geteuid().as_raw() && st.st_nlink == 1;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO || !ours {
        return Err(ControlError::NotFifo);
    }
    if let Some(uid) = owner {
        nix::unistd::fchown(fd.as_raw_fd(), Some(uid), None).map_err(|source| {
            ControlError::Chown {
                uid: uid.as_raw(),
                source,
            }
        })?;
    }
    Ok(File::from(fd))
}

/// Drains what is in the FIFO; true when it held a kill request. Other
/// bytes are ignored.
pub fn take_kill(fifo: &File) -> Result<bool, ControlError> {
    let mut kill = false;
    let mut buf = [0u8; 64];
    loop {
        match (&*fifo).read(&mut buf) {
            Ok(0) => return Ok(kill),
            Ok(n) => kill |= contains_kill(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(kill),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ControlError::Read(e)),
        }
    }
}

pub fn contains_kill(bytes: &[u8]) -> bool {
    bytes.contains(&KILL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn kill_bytes() {
        assert!(contains_kill(b"K"));
        assert!(contains_kill(b"xxK\n"));
        assert!(!contains_kill(b"k\n"));
        assert!(!contains_kill(b""));
    }

    #[test]
    fn fifo_carries_a_kill_request() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(CONTROL), b"stale").unwrap();
        let d = crate::sys::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let fifo = create(d.as_fd(), None).unwrap();
        assert!(!take_kill(&fifo).unwrap());
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp.path().join(CONTROL))
            .unwrap();
        w.write_all(b"noise").unwrap();
        assert!(!take_kill(&fifo).unwrap());
        w.write_all(b"K").unwrap();
        drop(w);
        assert!(take_kill(&fifo).unwrap());
        assert!(!take_kill(&fifo).unwrap(), "drained, and no eof");
    }
}
