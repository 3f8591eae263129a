//! `tasks/<id>/workspace/` and the `workspace_subdir` chain under it, the
//! task's working directory. Each component is created with mkdirat(2) and
//! opened with `O_NOFOLLOW|O_DIRECTORY` under the previous one, so a symlink
//! planted anywhere along the chain fails the launch instead of being
//! followed out of the task directory.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::fs_at;

pub use execgo_runtime_protocol::taskdir::WORKSPACE;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("creating '{path}' failed")]
    Create {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("'{path}' is a symlink; refusing to follow it")]
    Symlink { path: String },
    #[error("'{path}' exists and is not a directory")]
    NotADirectory { path: String },
    #[error("opening '{path}' failed")]
    Open {
        path: String,
        #[source]
        source: Errno,
    },
    #[error("handing '{path}' to the runtime's user failed")]
    Chown {
        path: String,
        #[source]
        source: Errno,
    },
}

/// Creates and opens `workspace/<subdir...>` (mode 0700), returning the
/// innermost directory. Directories we create are handed to `owner` (the
/// task's user; without one, the runtime's user when we are root and it
/// is not).
pub fn prepare(
    task_dir: BorrowedFd<'_>,
    subdir: &[String],
    owner: Option<(Uid, Gid)>,
) -> Result<OwnedFd, WorkspaceError> {
    let mut path = WORKSPACE.to_string();
    let mut cur = make_and_open(task_dir, WORKSPACE, &path, owner)?;
    for component in subdir {
        path.push('/');
        path.push_str(component);
        cur = make_and_open(cur.as_fd(), component, &path, owner)?;
    }
    Ok(cur)
}

fn make_and_open(
    parent: BorrowedFd<'_>,
    name: &str,
    path: &str,
    owner: Option<(Uid, Gid)>,
) -> Result<OwnedFd, WorkspaceError> {
    let p = || path.to_string();
    let created = match nix::sys::stat::mkdirat(
        Some(parent.as_raw_fd()),
        name,
        // The task's alone: other tasks, even under a shared task user,
        // never reach in through a path.
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(source) => return Err(WorkspaceError::Create { path: p(), source }),
    };
    let fd = fs_at::open_dir(parent, name).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR if fs_at::is_symlink(parent, name) => {
            WorkspaceError::Symlink { path: p() }
        }
        Errno::ELOOP | Errno::ENOTDIR => WorkspaceError::NotADirectory { path: p() },
        source => WorkspaceError::Open { path: p(), source },
    })?;
    if let (true, Some((uid, gid))) = (created, owner) {
        nix::unistd::fchown(fd.as_raw_fd(), Some(uid), Some(gid))
            .map_err(|source| WorkspaceError::Chown { path: p(), source })?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    fn dir(path: &std::path::Path) -> OwnedFd {
        crate::sys::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn creates_the_chain_and_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let sub = vec!["a".to_string(), "b".to_string()];
        prepare(d.as_fd(), &sub, None).unwrap();
        assert!(tmp.path().join("workspace/a/b").is_dir());
        prepare(d.as_fd(), &sub, None).unwrap();
        prepare(d.as_fd(), &[], None).unwrap();
    }

    #[test]
    fn refuses_symlinks_and_files_in_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(WORKSPACE)).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("workspace/a")).unwrap();
        std::fs::write(tmp.path().join("workspace/f"), b"").unwrap();
        let d = dir(tmp.path());
        let e = prepare(d.as_fd(), &["a".into(), "b".into()], None).unwrap_err();
        assert!(
            matches!(e, WorkspaceError::Symlink { ref path } if path == "workspace/a"),
            "{e}"
        );
        assert!(!outside.path().join("b").exists());
        let e = prepare(d.as_fd(), &["f".into()], None).unwrap_err();
        assert!(matches!(e, WorkspaceError::NotADirectory { .. }), "{e}");
    }
}
