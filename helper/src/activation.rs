//! systemd socket activation (sd_listen_fds(3)): the listening socket of
//! `execgo-runtime-helper.socket` arrives as descriptor 3, announced by
//! `LISTEN_PID` (our pid) and `LISTEN_FDS` (how many, from 3 up).
//!
//! The protocol is re-implemented here rather than pulled in as a crate:
//! it is two environment variables and a few checks, and the helper must
//! read them before start-up clears the environment and closes every
//! inherited descriptor it was not told to keep ([`crate::startup`]).
//!
//! What is accepted is deliberately narrow, since whoever sets the
//! variables is trusted only as far as systemd would be:
//!
//! * `LISTEN_PID` must be our pid; variables meant for another process
//!   (a parent that forked us without clearing them) are ignored, as
//!   sd_listen_fds(3) ignores them.
//! * `LISTEN_FDS` must be exactly 1: the helper serves one socket, and a
//!   second one would be a descriptor nobody checks.
//! * The descriptor must be a listening (`SO_ACCEPTCONN`) Unix stream
//!   socket bound to the path given with `--socket`, so the unit and the
//!   command line cannot silently disagree about where the runtime
//!   connects.
//!
//! The variables are removed in every case (with `LISTEN_FDNAMES`), so no
//! task or shim ever sees them. Peers are still checked with SO_PEERCRED
//! on every connection ([`crate::accept`]): the socket's mode and group
//! only decide who may try.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};

