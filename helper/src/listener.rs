//! The standalone listening socket: created fresh in a directory nobody
//! else can write to, never through a symlink and never over a file that
//! is not a stale socket, mode 0660 from its creation, and owned by the
//! allowed uid/gid when we run as root (so the unprivileged runtime can
//! connect at all).
//!
//! Everything after the directory check goes through one descriptor of
//! that directory, so a path swapped meanwhile changes nothing:
//!
//! * bind(2) takes a path, not a directory descriptor: it binds
//!   `/proc/self/fd/<dir>/<name>`, which resolves to the checked directory
//!   whatever its path names by then.
//! * The node's mode is set by bind itself: Linux creates it with the
//!   socket inode's mode (0777 for a fresh socket) masked by the umask
//!   (see unix(7)), so a umask of 0117 around the call gives 0660 with no
//!   window and no chmod by path. (fchmod(2) on the socket descriptor
//!   changes the socket's own inode, not the file; it counts only before
//!   bind.)
//! * Ownership: fchown(2) on the socket descriptor likewise changes only
//!   the socket's inode, never the file bind made, so the file is chowned
//!   by name under the directory descriptor, `AT_SYMLINK_NOFOLLOW`, after
//!   checking that the name is still a socket. Since nobody else can write
//!   to the directory, nobody can swap the name for a link to another file
//!   in between.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, umask, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path} does not name a file in a directory")]
    NoName { path: PathBuf },
    #[error("opening the socket directory {dir} failed")]
    OpenDir {
        dir: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("the socket directory {dir} is unsafe: {problem}")]
    UnsafeDir { dir: PathBuf, problem: DirProblem },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("removing the stale socket {path} failed")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("inspecting {path} failed")]
    Inspect {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("binding {path} failed")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} was replaced right after bind; refusing to touch it")]
    Replaced { path: PathBuf },
    #[error("setting the owner of {path} failed")]
    Owner {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("making the socket {path} non-blocking failed")]
    NonBlocking {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why a socket directory is refused: someone other than root, us or the
/// allowed group could replace the socket, or plant a link in its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("it is owned by uid {0}, neither root nor us")]
    Owner(u32),
    #[error("others can write to it (mode {0:04o}) and it is not sticky")]
    WorldWritable(u32),
    #[error(
        "its group {gid} can write to it (mode {mode:04o}) and is not the allowed gid \
         (chmod g-w, or pass --allowed-gid {gid})"
    )]
    GroupWritable { gid: u32, mode: u32 },
}

/// Whether a directory with this owner, group and mode is safe to hold
/// the socket of a helper running as `own_uid` with `allowed_gid`.
pub fn check_dir(
    uid: u32,
    gid: u32,
    mode: u32,
    own_uid: u32,
    allowed_gid: Option<u32>,
) -> Result<(), DirProblem> {
    let mode = mode & 0o7777;
    if uid != 0 && uid != own_uid {
        return Err(DirProblem::Owner(uid));
    }
    // Sticky (as /tmp): nobody else may remove or rename the socket once
    // bound, and a name planted before is refused or replaced.
    if mode & 0o1000 != 0 {
        return Ok(());
    }
    if mode & 0o002 != 0 {
        return Err(DirProblem::WorldWritable(mode));
    }
    if mode & 0o020 != 0 && allowed_gid != Some(gid) {
        return Err(DirProblem::GroupWritable { gid, mode });
    }
    Ok(())
}

