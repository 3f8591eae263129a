//! Readiness for systemd's `Type=notify` (sd_notify(3)): one datagram,
//! `READY=1`, to the socket named by `NOTIFY_SOCKET`, once the check that
//! `/readyz` makes passes; `STOPPING=1` when `serve` begins to stop.
//!
//! The protocol is a datagram of newline-separated `KEY=VALUE` lines to a
//! Unix socket given as a path or, with a leading `@`, an abstract name. It
//! is written here rather than taken from a crate because that is all of
//! it. Without `NOTIFY_SOCKET` (not run by systemd) nothing is sent.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Where the notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@...)")]
    BadSocket(String),
}

/// The target named by `NOTIFY_SOCKET`'s value.
pub fn parse_target(value: &OsStr) -> Result<Target, NotifyError> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(Target::Path(PathBuf::from(value))),
        Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
        _ => Err(NotifyError::BadSocket(value.to_string_lossy().into_owned())),
    }
}

/// The notifier of this process: `None` when not run with `NOTIFY_SOCKET`.
/// The variable is removed, so that nothing we start inherits it.
pub fn from_env() -> Result<Option<Target>, NotifyError> {
    let value: Option<OsString> = std::env::var_os("NOTIFY_SOCKET");
    std::env::remove_var("NOTIFY_SOCKET");
    value.as_deref().map(parse_target).transpose()
}

/// Sends `state` (e.g. `READY=1`) as one datagram.
pub fn send(target: &Target, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let sent = match target {
        Target::Path(path) => socket.send_to(state.as_bytes(), path)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
    };
    if sent != state.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target(OsStr::new("/run/systemd/notify")),
            Ok(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target(OsStr::new("@/org/x")),
            Ok(Target::Abstract(b"/org/x".to_vec()))
        );
        for bad in ["", "@", "run/notify", "notify"] {
            let e = parse_target(OsStr::new(bad)).unwrap_err();
            assert_eq!(e, NotifyError::BadSocket(bad.into()));
            assert!(e.to_string().starts_with("NOTIFY_SOCKET="), "{e}");
        }
    }

    #[test]
    fn sends_to_a_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&Target::Path(path), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("execgo-runtime-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&Target::Abstract(name.into_bytes()), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(send(&Target::Path(tmp.path().join("none")), "READY=1").is_err());
    }
}
