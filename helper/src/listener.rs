//! The standalone listening socket: created fresh, never through a symlink
//! and never over a file that is not a stale socket, mode 0660 from the
//! start, owned by the allowed uid/gid when we run as root (so the
//! unprivileged runtime can connect at all).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("removing the stale socket {path} failed")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspecting {path} failed")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {path} failed")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting the mode or owner of {path} failed")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds `path`. With `owner`, the socket file is chowned to it (used when
/// running as root).
pub fn bind(path: &Path, owner: Option<(u32, Option<u32>)>) -> Result<UnixListener, ListenError> {
    let p = || path.to_path_buf();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|source| ListenError::RemoveStale { path: p(), source })?,
        Ok(_) => return Err(ListenError::NotASocket { path: p() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ListenError::Inspect { path: p(), source }),
    }
    // bind(2) creates the node with 0777 & ~umask: a tight umask for the
    // call leaves no window in which others could connect.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|source| ListenError::Bind { path: p(), source })?;
    let perm = |source| ListenError::Permissions { path: p(), source };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), gid).map_err(perm)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(perm)?;
    listener.set_nonblocking(true).map_err(perm)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_stale_socket_but_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("h.sock");
        let first = bind(&sock, None).unwrap();
        drop(first);
        let second = bind(&sock, None).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(second);

        let file = tmp.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            bind(&file, None),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