use crate::sys;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// The environment variables of the protocol.
const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("socket activation: LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    #[error("socket activation: LISTEN_FDS={0:?} is not a descriptor count")]
    BadCount(String),
    #[error("socket activation: LISTEN_FDS is set but LISTEN_PID is not")]
    MissingPid,
    #[error("socket activation: LISTEN_PID is set but LISTEN_FDS is not")]
    MissingCount,
    #[error("socket activation: LISTEN_FDS={0}, but the helper serves exactly one socket (one ListenStream= in its .socket unit)")]
    Count(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("socket activation: descriptor {fd} is not open")]
    Closed {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    #[error("socket activation: descriptor {fd} is not a socket")]
    NotSocket {
        fd: RawFd,
        #[source]
        source: Errno,
    },
    #[error("socket activation: descriptor {fd} is not a stream socket (ListenStream= is needed)")]
    NotStream { fd: RawFd },
    #[error("socket activation: descriptor {fd} is not listening")]
    NotListening { fd: RawFd },
    #[error("socket activation: descriptor {fd} is not a unix socket bound to a path")]
    NotUnixPath { fd: RawFd },
    #[error("socket activation: descriptor {fd} is bound to {found}, but --socket is {expected}")]
    OtherPath {
        fd: RawFd,
        found: PathBuf,
        expected: PathBuf,
    },
    #[error("socket activation: configuring descriptor {fd} failed")]
    Configure {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// The protocol's variables as found at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env {
    pub pid: Option<OsString>,
    pub fds: Option<OsString>,
}

/// Reads the variables and removes them (and `LISTEN_FDNAMES`) from our
/// environment. Called first thing in `main`, while single-threaded.
pub fn take_env() -> Env {
    let env = Env {
        pid: std::env::var_os(LISTEN_PID),
        fds: std::env::var_os(LISTEN_FDS),
    };
    for key in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(key);
    }
    env
}

/// The descriptor to serve, if the variables announce one for `own_pid`.
/// Pure: the descriptor itself is checked by [`adopt_listener`].
pub fn parse(env: &Env, own_pid: u32) -> Result<Option<RawFd>, ActivationError> {
    let text = |v: &OsString| v.to_string_lossy().into_owned();
    let (pid, fds) = match (&env.pid, &env.fds) {
        (None, None) => return Ok(None),
        (None, Some(_)) => return Err(ActivationError::MissingPid),
        (Some(_), None) => return Err(ActivationError::MissingCount),
        (Some(pid), Some(fds)) => (pid, fds),
    };
    let pid_value = pid
        .to_str()
        .and_then(number)
        .filter(|&p| p > 0)
        .ok_or_else(|| ActivationError::BadPid(text(pid)))?;
    let count = fds
        .to_str()
        .and_then(number)
        .ok_or_else(|| ActivationError::BadCount(text(fds)))?;
    if pid_value != own_pid {
        return Ok(None);
    }
    match count {
        1 => Ok(Some(FIRST_FD)),
        n => Err(ActivationError::Count(n)),
    }
}

/// Decimal digits only: no sign, no spaces, no empty string (`str::parse`
/// would take a leading `+`).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Takes the activated descriptor as our listener after checking that it
/// is a listening Unix stream socket bound to `expected`; makes it
/// close-on-exec (systemd passes it without) and non-blocking (the serve
/// loop accepts until EAGAIN).
pub fn adopt_listener(fd: RawFd, expected: &Path) -> Result<UnixListener, AdoptError> {
    let owned = sys::adopt_fd(fd).map_err(|source| AdoptError::Closed { fd, source })?;
    let kind = getsockopt(&owned, sockopt::SockType)
        .map_err(|source| AdoptError::NotSocket { fd, source })?;
    if kind != SockType::Stream {
        return Err(AdoptError::NotStream { fd });
    }
    let listening = getsockopt(&owned, sockopt::AcceptConn)
        .map_err(|source| AdoptError::NotSocket { fd, source })?;
    if !listening {
        return Err(AdoptError::NotListening { fd });
    }
    let addr: UnixAddr =
        getsockname(owned.as_raw_fd()).map_err(|_| AdoptError::NotUnixPath { fd })?;
    let found = addr.path().ok_or(AdoptError::NotUnixPath { fd })?;
    if found != expected {
        return Err(AdoptError::OtherPath {
            fd,
            found: found.to_path_buf(),
            expected: expected.to_path_buf(),
        });
    }
    nix::fcntl::fcntl(owned.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| {
        AdoptError::Configure {
            fd,
            source: e.into(),
        }
    })?;
    let listener = UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|source| AdoptError::Configure { fd, source })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{IntoRawFd, OwnedFd};
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn env(pid: Option<&str>, fds: Option<&str>) -> Env {
        Env {
            pid: pid.map(Into::into),
            fds: fds.map(Into::into),
        }
    }

    #[test]
    fn no_variables_means_no_activation() {
        assert_eq!(parse(&env(None, None), 42), Ok(None));
    }

    #[test]
    fn one_socket_for_us_is_descriptor_3() {
        assert_eq!(parse(&env(Some("42"), Some("1")), 42), Ok(Some(3)));
    }

    #[test]
    fn variables_for_another_process_are_ignored() {
        assert_eq!(parse(&env(Some("41"), Some("1")), 42), Ok(None));
        // Even with a count we would refuse: they are not ours to judge.
        assert_eq!(parse(&env(Some("41"), Some("2")), 42), Ok(None));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["", "abc", "-1", "+42", " 42", "42 ", "0", "99999999999"] {
            assert_eq!(
                parse(&env(Some(bad), Some("1")), 42),
                Err(ActivationError::BadPid(bad.into())),
                "{bad:?}"
            );
        }
        for bad in ["", "one", "-1", "+1", "1 ", "4294967296"] {
            assert_eq!(
                parse(&env(Some("42"), Some(bad)), 42),
                Err(ActivationError::BadCount(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn exactly_one_socket() {
        assert_eq!(
            parse(&env(Some("42"), Some("0")), 42),
            Err(ActivationError::Count(0))
        );
        assert_eq!(
            parse(&env(Some("42"), Some("2")), 42),
            Err(ActivationError::Count(2))
        );
    }

    #[test]
    fn half_a_protocol_is_refused() {
        assert_eq!(
            parse(&env(None, Some("1")), 42),
            Err(ActivationError::MissingPid)
        );
        assert_eq!(
            parse(&env(Some("42"), None), 42),
            Err(ActivationError::MissingCount)
        );
    }

    #[test]
    fn error_messages_name_the_variable() {
        let e = parse(&env(Some("42"), Some("x")), 42).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket activation: LISTEN_FDS=\"x\" is not a descriptor count"
        );
    }

    /// Hands `fd` to `adopt_listener` by its own number (not 3: the test
    /// process has other descriptors there).
    fn adopt(fd: OwnedFd, expected: &Path) -> Result<UnixListener, AdoptError> {
        adopt_listener(fd.into_raw_fd(), expected)
    }

    #[test]
    fn a_listening_socket_at_the_path_is_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let fd = listener.as_raw_fd();
        nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let adopted = adopt(listener.into(), &path).unwrap();
        let flags = nix::fcntl::fcntl(adopted.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        // Non-blocking: nothing pending is EAGAIN, not a hang.
        let err = adopted.accept().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let _client = UnixStream::connect(&path).unwrap();
        adopted.accept().unwrap();
    }

    #[test]
    fn a_socket_elsewhere_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let want = tmp.path().join("other.sock");
        let e = adopt(listener.into(), &want).unwrap_err();
        assert!(matches!(e, AdoptError::OtherPath { .. }), "{e}");
        assert!(e.to_string().contains("other.sock"), "{e}");
    }

    #[test]
    fn other_descriptors_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x");

        // A connected stream socket, not a listening one.
        let (a, _b) = UnixStream::pair().unwrap();
        let e = adopt(a.into(), &path).unwrap_err();
        assert!(matches!(e, AdoptError::NotListening { .. }), "{e}");

        // A datagram socket.
        let d = UnixDatagram::bind(&path).unwrap();
        let e = adopt(d.into(), &path).unwrap_err();
        assert!(matches!(e, AdoptError::NotStream { .. }), "{e}");

        // A TCP listener: listening and a stream, but not a unix socket.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = adopt(tcp.into(), &path).unwrap_err();
        assert!(matches!(e, AdoptError::NotUnixPath { .. }), "{e}");

        // A plain file.
        let f = std::fs::File::create(tmp.path().join("f")).unwrap();
        let e = adopt(f.into(), &path).unwrap_err();
        assert!(matches!(e, AdoptError::NotSocket { .. }), "{e}");
    }

    #[test]
    fn a_closed_descriptor_is_refused() {
        // Far above anything a test process opens, so never open here.
        let e = adopt_listener(1 << 20, Path::new("/x")).unwrap_err();
        assert!(matches!(e, AdoptError::Closed { .. }), "{e}");
    }
}
