//! The connection level of the real helper binary: handshake, malformed
//! input (each closes only its own connection), the peer check, embedded
//! mode and the command line.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_to_close, send_raw, Helper, BIN};
use execgo_runtime_protocol::{
    encode, read_frame, write_frame, Hello, HelloReply, HelperErrorKind, Request, Response,
    HELLO_MAGIC, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn expect_rejected(s: &mut UnixStream) -> String {
    match read_frame::<HelloReply, _>(s).unwrap() {
        HelloReply::Rejected { reason } => {
            assert!(read_to_close(s).is_empty(), "closed after rejecting");
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn expect_invalid(s: &mut UnixStream) -> String {
    match read_frame::<Response, _>(s).unwrap() {
        Response::Error(e) => {
            assert_eq!(e.kind, HelperErrorKind::InvalidRequest, "{e}");
            assert!(read_to_close(s).is_empty(), "closed after the error");
            e.message
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn handshake_ping_and_probe() {
    let h = Helper::start();
    let mut c = h.client();
    assert_eq!(c.helper_pid, h.pid());
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    let probed = c.call(&Request::Probe);
    match &probed {
        Response::Probe(caps) => {
            assert_eq!(caps.privileged, nix::unistd::geteuid().is_root());
            assert!(caps.process_group);
            assert!(caps.rlimit_cpu);
            assert!(caps.rlimit_memory);
            assert!(caps.data_dir_writable);
        }
        other => panic!("{other:?}"),
    }
    // The start-up probe's answer, every time.
    assert_eq!(c.call(&Request::Probe), probed);
    // Several requests on one connection, several connections at once.
    let mut c2 = h.client();
    assert_eq!(c2.call(&Request::Ping), Response::Pong);
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    // The log is JSON lines with the expected keys.
    let log = h.log();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for key in ["timestamp", "level", "target", "message"] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["target"], "helper");
}

#[test]
fn bad_handshakes_are_rejected_and_the_helper_keeps_serving() {
    let h = Helper::start();

    let mut s = h.raw();
    write_frame(
        &mut s,
        &Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION + 1,
        },
    )
    .unwrap();
    let reason = expect_rejected(&mut s);
    assert!(reason.contains("version"), "{reason}");
    h.assert_alive();

    let mut s = h.raw();
    write_frame(
        &mut s,
        &Hello {
            magic: *b"WRONGMAG",
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let reason = expect_rejected(&mut s);
    assert!(reason.contains("magic"), "{reason}");
    h.assert_alive();

    // An HTTP client: "GET " read as a length is far over the cap.
    let mut s = h.raw();
    send_raw(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_rejected(&mut s);
    h.assert_alive();

    // A small frame of garbage.
    let mut s = h.raw();
    send_raw(&mut s, &frame(&[0xff; 3]));
    expect_rejected(&mut s);
    h.assert_alive();

    // A request instead of a hello.
    let mut s = h.raw();
    write_frame(&mut s, &Request::Ping).unwrap();
    expect_rejected(&mut s);
    h.assert_alive();
}

#[test]
fn malformed_requests_close_only_their_connection() {
    let h = Helper::start();
    let mut bystander = h.client();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", frame(&[0xff; 6])),
        ("oversized prefix", {
            let mut v = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
            v.extend_from_slice(&[0; 32]);
            v
        }),
        ("max prefix", u32::MAX.to_le_bytes().to_vec()),
        ("trailing bytes", {
            let mut p = encode(&Request::Ping).unwrap()[4..].to_vec();
            p.push(7);
            frame(&p)
        }),
        ("unknown variant", frame(&99u32.to_le_bytes())),
        ("empty payload", frame(&[])),
    ];
    for (name, bytes) in cases {
        let mut c = h.client();
        // A request pipelined before the bad bytes is answered first.
        let mut all = encode(&Request::Ping).unwrap();
        all.extend_from_slice(&bytes);
        send_raw(&mut c.stream, &all);
        assert_eq!(
            read_frame::<Response, _>(&mut c.stream).unwrap(),
            Response::Pong,
            "{name}"
        );
        let msg = expect_invalid(&mut c.stream);
        assert!(msg.starts_with("malformed frame"), "{name}: {msg}");
        h.assert_alive();
        assert_eq!(bystander.call(&Request::Ping), Response::Pong, "{name}");
    }
}

#[test]
fn a_stalled_peer_blocks_nobody_and_is_dropped() {
    let h = Helper::start();
    let mut stalled = h.client();
    // Half a length prefix, then silence.
    send_raw(&mut stalled.stream, &[10, 0]);
    let t = Instant::now();
    h.assert_alive();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Dropped after the partial-frame timeout (5 s), without a reply.
    stalled
        .stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(read_to_close(&mut stalled.stream).is_empty());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    h.assert_alive();
}

#[test]
fn a_peer_with_the_wrong_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        println!("skip: needs root to connect as a uid other than the allowed one");
        return;
    }
    // We are uid 0; only uid 12345 may connect, and root gets no exception.
    let h = Helper::start_allowing(12345);
    let mut s = h.raw();
    send_raw(&mut s, &encode(&Hello::current()).unwrap());
    assert!(
        read_to_close(&mut s).is_empty(),
        "no HelloReply for a refused peer"
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !h.log().contains("not allowed") {
        assert!(Instant::now() < until, "refusal not logged: {}", h.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn embedded_mode_serves_one_connection_and_exits_on_eof() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    nix::fcntl::fcntl(
        theirs.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--inherited-fd")
        .arg(theirs.as_raw_fd().to_string())
        .args(common::task_user_args(
            common::my_uid(),
            common::my_uid(),
            &[],
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(theirs);
    let mut s = ours;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write_frame(&mut s, &Hello::current()).unwrap();
    assert!(matches!(
        read_frame::<HelloReply, _>(&mut s).unwrap(),
        HelloReply::Accepted { .. }
    ));
    write_frame(&mut s, &Request::Ping).unwrap();
    assert_eq!(read_frame::<Response, _>(&mut s).unwrap(), Response::Pong);
    drop(s);
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "helper did not exit on eof");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for bad in [
        &["--data-dir", d][..],
        &["--data-dir", d, "--socket", sock],
        &[
            "--data-dir",
            d,
            "--socket",
            sock,
            "--allowed-uid",
            "1",
            "--inherited-fd",
            "3",
        ],
        &["--data-dir", d, "--inherited-fd", "3", "--allowed-uid", "1"],
        &["--bogus"],
    ] {
        assert_eq!(run(bad).status.code(), Some(2), "{bad:?}");
    }
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--data-dir",
        "--socket",
        "--allowed-uid",
        "--allowed-gid",
        "--task-user",
        "--allow-root-tasks",
    ] {
        assert!(text.contains(flag), "{flag} missing from help:\n{text}");
    }
    for internal in ["--inherited-fd", "--idle-timeout-secs"] {
        assert!(!text.contains(internal), "internal flag shown:\n{text}");
    }
    let me = common::my_uid();
    let task_user = common::task_user_args(1, me, &[]);
    let task_user: Vec<&str> = task_user.iter().map(String::as_str).collect();
    // A missing data dir is an error at start, not a usage error.
    let missing = dir.path().join("missing");
    let mut args = vec![
        "--data-dir",
        missing.to_str().unwrap(),
        "--socket",
        sock,
        "--allowed-uid",
        "1",
    ];
    args.extend(&task_user);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["error"].as_str().unwrap().contains("data dir"),
        "{line}"
    );
    // An inherited fd that is not open.
    let mut args = vec!["--data-dir", d, "--inherited-fd", "999"];
    args.extend(&task_user);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
}

/// Who tasks run as is settled at start: a root helper without a task
/// user, with uid 0 not allowed, or with a uid that may connect refuses to
/// start (exit 2, saying what to add); an unprivileged one accepts only
/// itself. Nothing is bound.
#[test]
fn task_user_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let sock = dir.path().join("s");
    let s = sock.to_str().unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["--data-dir", d, "--socket", s, "--allowed-uid", "1000"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let cases: Vec<(Vec<&str>, &str)> = if common::my_uid() == 0 {
        vec![
            // A uid per task by default: a range holding the allowed uid
            // is refused, and so is one naming no uid.
            (
                vec!["--task-uid-range", "999-1001"],
                "uid 1000, which may connect to the helper",
            ),
            (vec!["--task-uid-range", "0-9"], "expected FIRST-LAST"),
            (
                vec!["--task-user", "nobody", "--task-uid-range", "5-9"],
                "cannot be used with",
            ),
            (vec!["--task-user", "root"], "add --allow-root-tasks"),
            (vec!["--task-user", "0:0"], "add --allow-root-tasks"),
            (vec!["--task-user", "1000"], "may connect to the helper"),
            (vec!["--task-user", "no-such-user-x"], "no such user"),
            (vec!["--task-user", "1:x"], "expected NAME, UID or UID:GID"),
        ]
    } else {
        vec![
            (
                vec!["--task-user", "4000000000"],
                "can run tasks only as itself",
            ),
            (
                vec!["--task-uid-range", "1879048192-1879113727"],
                "needs a root helper",
            ),
        ]
    };
    for (extra, want) in cases {
        let (code, err) = run(&extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!sock.exists(), "{extra:?} bound the socket");
    }
}
