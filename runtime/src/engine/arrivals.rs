//! A launched task's milestones seen as they arrive: the shim creates
//! `started` once the task's process is exec'd, and its last act before it
//! exits is to rename `result.json` in. One inotify instance watches the
//! dirs of launched tasks for both, so a start is recorded at once and a
//! task is finalized without waiting for its shim's exit teardown. The
//! shim's exit stays the event for shims that die without a result (see
//! `Engine::watch`).
//!
//! The same instance watches a log while someone follows it
//! (`watch_writes`): each write to it wakes its followers.
//!
//! One instance for the whole runtime, not one per task: inotify instances
//! are few per user (`fs.inotify.max_user_instances`, often 128), watches
//! are many.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::files::{RESULT, STARTED};
use crate::sys::{self, InotifyFd};

/// The runtime's result watcher. Cheap to clone.
#[derive(Clone)]
pub struct Arrivals {
    shared: Arc<Shared>,
}

struct Shared {
    fd: AsyncFd<InotifyFd>,
    watches: Mutex<Watches>,
    /// The reader stopped: no watch tells anything any more.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Watches {
    by_wd: HashMap<WatchDescriptor, Watched>,
    next_token: u64,
}

/// The waiters on one directory. The same directory watched twice gets
/// the same descriptor from the kernel; `token` tells this registration
/// from a later one that reuses the descriptor number.
struct Watched {
    token: u64,
    users: usize,
    waiters: Vec<Arc<Notify>>,
}

/// One watch on a task directory, woken each time something of note
/// arrives; the inotify watch goes when the last one on that directory is
/// dropped.
pub struct Arrival {
    shared: Arc<Shared>,
    wd: WatchDescriptor,
    token: u64,
    woken: Arc<Notify>,
}

