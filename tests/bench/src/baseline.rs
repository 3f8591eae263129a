//! The same work done directly, without the runtime: the baselines every
//! figure is printed next to.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// fork/exec + wait of `/bin/true`, as `std::process::Command` does it.
pub fn true_once() -> Duration {
    let t = Instant::now();
    let st = Command::new("/bin/true")
        .stdin(Stdio::null())
        .status()
        .expect("spawn /bin/true");
    assert!(st.success());
    t.elapsed()
}

/// fork/exec + wait of `argv` (stdin and stdout `/dev/null`), which must
/// succeed.
pub fn command_once(argv: &[String]) -> Duration {
    let t = Instant::now();
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", argv[0]));
    assert!(st.success(), "{argv:?}: {st}");
    t.elapsed()
}

/// `n` runs of `/bin/true` spread over `threads` threads; the wall time.
pub fn true_parallel(n: usize, threads: usize) -> Duration {
    parallel(n, threads, &|| {
        true_once();
    })
}

/// `n` runs of `once` spread over `threads` threads; the wall time.
pub fn parallel(n: usize, threads: usize, once: &(dyn Fn() + Sync)) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for share in shares(n, threads) {
            s.spawn(move || {
                for _ in 0..share {
                    once();
                }
            });
        }
    });
    t.elapsed()
}

/// `n` split into `parts` nearly equal shares.
pub fn shares(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| n / parts + usize::from(i < n % parts))
        .collect()
}

pub fn spawn_sleep(secs: u32) -> Child {
    Command::new("sleep")
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

pub fn sigterm(child: &Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
}

/// `sleep 10`, SIGTERM after `wall`, reaped: how long past `wall` it ended
/// (what a perfect timeout enforcer would show).
pub fn timeout_overshoot(wall: Duration) -> Duration {
    let mut c = spawn_sleep(10);
    let t = Instant::now();
    std::thread::sleep(wall.saturating_sub(t.elapsed()));
    sigterm(&c);
    c.wait().expect("wait sleep");
    t.elapsed().saturating_sub(wall)
}

/// A running `sleep 30`: SIGTERM to reaped.
pub fn kill_latency(settle: Duration) -> Duration {
    let mut c = spawn_sleep(30);
    std::thread::sleep(settle);
    let t = Instant::now();
    sigterm(&c);
    c.wait().expect("wait sleep");
    t.elapsed()
}

/// `head -c bytes /dev/zero > out`.
pub fn head_to_file(bytes: u64, out: &Path) -> Duration {
    let t = Instant::now();
    let f = File::create(out).expect("baseline output file");
    let st = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(f)
        .status()
        .expect("spawn head");
    assert!(st.success());
    let d = t.elapsed();
    let _ = std::fs::remove_file(out);
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_sum_up() {
        assert_eq!(super::shares(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(super::shares(1000, 4).iter().sum::<usize>(), 1000);
    }
}
