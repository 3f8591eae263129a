//! The `opensandbox_tasks` table: which tasks of the store were created
//! through the task-executor API, the process each was given (echoed in
//! every answer), and where its deletion stands. The task itself is an
//! ordinary row of `tasks`; this row goes with it (`ON DELETE CASCADE`)
//! when retention GC deletes the task.
//!
//! A deletion is two facts: `deletion_requested_at` (the task is being
//! stopped; answered as `deletionTimestamp`) and `removed_at` (it is gone
//! from this API; the task and its events stay in the store, an audit
//! trail, until retention GC). Both are fsynced: nothing else on disk
//! could restore them.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::store::StoreError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS opensandbox_tasks (
    task_id TEXT PRIMARY KEY NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
    process_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deletion_requested_at TEXT,
    removed_at TEXT
);
CREATE INDEX IF NOT EXISTS opensandbox_tasks_live ON opensandbox_tasks(removed_at);
";

fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Sqlite(what, e)
}

/// One row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub task_id: String,
    pub process_json: String,
    pub deletion_requested_at: Option<String>,
    pub removed_at: Option<String>,
}

pub fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)
        .map_err(sql("creating the opensandbox_tasks table"))
}

pub fn insert(
    tx: &Transaction<'_>,
    task_id: &str,
    process_json: &str,
    ts: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO opensandbox_tasks (task_id, process_json, created_at) VALUES (?1, ?2, ?3)",
        params![task_id, process_json, ts],
    )
    .map_err(sql("recording an opensandbox task"))?;
    Ok(())
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        task_id: r.get(0)?,
        process_json: r.get(1)?,
        deletion_requested_at: r.get(2)?,
        removed_at: r.get(3)?,
    })
}

const COLUMNS: &str = "task_id, process_json, deletion_requested_at, removed_at";

pub fn get(conn: &Connection, task_id: &str) -> Result<Option<Entry>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM opensandbox_tasks WHERE task_id = ?1"),
        params![task_id],
        entry,
    )
    .optional()
    .map_err(sql("reading an opensandbox task"))
}

/// Tasks not removed, oldest first.
pub fn live(conn: &Connection) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM opensandbox_tasks WHERE removed_at IS NULL
             ORDER BY created_at, task_id"
        ))
        .map_err(sql("preparing the opensandbox task list"))?;
    let rows = stmt
        .query_map([], entry)
        .map_err(sql("listing opensandbox tasks"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql("listing opensandbox tasks"))
}

/// Records the deletion request, once; whether this call recorded it.
pub fn request_deletion(tx: &Transaction<'_>, task_id: &str, ts: &str) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE opensandbox_tasks SET deletion_requested_at = ?2
             WHERE task_id = ?1 AND deletion_requested_at IS NULL AND removed_at IS NULL",
            params![task_id, ts],
        )
        .map_err(sql("recording a deletion request"))?;
    Ok(n == 1)
}

pub fn mark_removed(tx: &Transaction<'_>, task_id: &str, ts: &str) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE opensandbox_tasks SET removed_at = ?2 WHERE task_id = ?1 AND removed_at IS NULL",
            params![task_id, ts],
        )
        .map_err(sql("recording a removal"))?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_is_requested_once_then_removed_once_and_cascades() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        c.execute_batch("CREATE TABLE tasks (task_id TEXT PRIMARY KEY NOT NULL);")
            .unwrap();
        create_schema(&c).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute("INSERT INTO tasks VALUES ('t')", []).unwrap();
        insert(&tx, "t", "{}", "2026-01-01T00:00:00.000Z").unwrap();
        assert!(request_deletion(&tx, "t", "a").unwrap());
        assert!(!request_deletion(&tx, "t", "b").unwrap());
        tx.commit().unwrap();
        assert_eq!(live(&c).unwrap().len(), 1);
        let e = get(&c, "t").unwrap().unwrap();
        assert_eq!(e.deletion_requested_at.as_deref(), Some("a"));
        let tx = c.transaction().unwrap();
        assert!(mark_removed(&tx, "t", "c").unwrap());
        assert!(!mark_removed(&tx, "t", "d").unwrap());
        tx.commit().unwrap();
        assert!(live(&c).unwrap().is_empty());
        c.execute("DELETE FROM tasks WHERE task_id = 't'", [])
            .unwrap();
        assert!(get(&c, "t").unwrap().is_none(), "removed with its task");
    }
}
