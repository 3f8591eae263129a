//! An errno as the probe words it in warnings: the lower-case text of
//! strerror(3) without the number, so a warning reads
//! `mkdir /sys/fs/cgroup/memory/execgo-runtime: permission denied`.

use std::fmt;
use std::io;

use nix::errno::Errno;

/// An errno, displayed as lower-case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsError(pub Errno);

impl OsError {
    /// The errno of an I/O error; `EIO` for one that carries none.
    pub fn from_io(e: &io::Error) -> OsError {
        OsError(e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.desc().to_lowercase())
    }
}

impl std::error::Error for OsError {}

impl From<Errno> for OsError {
    fn from(e: Errno) -> Self {
        OsError(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_case_text() {
        assert_eq!(OsError(Errno::EACCES).to_string(), "permission denied");
        assert_eq!(
            OsError::from_io(&io::Error::from_raw_os_error(libc::EPERM)).to_string(),
            "operation not permitted"
        );
        assert_eq!(OsError::from_io(&io::Error::other("x")).0, Errno::EIO);
    }
}
