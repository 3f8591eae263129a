//! Finding the program: `argv[0]` with a `/` is used as given (relative to
//! the working directory, as execve(2) would); a bare name is looked up in
//! the task's own `PATH`, or [`DEFAULT_PATH`] when it has none. Empty and
//! relative `PATH` entries are skipped rather than resolved against the
//! workspace the task controls.
//!
//! The shim looks as itself, and the task may run as another user: so every
//! match is kept, in `PATH` order, and the task child tries them in turn
//! after its identity switch, going on past one it may not execute (as
//! execvp(3) does).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error(
        "failed to execute '{program}': {}",
        std::io::Error::from_raw_os_error(libc::ENOENT)
    )]
    NotFound { program: String },
}

/// The paths to try, in order; never empty.
pub fn resolve(program: &str, path_var: Option<&str>) -> Result<Vec<PathBuf>, ResolveError> {
    if program.contains('/') {
        return Ok(vec![PathBuf::from(program)]);
    }
    let found: Vec<PathBuf> = path_var
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .filter(|candidate| is_executable_file(candidate))
        .collect();
    if found.is_empty() {
        return Err(ResolveError::NotFound {
            program: program.to_string(),
        });
    }
    Ok(found)
}

/// A regular file (after symlinks, as exec follows them) with an execute
/// bit set.
fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    #[test]
    fn looks_up_bare_names_in_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::write(b.path().join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.path().join("tool"), Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(a.path().join("dir")).unwrap();
        std::fs::set_permissions(a.path().join("dir"), Permissions::from_mode(0o755)).unwrap();
        let path = format!("relative::{}:{}", a.path().display(), b.path().display());
        // a/tool is not executable, so b/tool is the one.
        assert_eq!(
            resolve("tool", Some(&path)).unwrap(),
            [b.path().join("tool")]
        );
        std::fs::set_permissions(a.path().join("tool"), Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve("tool", Some(&path)).unwrap(),
            [a.path().join("tool"), b.path().join("tool")]
        );
        // Directories never match.
        assert_eq!(
            resolve("dir", Some(&path)),
            Err(ResolveError::NotFound {
                program: "dir".into()
            })
        );
    }

    #[test]
    fn slash_means_as_given_and_default_path_applies() {
        assert_eq!(resolve("./x", None).unwrap(), [PathBuf::from("./x")]);
        assert_eq!(
            resolve("/no/such", None).unwrap(),
            [PathBuf::from("/no/such")]
        );
        assert!(resolve("sh", None).unwrap()[0].is_absolute());
        let e = resolve("no-such-program-here", Some("/bin")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to execute 'no-such-program-here': No such file or directory (os error 2)"
        );
    }
}
