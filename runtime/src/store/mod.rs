//! SQLite persistence: the `tasks` and `events` tables, in WAL mode with
//! `synchronous=FULL`, so a committed submit survives `kill -9` and power
//! loss. One connection, owned by one thread that runs the callers'
//! closures in arrival order and group-commits durable writes (see
//! `worker`, [`Store::call`] and [`Store::durable`]).

use std::path::Path;

use execgo_runtime_protocol::{ResourceUsage, TaskError, TaskStatus};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

pub mod list;
mod readers;
mod worker;

pub use list::{Cursor, TaskFilter};
pub use readers::Readers;
pub use worker::Committed;

use crate::ledger::Candidate;
use crate::ledger::Reservation;
use crate::model::{ExecutionPlan, SubmitTaskRequest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite failed while {0}")]
    Sqlite(&'static str, #[source] rusqlite::Error),
    #[error("stored json of task {0} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),
    #[error("the database thread stopped")]
    WorkerGone,
    #[error("a database call panicked")]
    Panicked,
    #[error("committing a group of transactions failed: {0}")]
    GroupCommit(String, #[source] rusqlite::Error),
}

impl StoreError {
    /// Whether the failure is the environment's (disk full, read-only,
    /// I/O error) rather than a bug: it is then reported as 503.
    /// Whether the database found no room for a write (`SQLITE_FULL`).
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Sqlite(_, rusqlite::Error::SqliteFailure(e, _))
            | StoreError::GroupCommit(_, rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }

    pub fn is_storage_unavailable(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sqlite(_, rusqlite::Error::SqliteFailure(e, _))
            | StoreError::GroupCommit(_, rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DiskFull
                    | C::ReadOnly
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::DatabaseBusy
                    | C::DatabaseLocked
            ),
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Sqlite(what, e)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    finished_unix_ms INTEGER,
    duration_ms INTEGER,
    shim_pid INTEGER,
    shim_start_ticks INTEGER,
    pid INTEGER,
    pgid INTEGER,
    exit_code INTEGER,
    exit_signal INTEGER,
    error_json TEXT,
    usage_json TEXT,
    request_json TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    reservation_json TEXT,
    reserved_at TEXT,
    released INTEGER NOT NULL DEFAULT 0,
    tenant TEXT,
    owner TEXT,
    kill_requested INTEGER NOT NULL DEFAULT 0,
    launch_attempted INTEGER NOT NULL DEFAULT 0,
    memory_request INTEGER,
    pids_request INTEGER,
    launch_flags INTEGER NOT NULL DEFAULT 0,
    workdir TEXT,
    task_uid INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_status_created ON tasks(status, created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks(created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks(tenant, created_at, task_id) WHERE tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks(owner, created_at, task_id) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_by_finish_id ON tasks(finished_unix_ms, task_id) WHERE finished_unix_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_labels (
    task_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS task_labels_by_pair ON task_labels(key, value);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    message TEXT,
    data_json TEXT,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
";

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task_id: String,
    pub status: TaskStatus,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub shim_pid: Option<i32>,
    pub shim_start_ticks: Option<u64>,
    pub pid: Option<i32>,
    pub pgid: Option<i32>,
    /// The uid the task runs (ran) as.
    pub task_uid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub error: Option<TaskError>,
    pub usage: Option<ResourceUsage>,
    pub request: SubmitTaskRequest,
    pub plan: ExecutionPlan,
    pub reservation: Option<Reservation>,
    pub reserved_at: Option<String>,
    pub released: bool,
    pub tenant: Option<String>,
    pub owner: Option<String>,
    pub kill_requested: bool,
    pub launch_attempted: bool,
    /// How the task is launched beyond its request (set at submit by the
    /// API that created it; never changes).
    pub launch: LaunchOptions,
}

/// Per-task launch choices that are not part of the public request: the
/// OpenSandbox API (`crate::opensandbox`) sets them, `/api/v1` never does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// The task's base environment is the runtime's whole environment,
    /// not the minimal set (`PATH`, `HOME`, `LANG`, `TMPDIR`, `USER`).
    pub full_env: bool,
    /// Processes the main process leaves behind are not killed when it
    /// exits; its shim keeps them until the task is killed (see
    /// `LaunchSpec::keep_descendants`).
    pub keep_descendants: bool,
    /// Sidecar mode: the task runs in the main container's namespaces
    /// (`serve --enable-sidecar-mode`), with its environment as the base.
    pub sidecar: bool,
    /// An absolute working directory instead of the workspace (an
    /// OpenSandbox `workingDir` under `--opensandbox-workdir-root`; see
    /// `LaunchSpec::workdir`). Stored in its own column.
    pub workdir: Option<String>,
}

impl LaunchOptions {
    const FULL_ENV: i64 = 1;
    const KEEP_DESCENDANTS: i64 = 2;
    const SIDECAR: i64 = 4;

    fn to_bits(&self) -> i64 {
        (self.full_env as i64 * Self::FULL_ENV)
            | (self.keep_descendants as i64 * Self::KEEP_DESCENDANTS)
            | (self.sidecar as i64 * Self::SIDECAR)
    }

    fn from_columns(bits: i64, workdir: Option<String>) -> LaunchOptions {
        LaunchOptions {
            full_env: bits & Self::FULL_ENV != 0,
            keep_descendants: bits & Self::KEEP_DESCENDANTS != 0,
            sidecar: bits & Self::SIDECAR != 0,
            workdir,
        }
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub message: Option<String>,
    pub data: Option<serde_json::Value>,
}

impl NewEvent {
    pub fn new(event_type: &'static str) -> Self {
        NewEvent {
            event_type,
            message: None,
            data: None,
        }
    }

    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = Some(m.into());
        self
    }

    pub fn data(mut self, d: serde_json::Value) -> Self {
        self.data = Some(d);
        self
    }
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub task_id: String,
    pub event_type: String,
    pub timestamp: String,
    pub message: Option<String>,
    pub data: Option<serde_json::Value>,
}

pub struct Store {
    jobs: std::sync::mpsc::Sender<worker::Job>,
    readers: std::sync::Arc<Readers>,
}

const COLUMNS: &str =
    "task_id, status, created_at, updated_at, started_at, finished_at, duration_ms,
    shim_pid, shim_start_ticks, pid, pgid, exit_code, exit_signal, error_json, usage_json,
    request_json, plan_json, reservation_json, reserved_at, released, tenant, owner,
    kill_requested, launch_attempted, launch_flags, workdir, task_uid";

fn json_col<T: serde::de::DeserializeOwned>(id: &str, s: Option<String>) -> Result<Option<T>> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(id.to_string(), e)))
        .transpose()
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        task_id: r.get(0)?,
        status: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        duration_ms: r.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
        shim_pid: r.get(7)?,
        shim_start_ticks: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        pid: r.get(9)?,
        pgid: r.get(10)?,
        exit_code: r.get(11)?,
        exit_signal: r.get(12)?,
        error_json: r.get(13)?,
        usage_json: r.get(14)?,
        request_json: r.get(15)?,
        plan_json: r.get(16)?,
        reservation_json: r.get(17)?,
        reserved_at: r.get(18)?,
        released: r.get::<_, i64>(19)? != 0,
        tenant: r.get(20)?,
        owner: r.get(21)?,
        kill_requested: r.get::<_, i64>(22)? != 0,
        launch_attempted: r.get::<_, i64>(23)? != 0,
        launch: LaunchOptions::from_columns(r.get(24)?, r.get(25)?),
        task_uid: r
            .get::<_, Option<i64>>(26)?
            .and_then(|v| u32::try_from(v).ok()),
    })
}

