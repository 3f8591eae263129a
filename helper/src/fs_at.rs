//! Files under a directory descriptor, the openat(2) way: every name is one
//! path component resolved under a directory we already hold, never through
//! a symlink (`O_NOFOLLOW`), never into another mount (openat2's
//! `RESOLVE_NO_XDEV`, else a device check), always close-on-exec.
//!
//! The task directory belongs to the unprivileged runtime user, who could
//! plant a symlink, a FIFO or a hard link to a root-owned file where the
//! shim expects its own files. So regular files are opened with
//! `O_NONBLOCK` (a planted FIFO cannot block the open), then checked to be
//! regular, and files we write must have exactly one link.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum AtError {
    #[error("opening '{name}' failed")]
    Open {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("'{name}' is not a regular file")]
    NotRegular { name: String },
    #[error("'{name}' has more than one hard link")]
    HardLinked { name: String },
    #[error("'{name}' is on another mount than its directory")]
    OtherMount { name: String },
    #[error("inspecting '{name}' failed")]
    Stat {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("reading '{name}' failed")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl AtError {
    /// The errno of a failed open, to tell "missing" from other failures.
    pub fn open_errno(&self) -> Option<Errno> {
        match self {
            AtError::Open { source, .. } => Some(*source),
            _ => None,
        }
    }
}

/// How a regular file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Write an existing file at offsets of the caller's choosing (no
    /// `O_APPEND`, which splice(2) refuses).
    Write,
    /// Append, creating the file with this mode when missing.
    AppendOrCreate(u32),
    /// Create a new file with this mode; fails with EEXIST if it exists.
    CreateNew(u32),
}

/// Opens the directory `name` (one component) under `dir`, on `dir`'s
/// mount. A symlink or any other non-directory fails with ENOTDIR (or
/// ELOOP; [`is_symlink`] tells which), a mount point with EXDEV.
pub fn open_dir(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Errno::EINVAL);
    }
    match sys::open_dir_beneath(dir, name, OFlag::O_RDONLY, sys::Mounts::Stay) {
        Err(Errno::ENOSYS) => {}
        other => return other,
    }
    let fd = sys::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    same_mount(dir, fd.as_fd())?;
    Ok(fd)
}

/// EXDEV unless `fd` is on `dir`'s file system: the check that stands in
/// for `RESOLVE_NO_XDEV` where there is no openat2 (a bind mount of the
/// same file system passes it; openat2 refuses that too).
fn same_mount(dir: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
    if fstat(dir.as_raw_fd())?.st_dev == fstat(fd.as_raw_fd())?.st_dev {
        Ok(())
    } else {
        Err(Errno::EXDEV)
    }
}

/// Opens the directory at the relative path `rel` beneath `dir`, never
/// above it and never through a symlink, as an `O_PATH` descriptor: openat2
/// where the kernel has it, else one `O_NOFOLLOW` component at a time
/// (refusing `.` and `..`). Mounts below `dir` may be crossed: this opens
/// an operator's rootfs, which may well be a mount of its own, never a
/// path under the data dir.
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &str) -> Result<OwnedFd, Errno> {
    match sys::open_dir_beneath(dir, rel, OFlag::O_PATH, sys::Mounts::Cross) {
        Err(Errno::ENOSYS) => {}
        other => return other,
    }
    let mut cur: Option<OwnedFd> = None;
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(Errno::EXDEV);
        }
        let parent = cur.as_ref().map_or(dir, |f| f.as_fd());
        cur = Some(sys::openat(
            parent,
            part,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
    }
    cur.ok_or(Errno::EINVAL)
}

/// Whether `name` under `dir` is itself a symlink (for error messages).
pub fn is_symlink(dir: BorrowedFd<'_>, name: &str) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// Opens the regular file `name` under `dir` as `access` says.
pub fn open_file(dir: BorrowedFd<'_>, name: &str, access: Access) -> Result<File, AtError> {
    let (flags, mode) = match access {
        Access::Read => (OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0),
        Access::Write => (OFlag::O_WRONLY | OFlag::O_NONBLOCK, 0),
        Access::AppendOrCreate(m) => (
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NONBLOCK,
            m,
        ),
        // O_EXCL (with O_NOFOLLOW) only ever creates a new regular file
        // with one link: nothing planted to guard against or check.
        Access::CreateNew(m) => (OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, m),
    };
    let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd =
        sys::openat(dir, name, base | flags, Mode::from_bits_truncate(mode)).map_err(|source| {
            AtError::Open {
                name: name.into(),
                source,
            }
        })?;
    if let Access::CreateNew(_) = access {
        return Ok(File::from(fd));
    }
    let st = fstat(fd.as_raw_fd()).map_err(|source| AtError::Stat {
        name: name.into(),
        source,
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(AtError::NotRegular { name: name.into() });
    }
    let dir_dev = fstat(dir.as_raw_fd()).map_err(|source| AtError::Stat {
        name: ".".into(),
        source,
    })?;
    if st.st_dev != dir_dev.st_dev {
        return Err(AtError::OtherMount { name: name.into() });
    }
    if access != Access::Read && st.st_nlink != 1 {
        return Err(AtError::HardLinked { name: name.into() });
    }
    // O_NONBLOCK only guarded the open; a descriptor we write gets ordinary
    // blocking semantics. F_SETFL sets the status flags we opened with
    // (O_APPEND, unless `Write`) minus O_NONBLOCK. A
    // read descriptor stays ours, and O_NONBLOCK means nothing to the reads
    // of a regular file.
    if access != Access::Read {
        let keep = if access == Access::Write {
            OFlag::empty()
        } else {
            OFlag::O_APPEND
        };
        nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(keep)).map_err(|source| {
            AtError::Stat {
                name: name.into(),
                source,
            }
        })?;
    }
    Ok(File::from(fd))
}

/// The first `max` bytes of the log `name` as lossy UTF-8, and whether the
/// log is longer. A missing log reads as empty.
pub fn read_head(dir: BorrowedFd<'_>, name: &str, max: u64) -> Result<(String, bool), AtError> {
    let file = match open_file(dir, name, Access::Read) {
        Ok(f) => f,
        Err(e) if e.open_errno() == Some(Errno::ENOENT) => return Ok((String::new(), false)),
        Err(e) => return Err(e),
    };
    let read_err = |source| AtError::Read {
        name: name.into(),
        source,
    };
    let len = file.metadata().map_err(read_err)?.len();
    let mut buf = Vec::with_capacity(usize::try_from(len.min(max)).unwrap_or(0));
    file.take(max).read_to_end(&mut buf).map_err(read_err)?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), len > max))
}

