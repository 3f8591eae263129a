//! Launches in flight at once, through the real helper binary: requests
//! pipelined on one connection are answered in request order, a launch
//! whose shim is slow to report blocks neither other connections nor the
//! requests behind it (they wait their turn), and a connection closed with
//! launches pending leaves their shims running.
//!
//! A slow shim is made with a [`Gate`]: see there for how, and why not a
//! FIFO.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{spec, wait_result, Helper};
use execgo_runtime_protocol::{encode, read_frame, write_frame, Launched, Request, Response};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const WAIT: Duration = Duration::from_secs(20);

/// `F_SETSIG` from `<asm-generic/fcntl.h>` (the `libc` crate lacks it for
/// glibc targets).
const F_SETSIG: libc::c_int = 10;

/// A copy of `/bin/true` under a write lease (`F_SETLEASE`, see fcntl(2)):
/// the kernel makes any other open of the file wait until the lease holder
/// releases it (or `/proc/sys/fs/lease-break-time`, 45 s by default,
/// passes), and execve(2) opens the program without `O_NONBLOCK`. So a
/// shim whose task runs this program is stuck in its spawn step (the exec
/// status pipe stays open) and cannot report until the test opens the
/// gate: a late report, deterministically, with no sleeps.
///
/// Not a FIFO as `stdout.log`: the shim opens its files with `O_NONBLOCK`
/// and refuses anything but a regular file (`fs_at::open_file`), so a FIFO
/// fails the launch at once instead of holding it.
struct Gate {
    path: PathBuf,
    lease: OwnedFd,
}