struct RawRow {
    task_id: String,
    status: String,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    duration_ms: Option<u64>,
    shim_pid: Option<i32>,
    shim_start_ticks: Option<u64>,
    pid: Option<i32>,
    pgid: Option<i32>,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    error_json: Option<String>,
    usage_json: Option<String>,
    request_json: String,
    plan_json: String,
    reservation_json: Option<String>,
    reserved_at: Option<String>,
    released: bool,
    tenant: Option<String>,
    owner: Option<String>,
    kill_requested: bool,
    launch_attempted: bool,
    launch: LaunchOptions,
    task_uid: Option<u32>,
}

impl RawRow {
    fn decode(self) -> Result<TaskRow> {
        let id = self.task_id.clone();
        let corrupt = |e| StoreError::Corrupt(id.clone(), e);
        let status = TaskStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Corrupt(
                id.clone(),
                serde::de::Error::custom(format!("unknown status '{}'", self.status)),
            )
        })?;
        Ok(TaskRow {
            status,
            error: json_col(&id, self.error_json)?,
            usage: json_col(&id, self.usage_json)?,
            request: serde_json::from_str(&self.request_json).map_err(corrupt)?,
            plan: serde_json::from_str(&self.plan_json).map_err(corrupt)?,
            reservation: json_col(&id, self.reservation_json)?,
            task_id: self.task_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            shim_pid: self.shim_pid,
            shim_start_ticks: self.shim_start_ticks,
            pid: self.pid,
            pgid: self.pgid,
            task_uid: self.task_uid,
            exit_code: self.exit_code,
            exit_signal: self.exit_signal,
            reserved_at: self.reserved_at,
            released: self.released,
            tenant: self.tenant,
            owner: self.owner,
            kill_requested: self.kill_requested,
            launch_attempted: self.launch_attempted,
            launch: self.launch,
        })
    }
}

