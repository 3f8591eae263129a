//! A small cache of log heads for status reads: the ExecGo client polls
//! every 100 ms, and a task's first `*_max_bytes` of output (up to 4 MiB
//! each by default) are reread only when the log's size or mtime changed.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Entries kept; beyond this the oldest is dropped.
const MAX_ENTRIES: usize = 128;
/// Bytes kept across all entries.
const MAX_BYTES: usize = 64 << 20;

#[derive(Clone, PartialEq, Eq)]
struct Key {
    len: u64,
    mtime_ns: i128,
    max: u64,
}

struct Entry {
    key: Key,
    head: Arc<str>,
    truncated: bool,
}

/// Keyed by the path's bytes: comparing `Path`s parses their components,
/// and every insert compares against the whole eviction order.
#[derive(Default)]
struct Inner {
    map: HashMap<OsString, Entry>,
    order: VecDeque<OsString>,
    bytes: usize,
}

pub struct LogCache {
    inner: Mutex<Inner>,
    /// `--max-log-bytes`: a log this long was capped by its shim, which
    /// dropped what the task wrote past it.
    cap: u64,
}

impl Default for LogCache {
    fn default() -> Self {
        LogCache::with_cap(u64::MAX)
    }
}

impl LogCache {
    /// A cache for logs capped at `cap` bytes on disk (`--max-log-bytes`).
    pub fn with_cap(cap: u64) -> Self {
        LogCache {
            inner: Mutex::default(),
            cap,
        }
    }

    /// The head of the log at `path`: at most `max` bytes as lossy UTF-8, and
    /// whether it is truncated: the log is longer than `max`, or it reached
    /// the on-disk cap (output past it was dropped). A missing log is empty.
    pub fn read(&self, path: &Path, max: u64) -> io::Result<(Arc<str>, bool)> {
        use std::io::Read;
        let f = match super::files::open_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Arc::from(""), false)),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let key = Key {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            max,
        };
        if let Ok(inner) = self.inner.lock() {
            if let Some(e) = inner.map.get(path.as_os_str()) {
                if e.key == key {
                    return Ok((Arc::clone(&e.head), e.truncated));
                }
            }
        }
        let mut buf = Vec::with_capacity(key.len.min(max) as usize);
        f.take(max).read_to_end(&mut buf)?;
        let head: Arc<str> = Arc::from(String::from_utf8_lossy(&buf).as_ref());
        let truncated = key.len > max || key.len >= self.cap;
        if let Ok(mut inner) = self.inner.lock() {
            inner.insert(
                path.as_os_str().to_owned(),
                key,
                Arc::clone(&head),
                truncated,
            );
        }
        Ok((head, truncated))
    }

    /// Forgets a task's logs (its directory was deleted).
    pub fn forget_dir(&self, dir: &Path) {
        if let Ok(mut inner) = self.inner.lock() {
            let gone: Vec<OsString> = inner
                .map
                .keys()
                .filter(|p| Path::new(p).starts_with(dir))
                .cloned()
                .collect();
            for p in gone {
                inner.remove(&p);
            }
        }
    }
}

impl Inner {
    fn insert(&mut self, path: OsString, key: Key, head: Arc<str>, truncated: bool) {
        self.remove(&path);
        self.bytes += head.len();
        self.order.push_back(path.clone());
        self.map.insert(
            path,
            Entry {
                key,
                head,
                truncated,
            },
        );
        while self.map.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.front().cloned() else {
                break;
            };
            self.remove(&oldest);
        }
    }

    fn remove(&mut self, path: &OsStr) {
        if let Some(e) = self.map.remove(path) {
            self.bytes -= e.head.len();
            self.order.retain(|p| p != path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout.log");
        std::fs::write(&p, "hello").unwrap();
        let c = LogCache::default();
        let (a, t) = c.read(&p, 3).unwrap();
        assert_eq!((&*a, t), ("hel", true));
        let (b, _) = c.read(&p, 3).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "an unchanged log was reread");
        std::fs::write(&p, "hello world").unwrap();
        let (d, t) = c.read(&p, 100).unwrap();
        assert_eq!((&*d, t), ("hello world", false));
        c.forget_dir(dir.path());
        assert!(c.inner.lock().unwrap().map.is_empty());
        assert_eq!(&*c.read(&dir.path().join("none"), 5).unwrap().0, "");
    }

    #[test]
    fn a_log_at_the_cap_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stdout.log");
        std::fs::write(&p, "hello").unwrap();
        let c = LogCache::with_cap(5);
        assert!(c.read(&p, 100).unwrap().1, "at the cap");
        std::fs::write(&p, "hell").unwrap();
        assert!(!c.read(&p, 100).unwrap().1, "below it");
        assert!(!LogCache::default().read(&p, 100).unwrap().1);
    }

    #[test]
    fn bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = LogCache::default();
        for i in 0..(MAX_ENTRIES + 10) {
            let p = dir.path().join(format!("{i}.log"));
            std::fs::write(&p, "x").unwrap();
            c.read(&p, 10).unwrap();
        }
        let inner = c.inner.lock().unwrap();
        assert_eq!(inner.map.len(), MAX_ENTRIES);
        assert_eq!(inner.order.len(), MAX_ENTRIES);
    }
}
