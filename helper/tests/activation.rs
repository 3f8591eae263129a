//! Socket activation of the real helper binary, started the way systemd
//! starts it: a listening socket as descriptor 3, `LISTEN_PID` set to the
//! helper's own pid and `LISTEN_FDS=1`. A shell sets the variables and
//! execs the helper, so `$$` is the helper's pid.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use execgo_runtime_protocol::{read_frame, write_frame, Hello, HelloReply, Request, Response};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// `exec`s the helper from a shell with `listener` as descriptor 3 and the
/// activation variables given by `vars` (`$$` is the helper's pid).
fn spawn(listener: &UnixListener, vars: &str, data: &Path, socket: &Path) -> Child {
    fcntl(listener.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let me = common::my_uid();
    let script = format!(
        "{vars} exec \"$0\" \"$@\" 3<&{fd}",
        fd = listener.as_raw_fd()
    );
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(socket)
        .args(["--allowed-uid", &me.to_string()])
        .args(common::task_user_args(me, me, &[]))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fcntl(listener.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    child
}

fn wait_output(mut child: Child) -> Output {
    let until = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the helper did not exit: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn last_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    line["error"].as_str().unwrap().to_string()
}

#[test]
fn serves_the_activated_socket() {
    let tmp = common::searchable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    let socket = tmp.path().join("h.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let inode = std::fs::metadata(&socket).unwrap();
    let mut child = spawn(
        &listener,
        "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=helper;",
        &data,
        &socket,
    );
    // Our copy of the socket is no longer needed: the helper holds its own.
    drop(listener);

    // systemd's socket serves right away; connections queue until the
    // helper accepts.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write_frame(&mut s, &Hello::current()).unwrap();
    assert!(matches!(
        read_frame::<HelloReply, _>(&mut s).unwrap(),
        HelloReply::Accepted { .. }
    ));
    write_frame(&mut s, &Request::Ping).unwrap();
    assert_eq!(read_frame::<Response, _>(&mut s).unwrap(), Response::Pong);

    // The helper served the socket it was given, not a new one of its own.
    let now = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(now.ino(), inode.ino());

    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"socket_activated\":true"), "{log}");
}

#[test]
fn bad_activation_variables_stop_the_helper_with_a_clear_error() {
    let cases = [
        (
            "export LISTEN_PID=$$ LISTEN_FDS=2;",
            "LISTEN_FDS=2, but the helper serves exactly one socket",
        ),
        (
            "export LISTEN_PID=$$ LISTEN_FDS=one;",
            "LISTEN_FDS=\"one\" is not a descriptor count",
        ),
        (
            "export LISTEN_FDS=1;",
            "LISTEN_FDS is set but LISTEN_PID is not",
        ),
        (
            "export LISTEN_PID=me LISTEN_FDS=1;",
            "LISTEN_PID=\"me\" is not a process id",
        ),
    ];
    for (vars, want) in cases {
        let tmp = common::searchable_tempdir();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let socket = tmp.path().join("h.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let out = wait_output(spawn(&listener, vars, &data, &socket));
        assert_eq!(out.status.code(), Some(1), "{vars}");
        let error = last_error(&out);
        assert!(error.contains(want), "{vars}: {error}");
    }
}

#[test]
fn an_activated_socket_at_another_path_is_refused() {
    let tmp = common::searchable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let listener = UnixListener::bind(tmp.path().join("systemd.sock")).unwrap();
    let socket = tmp.path().join("h.sock");
    let out = wait_output(spawn(
        &listener,
        "export LISTEN_PID=$$ LISTEN_FDS=1;",
        &data,
        &socket,
    ));
    assert_eq!(out.status.code(), Some(1));
    let error = last_error(&out);
    assert!(error.contains("systemd.sock"), "{error}");
    assert!(error.contains("but --socket is"), "{error}");
    assert!(!socket.exists(), "nothing may be bound at --socket");
}

#[test]
fn a_descriptor_3_that_is_not_listening_is_refused() {
    let tmp = common::searchable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let socket = tmp.path().join("h.sock");
    // Bound but never listen(2)ed on: a stream socket systemd would not pass.
    let unlistened = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    let addr = nix::sys::socket::UnixAddr::new(&socket).unwrap();
    nix::sys::socket::bind(unlistened.as_raw_fd(), &addr).unwrap();
    let me = common::my_uid();
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\" 3<&{}",
            unlistened.as_raw_fd()
        ))
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("--socket")
        .arg(&socket)
        .args(["--allowed-uid", &me.to_string()])
        .args(common::task_user_args(me, me, &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(1));
    let error = last_error(&out);
    assert!(error.contains("descriptor 3 is not listening"), "{error}");
}

#[test]
fn variables_for_another_process_are_ignored() {
    // LISTEN_PID names another process: the helper binds its own socket
    // (replacing the one we bound, now stale), and descriptor 3 is closed
    // like any other inherited one.
    let tmp = common::searchable_tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    let socket = tmp.path().join("h.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // The inode number alone may be reused by the new socket: the change
    // time tells them apart.
    let identity = |m: std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (m.ino(), m.ctime(), m.ctime_nsec())
    };
    let before = identity(std::fs::metadata(&socket).unwrap());
    let mut child = spawn(
        &listener,
        "export LISTEN_PID=1 LISTEN_FDS=1;",
        &data,
        &socket,
    );
    drop(listener);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if std::fs::metadata(&socket).map(identity).ok() != Some(before) {
            if let Ok(mut s) = UnixStream::connect(&socket) {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                write_frame(&mut s, &Hello::current()).unwrap();
                if read_frame::<HelloReply, _>(&mut s).is_ok() {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < until,
            "the helper never bound its own socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"socket_activated\":false"), "{log}");
}