fn has_table(conn: &Connection, name: &str) -> Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sql("reading the schema"))
}

/// What changed after the first release, for databases created before
/// (`CREATE ... IF NOT EXISTS` leaves old tables as they are). `labels_new`:
/// the label table did not exist before this start, so the labels of the
/// tasks already stored are copied in from their requests.
fn migrate(conn: &Connection, labels_new: bool) -> Result<()> {
    // Replaced by tasks_by_status_created, which serves the same lookups.
    conn.execute_batch("DROP INDEX IF EXISTS tasks_by_status")
        .map_err(sql("dropping an old index"))?;
    // Replaced by tasks_by_finish_id, whose order the GC's keyset pages
    // follow (no sort of the whole backlog per page).
    conn.execute_batch("DROP INDEX IF EXISTS tasks_by_finish")
        .map_err(sql("dropping an old index"))?;
    if labels_new {
        conn.execute_batch(
            "INSERT OR IGNORE INTO task_labels (task_id, key, value)
             SELECT t.task_id, l.key, l.value
             FROM tasks t, json_each(t.request_json, '$.control_context.labels') l",
        )
        .map_err(sql("copying the stored tasks' labels"))?;
    }
    let has_launch_flags: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'launch_flags'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql("reading the tasks table's columns"))?
        > 0;
    if !has_launch_flags {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN launch_flags INTEGER NOT NULL DEFAULT 0")
            .map_err(sql("adding the launch_flags column"))?;
    }
    let has_workdir: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'workdir'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql("reading the tasks table's columns"))?
        > 0;
    if !has_workdir {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN workdir TEXT")
            .map_err(sql("adding the workdir column"))?;
    }
    let has_task_uid: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'task_uid'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(sql("reading the tasks table's columns"))?
        > 0;
    if !has_task_uid {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN task_uid INTEGER")
            .map_err(sql("adding the task_uid column"))?;
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain data types cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(sql("opening the database"))?;
        // Every statement the store runs stays prepared (rusqlite keeps 16).
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("setting synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("enabling foreign keys"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("setting the busy timeout"))?;
        let labels_new = !has_table(&conn, "task_labels")?;
        conn.execute_batch(SCHEMA)
            .map_err(sql("creating the schema"))?;
        migrate(&conn, labels_new)?;
        Ok(Store {
            jobs: worker::start(conn)?,
            readers: std::sync::Arc::new(Readers::new(path)),
        })
    }

    /// The read-only connections, for reads that need not queue behind
    /// the writes (they see what is committed when they begin).
    pub fn readers(&self) -> std::sync::Arc<Readers> {
        std::sync::Arc::clone(&self.readers)
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> std::result::Result<T, E> + Send + 'static,
    {
        let readers = self.readers();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)))
    }

    /// Runs `f` on the database thread and awaits its result. `f` manages
    /// its own transaction. A panic in `f` fails this call only.
    pub async fn call<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> std::result::Result<T, E> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = worker::Job::Solo(Box::new(move |conn| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)));
            let _ = tx.send(r);
        }));
        self.jobs
            .send(job)
            .map_err(|_| E::from(StoreError::WorkerGone))?;
        rx.await.map_err(|_| E::from(StoreError::WorkerGone))?
    }

    /// Runs `f` inside a fsynced (`synchronous=FULL`) transaction shared
    /// with the durable writes queued next to it, and answers once that
    /// transaction is committed (see `worker`). `f` must not commit; an
    /// error from it undoes its own writes only.
    pub async fn durable<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<Committed<T>, E> + Send + 'static,
    {
        self.grouped(worker::Commit::Durable, f).await
    }

    /// Like [`Store::durable`], but the shared commit is not fsynced
    /// (`synchronous=NORMAL`): for the facts [`begin_relaxed`] is for.
    pub async fn relaxed<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<Committed<T>, E> + Send + 'static,
    {
        self.grouped(worker::Commit::Relaxed, f).await
    }

    async fn grouped<T, E, F>(&self, commit: worker::Commit, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> std::result::Result<Committed<T>, E> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(worker::grouped_job(commit, f, tx))
            .map_err(|_| E::from(StoreError::WorkerGone))?;
        rx.await.map_err(|_| E::from(StoreError::WorkerGone))?
    }
}