#[allow(unsafe_code)]
fn fcntl_int(fd: &OwnedFd, cmd: libc::c_int, arg: libc::c_int) -> std::io::Result<libc::c_int> {
    // SAFETY: F_SETSIG, F_SETLEASE and F_GETLEASE take an int (or nothing)
    // and touch no memory of ours; `fd` stays open for the call.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Gate {
    fn new(dir: &Path) -> Gate {
        let path = dir.join("gated-true");
        std::fs::copy("/bin/true", &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Read-only: a write lease needs ours to be the only open file, and
        // an open for writing would make the exec fail with ETXTBSY.
        let lease: OwnedFd = std::fs::File::open(&path).unwrap().into();
        // The holder is told of each blocked open by a signal, SIGIO by
        // default, whose default action would end this test process;
        // SIGURG's is to ignore it.
        fcntl_int(&lease, F_SETSIG, libc::SIGURG).unwrap();
        fcntl_int(&lease, libc::F_SETLEASE, libc::F_WRLCK)
            .expect("taking a write lease (needed to hold a shim back)");
        Gate { path, lease }
    }

    fn program(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Waits until an exec of the program is held at the gate: the kernel
    /// then reports the lease as the type it is being broken to (read)
    /// instead of write.
    fn wait_until_held(&self) {
        let until = Instant::now() + WAIT;
        while fcntl_int(&self.lease, libc::F_GETLEASE, 0).unwrap() == libc::F_WRLCK {
            assert!(Instant::now() < until, "no exec reached the gate");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets every held exec go on.
    fn open(self) {
        fcntl_int(&self.lease, libc::F_SETLEASE, libc::F_UNLCK).unwrap();
    }
}

/// Asserts nothing arrives on `s` for `d`.
fn assert_silent(s: &UnixStream, d: Duration) {
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(d.as_millis()).unwrap();
    let n = poll(&mut fds, PollTimeout::from(ms)).unwrap();
    assert_eq!(n, 0, "a reply came early: {:?}", fds[0].revents());
}

fn launched(s: &mut UnixStream, what: &str) -> Launched {
    match read_frame::<Response, _>(s).unwrap() {
        Response::Launched(l) => l,
        other => panic!("{what}: expected Launched, got {other:?}"),
    }
}

/// Asserts `l` is the reply for the task in `dir`: the shim that claimed
/// it and the process that ran, as the task's own files say.
fn assert_reply_is_for(l: &Launched, dir: &Path) {
    // The claim is a symlink whose target is the record.
    let target = std::fs::read_link(dir.join("shim.claim")).unwrap();
    let claim: serde_json::Value =
        serde_json::from_slice(target.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(claim["shim_pid"], l.shim_pid, "{}", dir.display());
    let r = wait_result(dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["pid"], l.pid.expect("a pid"), "{}", dir.display());
}

#[test]
fn pipelined_requests_are_answered_in_request_order() {
    let h = Helper::start();
    let gate = Gate::new(h.dir.path());
    let ids = ["first", "second", "third"];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| h.task(id)).collect();
    let mut c = h.client();
    // Three launches and a ping in one write, before reading anything. The
    // first task's exec is held at the gate, so it reports last.
    let mut bytes = encode(&Request::Launch(spec("first", &[gate.program()]))).unwrap();
    for id in &ids[1..] {
        bytes.extend(encode(&Request::Launch(spec(id, &["/bin/true"]))).unwrap());
    }
    bytes.extend(encode(&Request::Ping).unwrap());
    c.stream.write_all(&bytes).unwrap();
    gate.wait_until_held();
    // The later launches ran to the end (so their shims reported long
    // ago), the Pong is ready, yet nothing may overtake the first launch.
    for dir in &dirs[1..] {
        wait_result(dir, WAIT);
    }
    assert_silent(&c.stream, Duration::from_millis(300));
    gate.open();
    for (id, dir) in ids.iter().zip(&dirs) {
        let l = launched(&mut c.stream, id);
        assert_reply_is_for(&l, dir);
    }
    assert_eq!(
        read_frame::<Response, _>(&mut c.stream).unwrap(),
        Response::Pong
    );
}

#[test]
fn a_slow_launch_holds_up_only_the_replies_behind_it() {
    let h = Helper::start();
    let gate = Gate::new(h.dir.path());
    let slow = h.task("slow");
    let fast = h.task("fast");
    let mut c1 = h.client();
    write_frame(
        &mut c1.stream,
        &Request::Launch(spec("slow", &[gate.program()])),
    )
    .unwrap();
    write_frame(&mut c1.stream, &Request::Ping).unwrap();
    gate.wait_until_held();
    // Another connection is served while the slow shim cannot report.
    let t = Instant::now();
    let mut c2 = h.client();
    let l = c2.launch(spec("fast", &["/bin/true"]));
    assert_reply_is_for(&l, &fast);
    assert_eq!(c2.call(&Request::Ping), Response::Pong);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The Ping behind the slow launch waits for it.
    assert_silent(&c1.stream, Duration::from_millis(300));
    gate.open();
    let l = launched(&mut c1.stream, "slow");
    assert_reply_is_for(&l, &slow);
    assert_eq!(
        read_frame::<Response, _>(&mut c1.stream).unwrap(),
        Response::Pong
    );
}

#[test]
fn a_connection_closed_with_launches_pending_leaves_the_shims_running() {
    let h = Helper::start();
    let gate = Gate::new(h.dir.path());
    let ids = ["orphan-1", "orphan-2"];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| h.task(id)).collect();
    let mut c = h.client();
    for id in ids {
        write_frame(&mut c.stream, &Request::Launch(spec(id, &[gate.program()]))).unwrap();
    }
    // The helper reads both requests before it sees the end of the stream.
    drop(c);
    gate.wait_until_held();
    // Both launches were still pending (held at the gate) when dropped.
    let until = Instant::now() + WAIT;
    loop {
        let log = h.log();
        let dropped = log
            .lines()
            .filter(|l| l.contains("connection closed with the launch pending"))
            .collect::<Vec<_>>();
        if ids
            .iter()
            .all(|id| dropped.iter().any(|l| l.contains(&format!("\"{id}\""))))
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "pending launches not dropped:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.assert_alive();
    gate.open();
    for dir in &dirs {
        let r = wait_result(dir, WAIT);
        assert_eq!(r["status"], "success", "{r}");
        // The shim found nobody to report to, and carried on.
        let shim_log = std::fs::read_to_string(dir.join("shim.log")).unwrap();
        assert!(
            shim_log.contains("reporting to the helper failed; carrying on"),
            "{shim_log}"
        );
    }
    h.assert_alive();
}
