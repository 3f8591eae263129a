//! Requests pipelined through the real helper binary: each is answered in
//! request order, and a launch is answered as soon as its shim is started,
//! whatever its task does next. A task held before its exec (see [`Gate`])
//! delays no reply, on its connection or another, and a connection that
//! goes away leaves its shims running.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{has_started, read_claim, read_to_close, spec, wait_result, wait_started, Helper};
use execgo_runtime_protocol::{encode, read_frame, write_frame, Launched, Request, Response};

const WAIT: Duration = Duration::from_secs(20);

/// `F_SETSIG` from `<asm-generic/fcntl.h>` (the `libc` crate lacks it for
/// glibc targets).
const F_SETSIG: libc::c_int = 10;

/// A copy of `/bin/true` under a write lease (`F_SETLEASE`, see fcntl(2)):
/// the kernel makes any other open of the file wait until the lease holder
/// releases it (or `/proc/sys/fs/lease-break-time`, 45 s by default,
/// passes), and execve(2) opens the program without `O_NONBLOCK`. So a
/// shim whose task runs this program is stuck in its spawn step, after its
/// claim and before `started`, until the test opens the gate:
/// deterministically, with no sleeps.
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

fn launched(s: &mut UnixStream, what: &str) -> Launched {
    match read_frame::<Response, _>(s).unwrap() {
        Response::Launched(l) => l,
        other => panic!("{what}: expected Launched, got {other:?}"),
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_without_waiting_for_tasks() {
    let h = Helper::start();
    let gate = Gate::new(h.dir.path());
    let ids = ["first", "second", "third"];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| h.task(id)).collect();
    let mut c = h.client();
    // Three launches and a ping in one write, before reading anything. The
    // first task's exec is held at the gate.
    let mut bytes = encode(&Request::Launch(spec("first", &[gate.program()]))).unwrap();
    for id in &ids[1..] {
        bytes.extend(encode(&Request::Launch(spec(id, &["/bin/true"]))).unwrap());
    }
    bytes.extend(encode(&Request::Ping).unwrap());
    c.stream.write_all(&bytes).unwrap();
    // Every reply comes while the first task cannot start, in request
    // order: each names the shim that claimed its task.
    let replies: Vec<Launched> = ids.iter().map(|id| launched(&mut c.stream, id)).collect();
    assert_eq!(
        read_frame::<Response, _>(&mut c.stream).unwrap(),
        Response::Pong
    );
    gate.wait_until_held();
    for dir in &dirs[1..] {
        assert_eq!(wait_result(dir, WAIT)["status"], "success");
    }
    for ((id, dir), l) in ids.iter().zip(&dirs).zip(&replies) {
        assert_eq!(read_claim(dir).shim_pid, l.shim_pid, "{id}");
    }
    // The held task has its claim but no start; other connections are
    // served meanwhile.
    assert!(!has_started(&dirs[0]));
    let t = Instant::now();
    h.assert_alive();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    gate.open();
    let started = wait_started(&dirs[0], WAIT);
    let r = wait_result(&dirs[0], WAIT);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["pid"], started.pid);
    assert_eq!(r["shim_pid"], replies[0].shim_pid);
}

#[test]
fn a_connection_that_goes_away_leaves_its_shims_running() {
    let h = Helper::start();
    let gate = Gate::new(h.dir.path());
    let ids = ["orphan-1", "orphan-2"];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| h.task(id)).collect();
    let mut c = h.client();
    for id in ids {
        write_frame(&mut c.stream, &Request::Launch(spec(id, &[gate.program()]))).unwrap();
    }
    // The peer stops writing: its requests are still served, in order,
    // then the helper closes the connection.
    c.stream.shutdown(Shutdown::Write).unwrap();
    for (id, dir) in ids.iter().zip(&dirs) {
        let l = launched(&mut c.stream, id);
        gate.wait_until_held();
        let until = Instant::now() + WAIT;
        while dir.join("shim.claim").symlink_metadata().is_err() {
            assert!(Instant::now() < until, "{id} never claimed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(read_claim(dir).shim_pid, l.shim_pid, "{id}");
    }
    assert!(read_to_close(&mut c.stream).is_empty());
    drop(c);
    h.assert_alive();
    // The shims never needed the connection.
    gate.open();
    for dir in &dirs {
        let r = wait_result(dir, WAIT);
        assert_eq!(r["status"], "success", "{r}");
        assert!(has_started(dir));
    }
    h.assert_alive();
}

/// A connection's input is not read while its unsent replies are at their
/// bound, so pipelining many requests before reading any reply costs the
/// helper bounded memory, and every reply still comes, in order.
#[test]
fn thousands_of_pipelined_requests_cost_bounded_memory() {
    const COUNT: usize = 200_000;
    let hwm = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let h = Helper::start();
    let before = hwm(h.pid());
    let mut c = h.client();
    // Every 1000th request a probe, so that order shows.
    let is_probe = |i: usize| i % 1000 == 999;
    let mut bytes = Vec::new();
    for i in 0..COUNT {
        let req = if is_probe(i) {
            Request::Probe
        } else {
            Request::Ping
        };
        bytes.extend(encode(&req).unwrap());
    }
    let mut writer = c.stream.try_clone().unwrap();
    let t = Instant::now();
    let pipelined = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
    // Nothing read for a while: the helper stops reading, the writer
    // blocks.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!pipelined.is_finished(), "the helper took every request");
    for i in 0..COUNT {
        match read_frame::<Response, _>(&mut c.stream).unwrap() {
            Response::Pong if !is_probe(i) => {}
            Response::Probe(_) if is_probe(i) => {}
            other => panic!("reply {i}: {other:?}"),
        }
    }
    pipelined.join().unwrap();
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    let grown = hwm(h.pid()).saturating_sub(before);
    assert!(grown < 8 * 1024, "the helper grew by {grown} KiB");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    println!(
        "{COUNT} requests in {:?}, peak grew {grown} KiB",
        t.elapsed()
    );
}