/// Begins an immediate (write-locking) transaction whose commit is fsynced
/// (`synchronous=FULL`): for facts nothing else on disk can restore, such
/// as an accepted submit or a cancellation.
pub fn begin(conn: &mut Connection) -> Result<Transaction<'_>> {
    exec_cached(conn, "PRAGMA synchronous = FULL").map_err(sql("setting synchronous=FULL"))?;
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("beginning a transaction"))
}

/// Begins a transaction committed without its own fsync
/// (`synchronous=NORMAL`; WAL order still makes it durable with the next
/// fsynced commit). Only for facts recovery can rebuild from the task
/// directory if power is lost: a launch record (the shim's claim decides),
/// a start, a finish the shim wrote to `result.json`, an event.
pub fn begin_relaxed(conn: &mut Connection) -> Result<Transaction<'_>> {
    exec_cached(conn, "PRAGMA synchronous = NORMAL").map_err(sql("setting synchronous=NORMAL"))?;
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("beginning a transaction"))
}

/// Runs one statement without results, prepared once per connection:
/// these run several times per task, and `execute_batch` parses each time.
fn exec_cached(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.raw_execute().map(drop)
}

pub fn commit(tx: Transaction<'_>) -> Result<()> {
    tx.commit().map_err(sql("committing"))
}

pub fn get(conn: &Connection, task_id: &str) -> Result<Option<TaskRow>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE task_id = ?1"))
        .map_err(sql("preparing a task lookup"))?;
    let raw = stmt
        .query_row([task_id], read_row)
        .optional()
        .map_err(sql("reading a task"))?;
    raw.map(RawRow::decode).transpose()
}

/// The task's status, `None` when there is no such task.
pub fn status_of(conn: &Connection, task_id: &str) -> Result<Option<TaskStatus>> {
    let mut stmt = conn
        .prepare_cached("SELECT status FROM tasks WHERE task_id = ?1")
        .map_err(sql("preparing a status lookup"))?;
    let status: Option<String> = stmt
        .query_row([task_id], |r| r.get(0))
        .optional()
        .map_err(sql("reading a task's status"))?;
    Ok(status.and_then(|s| TaskStatus::parse(&s)))
}

pub fn exists(conn: &Connection, task_id: &str) -> Result<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM tasks WHERE task_id = ?1")
        .map_err(sql("preparing an existence check"))?;
    stmt.exists([task_id]).map_err(sql("checking a task id"))
}

pub fn count_status(conn: &Connection, status: TaskStatus) -> Result<u64> {
    let mut stmt = conn
        .prepare_cached("SELECT COUNT(*) FROM tasks WHERE status = ?1")
        .map_err(sql("preparing a count"))?;
    stmt.query_row([status.as_str()], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .map_err(sql("counting tasks"))
}

/// Tasks in `status`, oldest first.
pub fn list_status(conn: &Connection, status: TaskStatus) -> Result<Vec<TaskRow>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM tasks WHERE status = ?1 ORDER BY rowid"
        ))
        .map_err(sql("preparing a listing"))?;
    let raws = stmt
        .query_map([status.as_str()], read_row)
        .map_err(sql("listing tasks"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("listing tasks"))?;
    raws.into_iter().map(RawRow::decode).collect()
}

