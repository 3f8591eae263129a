//! Hostile or broken peers against the real helper binary: each is
//! dropped in bounded time and memory while the others are served. Peers
//! that never read, read a byte now and then, never say hello, go idle,
//! fill every connection slot, or leave the helper without descriptors.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{read_to_close, stat_fields, Helper};
use execgo_runtime_protocol::{encode, read_frame, Request, Response};

/// `accept::MAX_CONNECTIONS` in the helper.
const MAX_CONNECTIONS: usize = 64;

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {s}"))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid as i32).unwrap();
    // Fields 14 and 15 of stat(5); index 0 is field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn wait_for_log(h: &Helper, needle: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    while !h.log().contains(needle) {
        assert!(Instant::now() < until, "no {needle:?} in: {}", h.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `count` pings from a thread, stopping at the first error (the
/// helper closed the connection, or stopped reading for longer than the
/// socket's write timeout).
fn ping_flood(s: &UnixStream, count: usize) -> std::thread::JoinHandle<usize> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let ping = encode(&Request::Ping).unwrap();
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1024)
            .collect();
        let mut sent = 0;
        while sent < count {
            let n = (count - sent).min(1024);
            if w.write_all(&batch[..n * ping.len()]).is_err() {
                break;
            }
            sent += n;
        }
        sent
    })
}

#[test]
fn a_peer_that_never_reads_is_dropped_in_bounded_time_and_memory() {
    let h = Helper::start();
    let before = status_kib(h.pid(), "VmHWM");
    let mut hog = h.client();
    let t = Instant::now();
    let flood = ping_flood(&hog.stream, 2_000_000);
    // Others are served meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    let served = Instant::now();
    h.assert_alive();
    assert!(
        served.elapsed() < Duration::from_secs(2),
        "{:?}",
        served.elapsed()
    );
    wait_for_log(&h, "does not read its replies", Duration::from_secs(20));
    let dropped = t.elapsed();
    assert!(
        dropped >= Duration::from_secs(4) && dropped < Duration::from_secs(15),
        "{dropped:?}"
    );
    // What was sent before the close is still there to read, then the end.
    let got = read_to_close(&mut hog.stream);
    assert!(!got.is_empty());
    let sent = flood.join().unwrap();
    assert!(sent < 2_000_000, "the helper stopped taking requests");
    let grown = status_kib(h.pid(), "VmHWM").saturating_sub(before);
    assert!(grown < 16 * 1024, "the helper grew by {grown} KiB");
    h.assert_alive();
}

#[test]
fn a_peer_that_reads_a_byte_now_and_then_is_dropped() {
    let h = Helper::start();
    let mut slow = h.client();
    let t = Instant::now();
    let flood = ping_flood(&slow.stream, 200_000);
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    let closed = loop {
        assert!(t.elapsed() < Duration::from_secs(30), "never dropped");
        std::thread::sleep(Duration::from_millis(500));
        match slow.stream.read(&mut byte) {
            Ok(1) => {}
            // End of file, or a reset: the helper closed it.
            Ok(_) | Err(_) => break t.elapsed(),
        }
        if h.log().contains("does not read its replies") {
            break t.elapsed();
        }
    };
    assert!(closed < Duration::from_secs(15), "{closed:?}");
    wait_for_log(&h, "does not read its replies", Duration::from_secs(5));
    drop(slow);
    flood.join().unwrap();
    h.assert_alive();
}

#[test]
fn a_connection_without_a_hello_is_closed() {
    let h = Helper::start();
    let mut silent = h.raw();
    let t = Instant::now();
    h.assert_alive();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(read_to_close(&mut silent).is_empty());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    wait_for_log(
        &h,
        "did not complete the handshake in time",
        Duration::from_secs(5),
    );
}

#[test]
fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let h = Helper::start_with(common::my_uid(), None, &["--idle-timeout-secs", "2"]);
    let mut idle = h.client();
    let mut busy = h.client();
    assert_eq!(idle.call(&Request::Ping), Response::Pong);
    let t = Instant::now();
    // Three idle timeouts' worth of pings, one every half second.
    while t.elapsed() < Duration::from_secs(6) {
        assert_eq!(busy.call(&Request::Ping), Response::Pong);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(read_to_close(&mut idle.stream).is_empty());
    wait_for_log(&h, "connection idle for too long", Duration::from_secs(5));
    assert_eq!(busy.call(&Request::Ping), Response::Pong);
}

#[test]
fn silent_connections_at_the_cap_do_not_lock_the_runtime_out() {
    let h = Helper::start();
    let silent: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| h.raw()).collect();
    let until = Instant::now() + Duration::from_secs(5);
    while h.log().matches("accepted a connection").count() < MAX_CONNECTIONS {
        assert!(Instant::now() < until, "not all accepted: {}", h.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Well within the hello timeout: the newcomer takes the oldest slot.
    let t = Instant::now();
    let mut c = h.client();
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(h.log().contains("too many open connections"));
    drop(silent);

    // The same with handshaken connections: the one silent longest goes.
    let mut idle: Vec<common::Client> = (0..MAX_CONNECTIONS - 1).map(|_| h.client()).collect();
    for c in idle.iter_mut().skip(1) {
        assert_eq!(c.call(&Request::Ping), Response::Pong);
    }
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    let mut newcomer = h.client();
    assert_eq!(newcomer.call(&Request::Ping), Response::Pong);
    assert!(read_to_close(&mut idle[0].stream).is_empty());
    for c in idle.iter_mut().skip(1) {
        assert_eq!(c.call(&Request::Ping), Response::Pong);
    }
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning() {
    // Few descriptors: the helper's own, one connection, and a handful
    // more.
    const LIMIT: u64 = 24;
    let h = Helper::start_configured(common::my_uid(), None, &[], |cmd| {
        common::limit_nofile(cmd, LIMIT, LIMIT)
    });
    let mut existing = h.client();
    assert_eq!(existing.call(&Request::Ping), Response::Pong);
    // More connections than descriptors: the rest wait in the backlog.
    let extra: Vec<UnixStream> = (0..LIMIT as usize + 8).map(|_| h.raw()).collect();
    wait_for_log(&h, "pausing new connections", Duration::from_secs(5));
    let start = cpu_ticks(h.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(h.pid()) - start;
    // A spinning poll loop would use about 100 ticks a second.
    assert!(used <= 10, "the helper used {used} ticks in a second");
    let t = Instant::now();
    assert_eq!(existing.call(&Request::Ping), Response::Pong);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        h.log().matches("pausing new connections").count(),
        1,
        "logged once: {}",
        h.log()
    );
    // Descriptors come back: new connections are served again.
    drop(extra);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = h.raw();
        s.write_all(&encode(&execgo_runtime_protocol::Hello::current()).unwrap())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if read_frame::<execgo_runtime_protocol::HelloReply, _>(&mut s).is_ok() {
            break;
        }
        assert!(Instant::now() < until, "never served again: {}", h.log());
    }
    wait_for_log(&h, "accepting connections again", Duration::from_secs(5));
    assert_eq!(existing.call(&Request::Ping), Response::Pong);
}
