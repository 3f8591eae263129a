//! Read-only connections beside the writer thread. In WAL mode a reader
//! sees the last commit as of its first statement and never waits for the
//! writer, so a status, an event listing or a task list runs on the
//! caller's blocking thread in one hop instead of queueing behind group
//! commits on the database thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use super::{sql, StoreError};

/// Idle connections kept for reuse; more are opened under load and closed
/// when they come back to a full pool.
const KEEP_IDLE: usize = 4;

pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("opening a read-only connection"))?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("setting the busy timeout"))?;
        Ok(conn)
    }

    /// Runs `f` on an idle connection (or a new one). Blocking: call it
    /// off the async executor.
    pub fn with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => self.open()?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP_IDLE {
            idle.push(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_writer_committed_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (7);")
            .unwrap();
        let r = Readers::new(&path);
        let x: i64 = r
            .with(|c| {
                c.query_row("SELECT x FROM t", [], |row| row.get(0))
                    .map_err(sql("reading"))
            })
            .unwrap();
        assert_eq!(x, 7);
        let write = r.with(|c| {
            c.execute("INSERT INTO t VALUES (8)", [])
                .map_err(sql("writing"))
        });
        assert!(write.is_err());
        assert_eq!(r.idle.lock().unwrap().len(), 1);
    }
}