/// Up to `limit` `accepted` tasks not yet handed to the helper, FIFO, with
/// what they would reserve.
pub fn waiting(conn: &Connection, limit: u64) -> Result<Vec<Candidate>> {
    let (rows, failed) = with_waiting(conn, limit, |it| it.collect());
    failed.map_or(Ok(rows), Err)
}

/// Runs `f` on the queue, oldest first, read lazily: rows `f` does not
/// take are never read. A row that fails to read ends the iteration; the
/// error comes back beside what `f` returned.
pub fn with_waiting<T>(
    conn: &Connection,
    limit: u64,
    f: impl FnOnce(&mut dyn Iterator<Item = Candidate>) -> T,
) -> (T, Option<StoreError>) {
    let mut stmt = match conn.prepare_cached(
        "SELECT task_id, tenant, memory_request, pids_request FROM tasks
         WHERE status = 'accepted' AND launch_attempted = 0 AND kill_requested = 0
         ORDER BY rowid LIMIT ?1",
    ) {
        Ok(s) => s,
        Err(e) => {
            let failed = StoreError::Sqlite("preparing the queue scan", e);
            return (f(&mut std::iter::empty()), Some(failed));
        }
    };
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(Candidate {
            task_id: r.get(0)?,
            tenant: r.get(1)?,
            reservation: Reservation::for_limits(
                r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            ),
        })
    });
    let mut rows = match rows {
        Ok(r) => r,
        Err(e) => {
            let failed = StoreError::Sqlite("scanning the queue", e);
            return (f(&mut std::iter::empty()), Some(failed));
        }
    };
    let mut error = None;
    let out = f(&mut std::iter::from_fn(|| match rows.next()? {
        Ok(c) => Some(c),
        Err(e) => {
            error = Some(StoreError::Sqlite("scanning the queue", e));
            None
        }
    }));
    (out, error)
}

/// An unreleased reservation, for the resources view.
#[derive(Debug, Clone)]
pub struct ActiveReservation {
    pub task_id: String,
    pub status: String,
    pub reservation: Option<Reservation>,
    pub reserved_at: Option<String>,
}

pub fn active_reservations(conn: &Connection) -> Result<Vec<ActiveReservation>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT task_id, status, reservation_json, reserved_at FROM tasks
             WHERE reservation_json IS NOT NULL AND released = 0 ORDER BY reserved_at, rowid",
        )
        .map_err(sql("preparing the reservation listing"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(sql("listing reservations"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("listing reservations"))?;
    rows.into_iter()
        .map(|(task_id, status, res, reserved_at)| {
            Ok(ActiveReservation {
                reservation: json_col(&task_id, res)?,
                task_id,
                status,
                reserved_at,
            })
        })
        .collect()
}

/// `accepted` tasks holding no reservation yet.
pub fn count_waiting(conn: &Connection) -> Result<u64> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM tasks WHERE status = 'accepted' AND launch_attempted = 0",
        )
        .map_err(sql("preparing a count"))?;
    stmt.query_row([], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .map_err(sql("counting waiting tasks"))
}

pub fn insert(tx: &Transaction<'_>, row: &TaskRow) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO tasks (task_id, status, created_at, updated_at, request_json, plan_json,
             tenant, owner, memory_request, pids_request, launch_flags, workdir)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .map_err(sql("preparing an insert"))?;
    stmt.execute(params![
        row.task_id,
        row.status.as_str(),
        row.created_at,
        row.updated_at,
        to_json(&row.request),
        to_json(&row.plan),
        row.tenant,
        row.owner,
        row.request.limits.memory_bytes.map(|v| v as i64),
        row.request.limits.pids_max.map(|v| v as i64),
        row.launch.to_bits(),
        row.launch.workdir,
    ])
    .map_err(sql("inserting a task"))?;
    if let Some(cc) = &row.request.control_context {
        let mut stmt = tx
            .prepare_cached("INSERT INTO task_labels (task_id, key, value) VALUES (?1, ?2, ?3)")
            .map_err(sql("preparing a label insert"))?;
        for (k, v) in &cc.labels {
            stmt.execute(params![row.task_id, k, v])
                .map_err(sql("inserting a label"))?;
        }
    }
    Ok(())
}