/// Binds `path`. With `owner`, the socket file is chowned to it (used when
/// running as root). `allowed_gid` is the one group that may share the
/// socket's directory.
pub fn bind(
    path: &Path,
    owner: Option<(u32, Option<u32>)>,
    allowed_gid: Option<u32>,
) -> Result<UnixListener, ListenError> {
    let p = || path.to_path_buf();
    let name = path
        .file_name()
        .ok_or_else(|| ListenError::NoName { path: p() })?;
    let dir_path = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = open_checked_dir(dir_path, allowed_gid)?;
    let name = Path::new(name);
    remove_stale(&dir, name).map_err(|e| e.with_path(p()))?;
    // 0777 & !0117 = 0660 from the moment the file exists.
    let through_dir = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    let old = umask(Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(&through_dir);
    umask(old);
    let listener = bound.map_err(|source| ListenError::Bind { path: p(), source })?;
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK => {}
        Ok(_) => return Err(ListenError::Replaced { path: p() }),
        Err(source) => return Err(ListenError::Inspect { path: p(), source }),
    }
    if let Some((uid, gid)) = owner {
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(uid)),
            gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|source| ListenError::Owner { path: p(), source })?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|source| ListenError::NonBlocking { path: p(), source })?;
    Ok(listener)
}

/// Opens the socket's directory and checks who can write to it.
fn open_checked_dir(dir: &Path, allowed_gid: Option<u32>) -> Result<OwnedFd, ListenError> {
    let open_err = |source| ListenError::OpenDir {
        dir: dir.to_path_buf(),
        source,
    };
    let fd = sys::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_err)?;
    let st = fstat(fd.as_raw_fd()).map_err(open_err)?;
    let own_uid = nix::unistd::geteuid().as_raw();
    check_dir(st.st_uid, st.st_gid, st.st_mode, own_uid, allowed_gid).map_err(|problem| {
        ListenError::UnsafeDir {
            dir: dir.to_path_buf(),
            problem,
        }
    })?;
    Ok(fd)
}

/// What went wrong with an existing name, before the path is known.
enum StaleError {
    NotASocket,
    Remove(Errno),
    Inspect(Errno),
}

impl StaleError {
    fn with_path(self, path: PathBuf) -> ListenError {
        match self {
            StaleError::NotASocket => ListenError::NotASocket { path },
            StaleError::Remove(source) => ListenError::RemoveStale { path, source },
            StaleError::Inspect(source) => ListenError::Inspect { path, source },
        }
    }
}

/// Removes a socket left at `name` by an earlier run; anything else there
/// is refused.
fn remove_stale(dir: &OwnedFd, name: &Path) -> Result<(), StaleError> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK => {
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(StaleError::Remove)
        }
        Ok(_) => Err(StaleError::NotASocket),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(StaleError::Inspect(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_stale_socket_but_not_files() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("h.sock");
        let first = bind(&sock, None, None).unwrap();
        drop(first);
        let second = bind(&sock, None, None).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(second);

        let file = tmp.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            bind(&file, None, None),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(matches!(
            bind(&link, None, None),
            Err(ListenError::NotASocket { .. })
        ));
    }

    #[test]
    fn directory_rules() {
        let me = 1000;
        assert_eq!(check_dir(me, 5, 0o40755, me, None), Ok(()));
        assert_eq!(check_dir(0, 0, 0o755, me, None), Ok(()));
        assert_eq!(check_dir(0, 0, 0o1777, me, None), Ok(()), "sticky, as /tmp");
        assert_eq!(check_dir(0, 7, 0o1770, me, None), Ok(()));
        assert_eq!(
            check_dir(0, 0, 0o777, me, None),
            Err(DirProblem::WorldWritable(0o777))
        );
        assert_eq!(
            check_dir(0, 7, 0o775, me, None),
            Err(DirProblem::GroupWritable {
                gid: 7,
                mode: 0o775
            })
        );
        assert_eq!(
            check_dir(0, 7, 0o775, me, Some(8)),
            Err(DirProblem::GroupWritable {
                gid: 7,
                mode: 0o775
            })
        );
        assert_eq!(check_dir(0, 7, 0o775, me, Some(7)), Ok(()));
        assert_eq!(
            check_dir(1001, 7, 0o755, me, None),
            Err(DirProblem::Owner(1001))
        );
    }
}