/// fsync(2) of a directory, so a create, rename or unlink in it is durable.
pub fn sync_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::unistd::fsync(dir.as_fd().as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        sys::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn refuses_symlinks_fifos_and_hard_links() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("real"), b"x").unwrap();
        symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        std::fs::hard_link(tmp.path().join("real"), tmp.path().join("hard")).unwrap();
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        symlink(tmp.path().join("sub"), tmp.path().join("sublink")).unwrap();
        let d = dir_fd(tmp.path());

        let e = open_file(d.as_fd(), "link", Access::Read).unwrap_err();
        assert_eq!(e.open_errno(), Some(Errno::ELOOP));
        let e = open_file(d.as_fd(), "fifo", Access::Write).unwrap_err();
        assert!(
            matches!(e, AtError::Open { .. } | AtError::NotRegular { .. }),
            "{e}"
        );
        let e = open_file(d.as_fd(), "fifo", Access::Read).unwrap_err();
        assert!(matches!(e, AtError::NotRegular { .. }), "{e}");
        let e = open_file(d.as_fd(), "hard", Access::Write).unwrap_err();
        assert!(matches!(e, AtError::HardLinked { .. }), "{e}");
        // Reading a hard-linked file is harmless.
        assert!(open_file(d.as_fd(), "hard", Access::Read).is_ok());
        assert!(open_dir(d.as_fd(), "sublink").is_err());
        assert!(is_symlink(d.as_fd(), "sublink"));
        assert_eq!(open_dir(d.as_fd(), "real").unwrap_err(), Errno::ENOTDIR);
        assert!(!is_symlink(d.as_fd(), "real"));
        assert!(!is_symlink(d.as_fd(), "missing"));
        assert!(open_dir(d.as_fd(), "sub").is_ok());
    }

    #[test]
    fn a_mount_point_or_a_file_on_another_mount_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return println!("skipped: mounting a tmpfs needs root");
        }
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::create_dir(tmp.path().join("plain")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(sub.join("log"), b"x").unwrap();
        let d = dir_fd(tmp.path());
        let mounted = open_dir(d.as_fd(), "sub");
        let inside = dir_fd(&sub);
        // The check by device, as where openat2 is missing.
        let by_dev = same_mount(d.as_fd(), inside.as_fd());
        // A file bind-mounted over one of ours.
        let bound = tmp.path().join("bound");
        std::fs::write(&bound, b"").unwrap();
        nix::mount::mount(
            Some(&sub.join("log")),
            &bound,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let on_other = open_file(d.as_fd(), "bound", Access::Read);
        nix::mount::umount2(&bound, nix::mount::MntFlags::MNT_DETACH).unwrap();
        nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!(mounted.unwrap_err(), Errno::EXDEV);
        assert_eq!(by_dev.unwrap_err(), Errno::EXDEV);
        assert!(
            matches!(on_other, Err(AtError::OtherMount { .. })),
            "{on_other:?}"
        );
        assert!(open_file(d.as_fd(), "bound", Access::Read).is_ok());
        assert!(open_dir(d.as_fd(), "plain").is_ok());
        assert_eq!(open_dir(d.as_fd(), "..").unwrap_err(), Errno::EINVAL);
        assert_eq!(open_dir(d.as_fd(), "a/b").unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn create_new_append_and_read_head() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir_fd(tmp.path());
        let mut f = open_file(d.as_fd(), "log", Access::CreateNew(0o644)).unwrap();
        f.write_all(b"hello world").unwrap();
        let e = open_file(d.as_fd(), "log", Access::CreateNew(0o644)).unwrap_err();
        assert_eq!(e.open_errno(), Some(Errno::EEXIST));
        let mut f = open_file(d.as_fd(), "log", Access::AppendOrCreate(0o644)).unwrap();
        // Appending, and blocking for whoever inherits it.
        let fl =
            OFlag::from_bits_truncate(nix::fcntl::fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(fl.contains(OFlag::O_APPEND) && !fl.contains(OFlag::O_NONBLOCK));
        f.write_all(b"!").unwrap();
        assert_eq!(
            read_head(d.as_fd(), "log", 5).unwrap(),
            ("hello".to_string(), true)
        );
        assert_eq!(
            read_head(d.as_fd(), "log", 12).unwrap(),
            ("hello world!".to_string(), false)
        );
        assert_eq!(
            read_head(d.as_fd(), "missing", 12).unwrap(),
            (String::new(), false)
        );
        sync_dir(d.as_fd()).unwrap();
    }
}
