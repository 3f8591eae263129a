//! Listing stored tasks: filters, newest first, one page at a time with
//! keyset pagination on `(created_at, task_id)`, so a page boundary stays
//! put while new tasks arrive (they sort before every cursor) and a page
//! costs the same at any depth. Each filter has an index (see `SCHEMA`).

use execgo_runtime_protocol::TaskStatus;
use rusqlite::types::Value;
use rusqlite::Connection;

use super::{read_row, sql, RawRow, Result, TaskRow, COLUMNS};

/// Where a page starts: after this task in the listing's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: String,
    pub task_id: String,
}

impl Cursor {
    /// The opaque form clients pass back: hex of `created_at`, a space,
    /// `task_id`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.created_at, self.task_id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A cursor this runtime gave, or `None`.
    pub fn decode(s: &str) -> Option<Cursor> {
        if s.len() % 2 != 0 || s.len() > 512 {
            return None;
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (created_at, task_id) = text.split_once(' ')?;
        chrono::DateTime::parse_from_rfc3339(created_at).ok()?;
        if !execgo_runtime_protocol::valid_task_id(task_id) {
            return None;
        }
        Some(Cursor {
            created_at: created_at.to_string(),
            task_id: task_id.to_string(),
        })
    }
}

/// What to list. Every filter given must hold (labels: each pair).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Any of these statuses; empty means any status.
    pub statuses: Vec<TaskStatus>,
    pub tenant: Option<String>,
    pub owner: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Created strictly after / before, as stored timestamps (RFC 3339,
    /// UTC, milliseconds), compared as text.
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// One page: the tasks, and where the next page starts if there is one.
#[derive(Debug)]
pub struct Page {
    pub tasks: Vec<TaskRow>,
    pub next: Option<Cursor>,
}

pub fn list(conn: &Connection, f: &TaskFilter) -> Result<Page> {
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if !f.statuses.is_empty() {
        let marks = vec!["?"; f.statuses.len()].join(", ");
        clauses.push(format!("status IN ({marks})"));
        args.extend(f.statuses.iter().map(|s| Value::Text(s.as_str().into())));
    }
    for (column, value) in [("tenant", &f.tenant), ("owner", &f.owner)] {
        if let Some(v) = value {
            clauses.push(format!("{column} = ?"));
            args.push(Value::Text(v.clone()));
        }
    }
    if let Some(t) = &f.created_after {
        clauses.push("created_at > ?".into());
        args.push(Value::Text(t.clone()));
    }
    if let Some(t) = &f.created_before {
        clauses.push("created_at < ?".into());
        args.push(Value::Text(t.clone()));
    }
    for (k, v) in &f.labels {
        clauses.push(
            "EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = tasks.task_id \
             AND l.key = ? AND l.value = ?)"
                .into(),
        );
        args.push(Value::Text(k.clone()));
        args.push(Value::Text(v.clone()));
    }
    if let Some(c) = &f.after {
        clauses.push("(created_at, task_id) < (?, ?)".into());
        args.push(Value::Text(c.created_at.clone()));
        args.push(Value::Text(c.task_id.clone()));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    // One more than asked tells whether a next page exists.
    args.push(Value::Integer(i64::from(f.limit) + 1));
    let query = format!(
        "SELECT {COLUMNS} FROM tasks {filter} ORDER BY created_at DESC, task_id DESC LIMIT ?"
    );
    // The shapes vary with the filters given: prepared per call, not cached.
    let mut stmt = conn.prepare(&query).map_err(sql("preparing a listing"))?;
    let raws = stmt
        .query_map(rusqlite::params_from_iter(args), read_row)
        .map_err(sql("listing tasks"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("listing tasks"))?;
    let mut tasks = raws
        .into_iter()
        .map(RawRow::decode)
        .collect::<Result<Vec<_>>>()?;
    let next = if tasks.len() > f.limit as usize {
        tasks.truncate(f.limit as usize);
        tasks.last().map(|t| Cursor {
            created_at: t.created_at.clone(),
            task_id: t.task_id.clone(),
        })
    } else {
        None
    };
    Ok(Page { tasks, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{conn, insert_task};

    fn ids(p: &Page) -> Vec<&str> {
        p.tasks.iter().map(|t| t.task_id.as_str()).collect()
    }

    fn filter(limit: u32) -> TaskFilter {
        TaskFilter {
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn newest_first_in_pages_that_do_not_move_under_new_tasks() {
        let c = conn();
        for i in 0..5 {
            insert_task(
                &c,
                &format!("t{i}"),
                &format!("2026-01-01T00:00:0{i}.000Z"),
                &[],
            );
        }
        let first = list(&c, &filter(2)).unwrap();
        assert_eq!(ids(&first), ["t4", "t3"]);
        // A task arriving between pages sorts before every cursor.
        insert_task(&c, "t9", "2026-01-01T00:00:09.000Z", &[]);
        let mut f = filter(2);
        f.after = first.next.clone();
        let second = list(&c, &f).unwrap();
        assert_eq!(ids(&second), ["t2", "t1"]);
        f.after = second.next.clone();
        let third = list(&c, &f).unwrap();
        assert_eq!(ids(&third), ["t0"]);
        assert!(third.next.is_none());
    }

    #[test]
    fn equal_timestamps_are_ordered_by_id_and_none_is_lost() {
        let c = conn();
        for id in ["a", "b", "c", "d"] {
            insert_task(&c, id, "2026-01-01T00:00:00.000Z", &[]);
        }
        let mut f = filter(1);
        let mut seen = Vec::new();
        loop {
            let p = list(&c, &f).unwrap();
            seen.extend(p.tasks.iter().map(|t| t.task_id.clone()));
            match p.next {
                Some(n) => f.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["d", "c", "b", "a"]);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: "2026-01-01T00:00:00.000Z".into(),
            task_id: "a-1".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "0", "zz", "41", "hello world", &"00".repeat(300)] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
        let no_time = Cursor {
            created_at: "yesterday".into(),
            task_id: "a".into(),
        };
        assert_eq!(Cursor::decode(&no_time.encode()), None);
    }

    #[test]
    fn filters_combine() {
        let c = conn();
        insert_task(&c, "x1", "2026-01-01T00:00:01.000Z", &[("team", "a")]);
        insert_task(&c, "x2", "2026-01-01T00:00:02.000Z", &[("team", "b")]);
        insert_task(
            &c,
            "x3",
            "2026-01-01T00:00:03.000Z",
            &[("team", "a"), ("env", "prod")],
        );
        c.execute(
            "UPDATE tasks SET status = 'running', tenant = 'acme' WHERE task_id = 'x3'",
            [],
        )
        .unwrap();
        let mut f = filter(10);
        f.labels = vec![("team".into(), "a".into())];
        assert_eq!(ids(&list(&c, &f).unwrap()), ["x3", "x1"]);
        f.labels.push(("env".into(), "prod".into()));
        assert_eq!(ids(&list(&c, &f).unwrap()), ["x3"]);
        let mut f = filter(10);
        f.statuses = vec![TaskStatus::Accepted];
        assert_eq!(ids(&list(&c, &f).unwrap()), ["x2", "x1"]);
        f.statuses.push(TaskStatus::Running);
        f.tenant = Some("acme".into());
        assert_eq!(ids(&list(&c, &f).unwrap()), ["x3"]);
        let mut f = filter(10);
        f.created_after = Some("2026-01-01T00:00:01.000Z".into());
        f.created_before = Some("2026-01-01T00:00:03.000Z".into());
        assert_eq!(ids(&list(&c, &f).unwrap()), ["x2"]);
        f.owner = Some("nobody".into());
        assert!(list(&c, &f).unwrap().tasks.is_empty());
    }

    #[test]
    fn the_ordered_scan_uses_an_index() {
        let c = conn();
        let plan: Vec<String> = c
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT {COLUMNS} FROM tasks \
                 WHERE (created_at, task_id) < ('x', 'y') \
                 ORDER BY created_at DESC, task_id DESC LIMIT 10"
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let text = plan.join("\n");
        assert!(text.contains("tasks_by_created"), "{text}");
        assert!(!text.contains("TEMP B-TREE"), "{text}");
    }
}