/// Writes every mutable column of `row` back.
pub fn update(tx: &Transaction<'_>, row: &TaskRow, finished_unix_ms: Option<i64>) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "UPDATE tasks SET status = ?2, updated_at = ?3, started_at = ?4, finished_at = ?5,
             duration_ms = ?6, shim_pid = ?7, shim_start_ticks = ?8, pid = ?9, pgid = ?10,
             exit_code = ?11, exit_signal = ?12, error_json = ?13, usage_json = ?14,
             reservation_json = ?15, reserved_at = ?16, released = ?17, kill_requested = ?18,
             launch_attempted = ?19, finished_unix_ms = ?20, task_uid = ?21 WHERE task_id = ?1",
        )
        .map_err(sql("preparing an update"))?;
    stmt.execute(params![
        row.task_id,
        row.status.as_str(),
        row.updated_at,
        row.started_at,
        row.finished_at,
        row.duration_ms.map(|v| v as i64),
        row.shim_pid,
        row.shim_start_ticks.map(|v| v as i64),
        row.pid,
        row.pgid,
        row.exit_code,
        row.exit_signal,
        row.error.as_ref().map(to_json),
        row.usage.as_ref().map(to_json),
        row.reservation.as_ref().map(to_json),
        row.reserved_at,
        row.released as i64,
        row.kill_requested as i64,
        row.launch_attempted as i64,
        finished_unix_ms,
        row.task_uid.map(i64::from),
    ])
    .map_err(sql("updating a task"))?;
    Ok(())
}

pub fn append_event(tx: &Transaction<'_>, task_id: &str, ts: &str, ev: &NewEvent) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO events (task_id, seq, event_type, timestamp, message, data_json)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE task_id = ?1),
                     ?2, ?3, ?4, ?5)",
        )
        .map_err(sql("preparing an event insert"))?;
    stmt.execute(params![
        task_id,
        ev.event_type,
        ts,
        ev.message,
        ev.data.as_ref().map(to_json)
    ])
    .map_err(sql("appending an event"))?;
    Ok(())
}

pub fn events(conn: &Connection, task_id: &str) -> Result<Vec<EventRow>> {
    events_after(conn, task_id, 0)
}

/// The task's events with `seq` above `after`, in order.
pub fn events_after(conn: &Connection, task_id: &str, after: i64) -> Result<Vec<EventRow>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, task_id, event_type, timestamp, message, data_json FROM events
             WHERE task_id = ?1 AND seq > ?2 ORDER BY seq",
        )
        .map_err(sql("preparing an event listing"))?;
    let rows = stmt
        .query_map(params![task_id, after], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .map_err(sql("listing events"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("listing events"))?;
    rows.into_iter()
        .map(|(seq, task_id, event_type, timestamp, message, data)| {
            Ok(EventRow {
                data: json_col(&task_id, data)?,
                seq,
                task_id,
                event_type,
                timestamp,
                message,
            })
        })
        .collect()
}

/// Terminal tasks finished before `cutoff_unix_ms`, at most `limit`.
/// Terminal tasks finished before `cutoff_unix_ms`, oldest first, as
/// `(task_id, finished_unix_ms)`, starting strictly after the key `after`
/// (keyset paging: a pass that skips some candidates still reaches the
/// ones behind them).
pub fn expired(
    conn: &Connection,
    cutoff_unix_ms: i64,
    after: Option<(i64, &str)>,
    limit: u64,
) -> Result<Vec<(String, i64)>> {
    let (after_ms, after_id) = after.unwrap_or((i64::MIN, ""));
    let mut stmt = conn
        .prepare_cached(
            "SELECT task_id, finished_unix_ms FROM tasks WHERE finished_unix_ms IS NOT NULL
             AND finished_unix_ms < ?1 AND (finished_unix_ms, task_id) > (?2, ?3)
             ORDER BY finished_unix_ms, task_id LIMIT ?4",
        )
        .map_err(sql("preparing the expiry scan"))?;
    let ids = stmt
        .query_map(
            params![cutoff_unix_ms, after_ms, after_id, limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql("scanning expired tasks"))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()
        .map_err(sql("scanning expired tasks"))?;
    Ok(ids)
}

pub fn delete(tx: &Transaction<'_>, task_id: &str) -> Result<()> {
    tx.execute("DELETE FROM events WHERE task_id = ?1", [task_id])
        .map_err(sql("deleting events"))?;
    tx.execute("DELETE FROM task_labels WHERE task_id = ?1", [task_id])
        .map_err(sql("deleting labels"))?;
    tx.execute("DELETE FROM tasks WHERE task_id = ?1", [task_id])
        .map_err(sql("deleting a task"))?;
    Ok(())
}

/// A cheap round trip proving the database answers.
pub fn ping(conn: &Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))
        .map_err(sql("pinging the database"))
}

