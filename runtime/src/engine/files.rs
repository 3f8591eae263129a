//! The task directory `tasks/<id>/`: its layout, atomic writes and reading
//! the head of the output logs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::log_cache::LogCache;

use crate::model::Artifacts;

pub use execgo_runtime_protocol::taskdir::{
    ClaimRecord, StartedRecord, CLAIM, CONTROL, KILL_BYTE, REQUEST, RESULT, RESULT_TMP,
    RUNTIME_RESULT_TMP, SCRIPT, STARTED, STDERR, STDOUT,
};

/// Paths of one task.
#[derive(Clone)]
pub struct TaskDir {
    pub dir: PathBuf,
    /// Log heads are read through this cache (shared by the engine).
    logs: Arc<LogCache>,
}

impl TaskDir {
    pub fn new(tasks_dir: &Path, task_id: &str) -> Self {
        TaskDir {
            dir: tasks_dir.join(task_id),
            logs: Arc::default(),
        }
    }

    /// Reads log heads through `cache`.
    pub fn with_cache(mut self, cache: Arc<LogCache>) -> Self {
        self.logs = cache;
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn artifacts(&self, has_script: bool) -> Artifacts {
        let s = |n: &str| self.path(n).to_string_lossy().into_owned();
        Artifacts {
            task_dir: self.dir.to_string_lossy().into_owned(),
            request_path: s(REQUEST),
            result_path: s(RESULT),
            stdout_path: s(STDOUT),
            stderr_path: s(STDERR),
            script_path: has_script.then(|| s(SCRIPT)),
        }
    }

    /// Creates the directory afresh with `request.json`, empty logs and the
    /// script, if any. A leftover directory without a database row (a
    /// submit that crashed before its commit) is replaced.
    pub fn create(&self, request_json: &[u8], script: Option<&str>) -> io::Result<()> {
        match fs::symlink_metadata(&self.dir) {
            Ok(_) => fs::remove_dir_all(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::DirBuilder::new().mode(0o700).create(&self.dir)?;
        write_new(&self.path(REQUEST), request_json)?;
        write_new(&self.path(STDOUT), b"")?;
        write_new(&self.path(STDERR), b"")?;
        if let Some(script) = script {
            write_new(&self.path(SCRIPT), script.as_bytes())?;
        }
        Ok(())
    }

    pub fn remove(&self) -> io::Result<()> {
        self.logs.forget_dir(&self.dir);
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Writes `result.json` atomically: temp file, fsync, rename, fsync dir.
    pub fn write_result(&self, body: &[u8]) -> io::Result<()> {
        let tmp = self.path(RUNTIME_RESULT_TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(RESULT))?;
        File::open(&self.dir)?.sync_all()
    }

    /// The head of a log: at most `max` bytes as lossy UTF-8, and whether the
    /// log is longer.
    pub fn read_log(&self, name: &str, max: u64) -> io::Result<(String, bool)> {
        let (head, truncated) = self.logs.read(&self.path(name), max)?;
        Ok((head.to_string(), truncated))
    }

    /// The task's terminal status body, if one was recorded: `result.json`,
    /// or else a complete `result.json.tmp`.
    ///
    /// The shim creates `result.json.tmp` empty when it claims the task
    /// (durable with the claim), and at the end writes the body into it,
    /// fdatasyncs it and renames it to `result.json` without a directory
    /// fsync. So after a power loss a whole, durable body may be left under
    /// the temp name; and a `kill -9` of the shim between its write and its
    /// fdatasync leaves a whole body that is not durable yet. A temp body
    /// that parses is whole (a cut-short JSON object never parses, an
    /// untouched one is empty, or zeros where its shim reserved room): it is fdatasynced, renamed to `result.json`
    /// and the directory fsynced here, before anyone relies on it. Anything
    /// else under the temp name is no result.
    pub fn read_result(&self) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(RESULT);
        match open_regular(&path) {
            Ok(f) => return read_bounded(f, &path, MAX_RESULT_BYTES).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = self.path(RESULT_TMP);
        let f = match open_regular(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bytes = read_bounded(f.try_clone()?, &tmp, MAX_RESULT_BYTES)?;
        if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Ok(None);
        }
        f.sync_data()?;
        match fs::rename(&tmp, self.path(RESULT)) {
            Ok(()) => File::open(&self.dir)?.sync_all()?,
            // The shim (or another reader) renamed it meanwhile: the same
            // inode, made durable just above.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Some(bytes))
    }

    /// Whether `result.json` itself is in place: what a live shim's final
    /// rename makes true. Unlike [`Self::has_result`], a complete temp file
    /// does not count (its shim may still be making it durable).
    /// Only a regular file counts: a task that puts something else under
    /// the name does not end its task early (the shim's rename replaces it).
    pub fn result_in_place(&self) -> bool {
        fs::symlink_metadata(self.path(RESULT)).is_ok_and(|m| m.is_file())
    }

    /// Whether a terminal status body was recorded ([`Self::read_result`]).
    pub fn has_result(&self) -> bool {
        matches!(self.read_result(), Ok(Some(_)))
    }

    /// The shim's claim, or `None` when no shim claimed the task. A claim
    /// whose target is not a record (planted, or damaged) still means the
    /// task was claimed; its shim is unknown, so it reads as pid 0, which
    /// no live process has.
    pub fn read_claim(&self) -> io::Result<Option<ClaimRecord>> {
        match fs::read_link(self.path(CLAIM)) {
            Ok(target) => Ok(Some(
                ClaimRecord::parse(target.as_os_str().as_encoded_bytes())
                    .unwrap_or(ClaimRecord::UNKNOWN),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // Not a symlink: not a claim any shim makes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some(ClaimRecord::UNKNOWN)),
            Err(e) => Err(e),
        }
    }

    /// The task's process as its shim recorded it once exec'd, if it was.
    /// Anything but a record in `started`'s place reads as not started.
    pub fn read_started(&self) -> Option<StartedRecord> {
        let target = fs::read_link(self.path(STARTED)).ok()?;
        StartedRecord::parse(target.as_os_str().as_encoded_bytes())
    }

    /// Asks the shim to kill the task: one byte on its control FIFO.
    /// `Ok(false)` when no shim is listening.
    pub fn send_kill(&self) -> io::Result<bool> {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(self.path(CONTROL));
        match f {
            Ok(mut f) => match f.write(&[KILL_BYTE]) {
                Ok(_) => Ok(true),
                // A full FIFO already holds kill requests.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO) || e.kind() == io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Opens a file a task could have replaced: never through a symlink, never
/// blocking (a FIFO in its place), and only a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Reads a whole file opened with [`open_regular`], refusing one over
/// `max` bytes.
fn read_bounded(f: File, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// The largest `result.json` read: two log heads at their limit, plus the
/// rest of the body.
const MAX_RESULT_BYTES: u64 =
    2 * execgo_runtime_protocol::taskdir::MAX_OUTPUT_HEAD_BYTES + (1 << 20);

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_read_and_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let td = TaskDir::new(tmp.path(), "t1");
        td.create(b"{}", Some("echo hi")).unwrap();
        assert_eq!(fs::read_to_string(td.path(SCRIPT)).unwrap(), "echo hi");
        fs::write(td.path(STDOUT), "hello world").unwrap();
        assert_eq!(td.read_log(STDOUT, 5).unwrap(), ("hello".into(), true));
        assert_eq!(
            td.read_log(STDOUT, 11).unwrap(),
            ("hello world".into(), false)
        );
        td.create(b"{}", None).unwrap();
        assert!(!td.path(SCRIPT).exists());
        assert_eq!(td.read_log(STDOUT, 5).unwrap(), (String::new(), false));
        td.write_result(b"{\"a\":1}").unwrap();
        assert_eq!(fs::read(td.path(RESULT)).unwrap(), b"{\"a\":1}");
        assert!(!td.send_kill().unwrap(), "no fifo means no shim");
        assert_eq!(td.read_claim().unwrap(), None);
        let record = ClaimRecord {
            shim_pid: 5,
            shim_start_ticks: 6,
        };
        std::os::unix::fs::symlink(record.encode(), td.path(CLAIM)).unwrap();
        assert_eq!(td.read_claim().unwrap(), Some(record));
        // Anything else in the way: claimed by nobody alive.
        let nobody = ClaimRecord::UNKNOWN;
        fs::remove_file(td.path(CLAIM)).unwrap();
        std::os::unix::fs::symlink(r#"{"shim_pid":1}"#, td.path(CLAIM)).unwrap();
        assert_eq!(td.read_claim().unwrap(), Some(nobody));
        fs::remove_file(td.path(CLAIM)).unwrap();
        fs::write(td.path(CLAIM), b"{}").unwrap();
        assert_eq!(td.read_claim().unwrap(), Some(nobody));
        assert_eq!(td.read_started(), None);
        let started = StartedRecord {
            pid: 7,
            started_at: "2026-01-01T00:00:00.000Z".into(),
        };
        std::os::unix::fs::symlink(started.encode(), td.path(STARTED)).unwrap();
        assert_eq!(td.read_started(), Some(started));
        td.remove().unwrap();
        assert!(!td.dir.exists());
    }

    #[test]
    fn a_result_is_whole_or_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let td = TaskDir::new(tmp.path(), "t1");
        td.create(b"{}", None).unwrap();
        assert_eq!(td.read_result().unwrap(), None);
        // The shim's temp file as claimed (empty), and cut short.
        for partial in [&b""[..], br#"{"status":"succ"#, br#"{"status":"success""#] {
            fs::write(td.path(RESULT_TMP), partial).unwrap();
            assert_eq!(td.read_result().unwrap(), None, "{partial:?}");
            assert!(!td.has_result());
        }
        // Whole, but never renamed (a power loss undid the rename): taken,
        // and put under its name.
        let body = br#"{"status":"success"}"#;
        fs::write(td.path(RESULT_TMP), body).unwrap();
        assert!(td.has_result());
        assert!(!td.path(RESULT_TMP).exists());
        assert_eq!(fs::read(td.path(RESULT)).unwrap(), body);
        assert_eq!(td.read_result().unwrap().unwrap(), body);
        // result.json wins over a temp file.
        fs::write(td.path(RESULT_TMP), br#"{"status":"failed"}"#).unwrap();
        assert_eq!(td.read_result().unwrap().unwrap(), body);
    }
}
