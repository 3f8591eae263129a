//! The file system under the data root, checked before the figures depend
//! on it.
//!
//! On ext4 *without a journal* (these VMs' root file system), allocating an
//! inode skips every free inode of the block group that was deleted in the
//! last 60 s (360 s while its inode-table block is still dirty), one buffer
//! lookup each (`find_inode_bit` → `recently_deleted` in fs/ext4/ialloc.c).
//! After a `rm -rf` of a few thousand files, each file create in that group
//! costs milliseconds of kernel CPU: the submit (a directory and 3 files)
//! and the shim (5 more inodes) then measure the file system, not the
//! runtime. So the bench marks its data root `chattr +T` (Orlov "top
//! directory"), which spreads each scenario's data dir to a block group of
//! its own, probes the creates in each data dir before its server starts
//! (tries another one when they are slow, and when all are, waits for the
//! deletions to age out), and syncs after removing the root (so the next
//! run's penalty window is 60 s, not 360 s).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::stats::Stats;

/// A submit's creates (mkdir + 3 files) take ~0.05 ms on a healthy ext4
/// here; above this p50 the block group is paying for recent deletions
/// (0.25 ms already doubled the latency figure, and at 0.07 ms the
/// throughput rounds cost 40% more CPU per task).
pub const SLOW_MS: f64 = 0.06;

/// When every placement is slow, the bench waits for the deletions to age
/// out (60 s after a sync), re-probing every [`WAIT_STEP`], up to this long
/// in all (over every scenario of a run, so a run stays under 3 minutes).
pub const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(90);
pub const WAIT_STEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Data dirs tried per server before settling for the fastest.
pub const PLACEMENT_TRIES: usize = 4;

/// `chattr +T dir`; whether it took.
pub fn spread_subdirs(dir: &Path) -> bool {
    Command::new("chattr")
        .arg("+T")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What a submit does to the file system (mkdir + 3 file creates), `n`
/// times under a fresh `dir/bench-fsprobe-<k>/`; the files stay until the
/// root goes.
pub fn probe(dir: &Path, n: usize) -> Stats {
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = dir.join(format!("bench-fsprobe-{k}"));
    let _ = std::fs::create_dir_all(&base);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let d = base.join(i.to_string());
        let t = Instant::now();
        if std::fs::create_dir(&d).is_err() {
            continue;
        }
        for f in ["request.json", "stdout.log", "stderr.log"] {
            let _ = std::fs::File::create(d.join(f));
        }
        v.push(t.elapsed());
    }
    Stats::of_durations(&v)
}

/// The probe line, with a warning when creates are slow.
pub fn describe(s: &Stats) -> String {
    let mut line = format!(
        "  fs probe in the data dir: mkdir + 3 creates p50 {:.3} ms, max {:.3} ms",
        s.p50, s.max
    );
    if s.p50 > SLOW_MS {
        line.push_str(
            "  <-- SLOW: recently deleted inodes in this block group (ext4 without a journal)",
        );
    }
    line
}

pub fn sync() {
    nix::unistd::sync();
}