/// An in-memory database with the schema, and tasks to list in it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    /// Stores an `accepted` task created at `created_at` with `labels`.
    pub fn insert_task(c: &Connection, id: &str, created_at: &str, labels: &[(&str, &str)]) {
        let labels: std::collections::BTreeMap<_, _> = labels.iter().copied().collect();
        let req: SubmitTaskRequest = serde_json::from_value(serde_json::json!({
            "task_id": id,
            "execution": {"kind": "command", "program": "/bin/true"},
            "control_context": {"labels": labels}
        }))
        .unwrap();
        let plan = crate::plan::resolve(
            &req,
            crate::model::CapabilityMode::Adaptive,
            &crate::plan::PROCESS_HOST,
            &[],
        )
        .unwrap();
        let row = crate::task::create(id.into(), req, plan, created_at).row;
        let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Deferred)
            .unwrap();
        insert(&tx, &row).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn expired_pages_by_finish_time_then_id() {
        let c = conn();
        for (id, ms) in [("b", 10), ("a", 10), ("c", 5), ("d", 20), ("e", 99)] {
            insert_task(&c, id, "2026-01-01T00:00:00.000Z", &[]);
            c.execute(
                "UPDATE tasks SET finished_unix_ms = ?2 WHERE task_id = ?1",
                params![id, ms],
            )
            .unwrap();
        }
        insert_task(&c, "running", "2026-01-01T00:00:00.000Z", &[]);
        let ids = |v: Vec<(String, i64)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(
            ids(expired(&c, 50, None, 10).unwrap()),
            ["c", "a", "b", "d"]
        );
        let first = expired(&c, 50, None, 2).unwrap();
        assert_eq!(ids(first.clone()), ["c", "a"]);
        let (id, ms) = first.last().unwrap();
        // The page after a kept candidate goes on behind it.
        assert_eq!(
            ids(expired(&c, 50, Some((*ms, id)), 2).unwrap()),
            ["b", "d"]
        );
        assert!(expired(&c, 50, Some((20, "d")), 2).unwrap().is_empty());
        // One index range, in order: no sort of every expired task.
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT task_id, finished_unix_ms FROM tasks
                 WHERE finished_unix_ms IS NOT NULL AND finished_unix_ms < 50
                 AND (finished_unix_ms, task_id) > (5, 'c')
                 ORDER BY finished_unix_ms, task_id LIMIT 2",
            )
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("tasks_by_finish_id"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    #[test]
    fn an_older_tasks_table_gains_the_launch_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            insert_task(&c, "old", "2026-01-01T00:00:00.000Z", &[]);
            // As a database from before the launch columns and the
            // keyset index of the GC.
            c.execute_batch(
                "DROP INDEX tasks_by_finish_id;
                 CREATE INDEX tasks_by_finish ON tasks(finished_unix_ms)
                   WHERE finished_unix_ms IS NOT NULL;
                 ALTER TABLE tasks DROP COLUMN workdir;
                 ALTER TABLE tasks DROP COLUMN launch_flags;",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let row = store.readers().with(|c| get(c, "old")).unwrap().unwrap();
        assert_eq!(row.launch, LaunchOptions::default());
        let c = Connection::open(&path).unwrap();
        let old_index: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'tasks_by_finish'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_index, 0);
    }

    #[test]
    fn labels_of_stored_tasks_are_copied_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            insert_task(&c, "old", "2026-01-01T00:00:00.000Z", &[("team", "a")]);
            // As a database from before the label table.
            c.execute_batch("DELETE FROM task_labels; DROP TABLE task_labels;")
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let page = store
            .readers()
            .with(|c| {
                list::list(
                    c,
                    &TaskFilter {
                        labels: vec![("team".into(), "a".into())],
                        limit: 10,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert_eq!(page.tasks.len(), 1);
        assert_eq!(page.tasks[0].task_id, "old");
    }
}
