//! journald's native protocol, by hand (see
//! <https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): one datagram per entry
//! to `/run/systemd/journal/socket`, made of `KEY=value\n` fields; a value
//! containing a newline takes the binary form `KEY\n`, its length as a
//! little-endian u64, the bytes, `\n`. An entry too large for one datagram
//! (`EMSGSIZE`, `ENOBUFS`) is written to a sealed memfd whose descriptor is
//! sent instead, as journald expects; nothing is truncated.
//!
//! The socket is unbound and unconnected (`sendto` per entry), so a
//! restarted journald is reached again without reconnecting. It is
//! close-on-exec: tasks never get it.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use serde_json::Value;

/// Where journald listens for native-protocol datagrams.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// `SYSLOG_IDENTIFIER` of every entry (`journalctl -t execgo-runtime-helper`).
pub const IDENTIFIER: &str = "execgo-runtime-helper";

/// journald rejects longer field names.
const KEY_MAX: usize = 64;

/// A field name as journald accepts it: `[A-Z0-9_]`, starting with a
/// letter (a leading `_` marks fields only journald itself may set, and a
/// leading digit is refused), at most 64 bytes. Lower case is upper-cased
/// (`task_id` → `TASK_ID`), any other byte becomes `_`, leading `_`s and
/// digits are dropped. `None` when nothing is left.
pub fn key(name: &str) -> Option<String> {
    let mapped = name.bytes().map(|b| match b.to_ascii_uppercase() {
        c @ (b'A'..=b'Z' | b'0'..=b'9') => c as char,
        _ => '_',
    });
    let out: String = mapped
        .skip_while(|c| !c.is_ascii_uppercase())
        .take(KEY_MAX)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Appends one field; `key` must already be valid (see [`key`]). The
/// binary form is used exactly when the value contains a newline.
pub fn put(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// A structured field's value as journald stores it: strings as they are,
/// numbers and booleans as their JSON text, arrays and objects as compact
/// JSON. `null` has no journald form: `None`, and the field is left out.
pub fn value(v: &Value) -> Option<Cow<'_, [u8]>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
        other => Some(Cow::Owned(other.to_string().into_bytes())),
    }
}

/// The client end: an unbound datagram socket and the path entries are
/// sent to.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// Opens the socket and checks journald is there by sending an empty
    /// datagram (which journald discards): a missing socket or nobody
    /// listening is an error here, not a silently lost line later.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let j = Journal {
            socket: UnixDatagram::unbound()?,
            path: path.to_path_buf(),
        };
        j.socket.send_to(&[], &j.path)?;
        Ok(j)
    }

    /// The socket's descriptor, which the shim keeps across its
    /// descriptor clean-up.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends one entry (built with [`put`]); too large for a datagram, it
    /// goes through a memfd.
    pub fn send(&self, entry: &[u8]) -> io::Result<()> {
        match self.socket.send_to(entry, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(entry)
            }
            Err(e) => Err(e),
        }
    }

    /// The entry in a fully sealed memfd, the descriptor as `SCM_RIGHTS`
    /// of an empty datagram. Sealed so journald may map it safely.
    fn send_memfd(&self, entry: &[u8]) -> io::Result<()> {
        let fd = memfd_create(
            c"execgo-runtime-helper-journal",
            MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let mut file = File::from(fd);
        file.write_all(entry)?;
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        nix::fcntl::fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        let addr = UnixAddr::new(&self.path)?;
        let fds = [file.as_raw_fd()];
        let no_data: [IoSlice<'_>; 0] = [];
        sendmsg(
            self.socket.as_raw_fd(),
            &no_data,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(drop)
        .map_err(|e: Errno| e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{IoSliceMut, Read, Seek};

    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned};

    #[test]
    fn keys() {
        assert_eq!(key("task_id").as_deref(), Some("TASK_ID"));
        assert_eq!(key("shim_pid").as_deref(), Some("SHIM_PID"));
        assert_eq!(key("peer-uid.x").as_deref(), Some("PEER_UID_X"));
        assert_eq!(key("_PID").as_deref(), Some("PID"));
        assert_eq!(key("__9a").as_deref(), Some("A"));
        assert_eq!(key("é").as_deref(), None);
        assert_eq!(key("").as_deref(), None);
        assert_eq!(key("_1_").as_deref(), None);
        assert_eq!(key(&"x".repeat(100)).unwrap(), "X".repeat(64));
    }

    #[test]
    fn fields_text_and_binary() {
        let mut buf = Vec::new();
        put(&mut buf, "A", b"one line");
        put(&mut buf, "B", b"two\nlines");
        put(&mut buf, "C", b"");
        let mut want = b"A=one line\nB\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\nC=\n");
        assert_eq!(buf, want);
    }

    #[test]
    fn values() {
        assert_eq!(value(&Value::Null), None);
        assert_eq!(value(&"s".into()).unwrap().as_ref(), b"s");
        assert_eq!(value(&42.into()).unwrap().as_ref(), b"42");
        assert_eq!(value(&true.into()).unwrap().as_ref(), b"true");
        assert_eq!(
            value(&serde_json::json!({"a":[1]})).unwrap().as_ref(),
            br#"{"a":[1]}"#
        );
    }

    fn fake() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (dir, path, server)
    }

    #[test]
    fn open_probes_and_send_delivers_the_exact_bytes() {
        let (_dir, path, server) = fake();
        let j = Journal::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        // The probe: an empty datagram.
        assert_eq!(server.recv(&mut buf).unwrap(), 0);
        j.send(b"MESSAGE=hi\nPRIORITY=6\n").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MESSAGE=hi\nPRIORITY=6\n");
        // Close-on-exec, so no task inherits it.
        let flags = nix::fcntl::fcntl(j.fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn missing_socket_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let e = Journal::open(&dir.path().join("absent")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A path that exists but nobody listens on. (Not a socket bound and
        // closed here: a test forking meanwhile would keep it open.)
        let stale = dir.path().join("stale");
        std::fs::write(&stale, b"").unwrap();
        assert!(Journal::open(&stale).is_err());
    }

    #[test]
    fn oversized_entries_go_through_a_sealed_memfd() {
        let (_dir, path, server) = fake();
        let j = Journal::open(&path).unwrap();
        let mut small = [0u8; 16];
        assert_eq!(server.recv(&mut small).unwrap(), 0);
        // The kernel doubles this and takes at least a few KiB: far below
        // the entry.
        setsockopt(&j.socket, sockopt::SndBuf, &4096).unwrap();
        let mut entry = b"MESSAGE\n".to_vec();
        let big = "x\n".repeat(64 * 1024);
        entry.extend_from_slice(&(big.len() as u64).to_le_bytes());
        entry.extend_from_slice(big.as_bytes());
        entry.push(b'\n');
        j.send(&entry).unwrap();

        let mut data = [0u8; 16];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            server.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        assert_eq!(msg.bytes, 0, "the datagram itself is empty");
        let fds: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(fds.len(), 1);
        // Just received: ours alone.
        let mut file = File::from(crate::sys::adopt_fd(fds[0]).unwrap());
        let seals = nix::fcntl::fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        let all = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        assert_eq!(seals & all.bits(), all.bits());
        file.rewind().unwrap();
        let mut got = Vec::new();
        file.read_to_end(&mut got).unwrap();
        assert_eq!(got, entry);
    }
}
