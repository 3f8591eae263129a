//! One runtime per data dir: `serve` holds an exclusive `flock` on
//! `<data dir>/lock` for its whole life, with its pid written inside, so a
//! second `serve` on the same data dir stops before it opens the store
//! instead of dispatching the same tasks. The kernel drops the lock when
//! the process dies, so a `kill -9` never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "lock";

/// How long to wait for the holder to write its pid when the file is
/// still empty (it locks, then writes).
const PID_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {dir} is in use by pid {pid}")]
    InUse { dir: PathBuf, pid: String },
    #[error("opening the lock file {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path} failed")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("writing our pid to {path} failed")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
}

/// Takes the data dir's lock, or says which process holds it.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| LockError::Open {
            path: path.clone(),
            source,
        })?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            return Err(LockError::InUse {
                dir: data_dir.to_path_buf(),
                pid: holder_pid(&mut file),
            })
        }
        Err((_, source)) => return Err(LockError::Lock { path, source }),
    };
    let write = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
    };
    write(&mut held).map_err(|source| LockError::Write { path, source })?;
    Ok(DataDirLock { _file: held })
}

/// The pid the holder wrote, waiting briefly for a holder that has locked
/// but not written yet.
fn holder_pid(file: &mut File) -> String {
    let until = Instant::now() + PID_WAIT;
    loop {
        let mut s = String::new();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut s));
        let pid = s.trim();
        if read.is_ok() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return pid.to_string();
        }
        if Instant::now() >= until {
            return "unknown".to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let held = acquire(tmp.path()).unwrap();
        let pid = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in the same
        // process conflicts like another process would.
        match acquire(tmp.path()) {
            Err(e @ LockError::InUse { .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "data dir {} is in use by pid {}",
                    tmp.path().display(),
                    std::process::id()
                )
            ),
            other => panic!("{other:?}"),
        }
        drop(held);
        // Released: taken again, and the stale pid replaced.
        std::fs::write(tmp.path().join(LOCK_FILE), "99999999999\n").unwrap();
        let _again = acquire(tmp.path()).unwrap();
        let pid = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(acquire(tmp.path()), Err(LockError::Open { .. })));
    }
}