impl Arrivals {
    /// Creates the instance and starts the task that reads it. Must run
    /// inside the runtime's reactor.
    pub fn start() -> io::Result<Arrivals> {
        let shared = Arc::new(Shared {
            fd: sys::async_inotify()?,
            watches: Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(read_events(Arc::clone(&shared)));
        Ok(Arrivals { shared })
    }

    /// Starts watching `dir` for its `started` and its `result.json`.
    /// What is in place already is not reported: check after this returns.
    pub fn watch(&self, dir: &Path) -> io::Result<Arrival> {
        let flags = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        self.add(dir, flags)
    }

    /// Starts watching the file at `path` (a log) for writes, for a
    /// follower of it. Writes before this returns are not reported.
    pub fn watch_writes(&self, path: &Path) -> io::Result<Arrival> {
        self.add(
            path,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DONT_FOLLOW,
        )
    }

    fn add(&self, path: &Path, flags: AddWatchFlags) -> io::Result<Arrival> {
        let mut watches = self.shared.lock();
        let wd = self.shared.fd.get_ref().0.add_watch(path, flags)?;
        let woken = Arc::new(Notify::new());
        let next = watches.next_token;
        let entry = watches.by_wd.entry(wd).or_insert_with(|| Watched {
            token: next,
            users: 0,
            waiters: Vec::new(),
        });
        entry.users += 1;
        entry.waiters.push(Arc::clone(&woken));
        let token = entry.token;
        if token == next {
            watches.next_token += 1;
        }
        Ok(Arrival {
            shared: Arc::clone(&self.shared),
            wd,
            token,
            woken,
        })
    }
}

impl Arrival {
    /// Returns when something may have arrived since the last call: the
    /// shim created `started` or renamed `result.json` in, the directory
    /// went away, or events were lost (queue overflow). The caller looks
    /// for itself. An error means this watch can tell nothing more.
    pub async fn arrived(&mut self) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let stopped = || io::Error::other("the task dir watcher stopped");
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        self.woken.notified().await;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(stopped());
        }
        Ok(())
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        let mut watches = self.shared.lock();
        let Some(w) = watches.by_wd.get_mut(&self.wd) else {
            return;
        };
        if w.token != self.token {
            return;
        }
        w.users -= 1;
        w.waiters.retain(|n| !Arc::ptr_eq(n, &self.woken));
        if w.users == 0 {
            watches.by_wd.remove(&self.wd);
            // EINVAL: the kernel dropped the watch already (dir removed).
            let _ = self.shared.fd.get_ref().0.rm_watch(self.wd);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Watches> {
        // The lock guards plain maps; a panic elsewhere cannot leave them
        // half-updated, so a poisoned lock is still usable.
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the waiters of `wd` (a wake while nobody waits is kept for
    /// the next wait); `gone` also forgets it (the kernel has).
    fn wake(&self, wd: WatchDescriptor, gone: bool) {
        let mut watches = self.lock();
        if let Some(w) = watches.by_wd.get(&wd) {
            w.waiters.iter().for_each(|n| n.notify_one());
        }
        if gone {
            watches.by_wd.remove(&wd);
        }
    }

    /// After a queue overflow, or when the reader stops: anything may
    /// have been missed.
    fn wake_all(&self) {
        let watches = self.lock();
        for w in watches.by_wd.values() {
            w.waiters.iter().for_each(|n| n.notify_one());
        }
    }
}

/// Reads the instance for as long as the runtime runs. If it fails, the
/// waiters' senders are dropped with it and every wait falls back to the
/// shim's exit.
async fn read_events(shared: Arc<Shared>) {
    loop {
        let mut ready = match shared.fd.readable().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "result watcher: polling inotify failed");
                break;
            }
        };
        match ready.get_inner().0.read_events() {
            Ok(events) => {
                for e in events {
                    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        tracing::warn!("result watcher: inotify queue overflowed");
                        shared.wake_all();
                    } else if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                        shared.wake(e.wd, true);
                    } else if e
                        .name
                        .as_deref()
                        // No name: a write to a watched log itself.
                        .is_none_or(|n| n == RESULT || n == STARTED)
                    {
                        shared.wake(e.wd, false);
                    }
                }
            }
            Err(Errno::EAGAIN) => ready.clear_ready(),
            Err(e) => {
                tracing::error!(error = %e, "result watcher: reading inotify failed");
                break;
            }
        }
    }
    // Fail every wait now rather than leave it to the shim's exit alone.
    shared
        .closed
        .store(true, std::sync::atomic::Ordering::Release);
    shared.wake_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(dir: &Path, name: &str) {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, b"{}").unwrap();
        std::fs::rename(tmp, dir.join(name)).unwrap();
    }

    async fn within(a: &mut Arrival, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), a.arrived())
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_result_wakes_its_own_dir_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let arrivals = Arrivals::start().unwrap();
        let mut wa = arrivals.watch(&a).unwrap();
        let mut wb = arrivals.watch(&b).unwrap();
        put(&a, "stdout.log");
        assert!(!within(&mut wa, 50).await, "another name is not the result");
        std::os::unix::fs::symlink("{}", a.join(STARTED)).unwrap();
        assert!(within(&mut wa, 5000).await, "the start wakes");
        assert!(!within(&mut wa, 50).await, "once");
        put(&a, RESULT);
        assert!(within(&mut wa, 5000).await);
        assert!(!within(&mut wb, 50).await, "b's result has not come");
        put(&b, RESULT);
        assert!(within(&mut wb, 5000).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_waits_on_one_dir_share_the_watch() {
        let tmp = tempfile::tempdir().unwrap();
        let arrivals = Arrivals::start().unwrap();
        let mut first = arrivals.watch(tmp.path()).unwrap();
        let mut second = arrivals.watch(tmp.path()).unwrap();
        assert_eq!(arrivals.shared.lock().by_wd.len(), 1);
        drop(first);
        // The second still has its watch.
        put(tmp.path(), RESULT);
        assert!(within(&mut second, 5000).await);
        drop(second);
        assert!(arrivals.shared.lock().by_wd.is_empty());
        first = arrivals.watch(tmp.path()).unwrap();
        assert!(!within(&mut first, 50).await, "nothing new arrived");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_to_a_watched_log_wakes_its_follower() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("stdout.log");
        std::fs::write(&log, b"").unwrap();
        let arrivals = Arrivals::start().unwrap();
        let mut dir = arrivals.watch(tmp.path()).unwrap();
        let mut w = arrivals.watch_writes(&log).unwrap();
        assert!(!within(&mut w, 50).await);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"x").unwrap();
        assert!(within(&mut w, 5000).await, "the write wakes");
        assert!(
            !within(&mut dir, 50).await,
            "the dir watch is not woken by it"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_removed_dir_ends_the_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("task");
        std::fs::create_dir(&dir).unwrap();
        let arrivals = Arrivals::start().unwrap();
        let mut w = arrivals.watch(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(within(&mut w, 5000).await);
        drop(w);
        assert!(arrivals.shared.lock().by_wd.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_dir_or_a_file_cannot_be_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let arrivals = Arrivals::start().unwrap();
        assert!(arrivals.watch(&tmp.path().join("nope")).is_err());
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        assert!(arrivals.watch(&tmp.path().join("file")).is_err());
        assert!(arrivals.shared.lock().by_wd.is_empty());
    }
}
