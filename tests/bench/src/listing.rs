//! Listing over a big store: 100k tasks are written straight into the
//! runtime's database (a second SQLite connection, while the runtime
//! runs, as a long-lived node would have accumulated them), then pages of
//! `GET /api/v1/tasks` are timed with each filter, against two baselines
//! of the same run: the HTTP floor (`GET /healthz` on the same kept-alive
//! connection) and the page's query run directly on the database.

use std::time::{Duration, Instant};

use crate::client::Client;
use crate::env::{Env, Row};
use crate::stats::{ratio, Stats};

const STATUSES: [&str; 5] = ["success", "failed", "cancelled", "success", "success"];

/// Writes `n` terminal tasks, created 1 ms apart, cycling through tenants
/// and statuses; every 100th has the label `pick:yes`.
fn populate(db: &std::path::Path, n: usize) {
    let mut conn = rusqlite::Connection::open(db).expect("open the runtime's database");
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let template: (String, String) = conn
        .query_row(
            "SELECT request_json, plan_json FROM tasks LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a template task");
    let now_ms = chrono::Utc::now().timestamp_millis();
    let start = chrono::Utc::now() - chrono::Duration::milliseconds(n as i64 + 10_000);
    let tx = conn.transaction().unwrap();
    {
        let mut task = tx
            .prepare(
                "INSERT INTO tasks (task_id, status, created_at, updated_at, finished_at,
                 finished_unix_ms, request_json, plan_json, tenant, owner)
                 VALUES (?1, ?2, ?3, ?3, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .unwrap();
        let mut label = tx
            .prepare("INSERT INTO task_labels (task_id, key, value) VALUES (?1, 'pick', 'yes')")
            .unwrap();
        for i in 0..n {
            let id = format!("bulk-{i:07}");
            let created = (start + chrono::Duration::milliseconds(i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            task.execute(rusqlite::params![
                id,
                STATUSES[i % STATUSES.len()],
                created,
                now_ms,
                template.0,
                template.1,
                format!("tenant-{}", i % 10),
                format!("owner-{}", i % 7),
            ])
            .unwrap();
            if i % 100 == 0 {
                label.execute([&id]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

/// The page's rows read directly (the database's share of a list).
fn direct(db: &std::path::Path, filter: &str, limit: usize) -> Duration {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let sql = format!(
        "SELECT task_id, status, created_at, request_json, plan_json FROM tasks {filter} \
         ORDER BY created_at DESC, task_id DESC LIMIT {limit}"
    );
    let t = Instant::now();
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty());
    t.elapsed()
}

pub fn run(env: &Env, n: usize, rounds: usize) {
    println!();
    println!("list latency: GET /api/v1/tasks over {n} stored tasks ({rounds} rounds each)");
    let s = env.server("list", &[]);
    let c = Client::new(&s.base);
    // One real task gives the template rows' JSON.
    let id = c.submit(&execgo_runtime_tests::json!({
        "execution": {"kind": "command", "program": "/bin/true"}
    }));
    c.wait_terminal(&id, env.poll);
    let db = s.data_dir.join("runtime.db");
    let t = Instant::now();
    populate(&db, n);
    println!("  wrote {n} tasks in {:.1} s", t.elapsed().as_secs_f64());

    let floor: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            c.get_text("/healthz");
            t.elapsed()
        })
        .collect();
    let floor = Stats::of_durations(&floor);
    println!("{}", floor.line("baseline GET /healthz"));
    let cases = [
        ("newest 100", "", "", 100),
        ("newest 1000", "?limit=1000", "", 1000),
        (
            "status=failed",
            "?status=failed",
            "WHERE status = 'failed'",
            100,
        ),
        (
            "tenant=tenant-3",
            "?tenant=tenant-3",
            "WHERE tenant = 'tenant-3'",
            100,
        ),
        (
            "label=pick:yes (1%)",
            "?label=pick:yes",
            "WHERE EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = tasks.task_id \
             AND l.key = 'pick' AND l.value = 'yes')",
            100,
        ),
    ];
    for (label, query, filter, limit) in cases {
        let mut times = vec![];
        for _ in 0..rounds {
            let t = Instant::now();
            let text = c.get_text(&format!("/api/v1/tasks{query}"));
            times.push(t.elapsed());
            assert!(
                text.starts_with("{\"tasks\":[{"),
                "{label}: {}",
                &text[..text.len().min(200)]
            );
        }
        let db_times: Vec<Duration> = (0..rounds).map(|_| direct(&db, filter, limit)).collect();
        let st = Stats::of_durations(&times);
        let dbs = Stats::of_durations(&db_times);
        println!("{}", st.line(&format!("list {label}")));
        println!("{}", dbs.line("  same rows read directly"));
        env.row(Row {
            figure: format!("list {label} over {}k tasks, p50", n / 1000),
            measured: format!("{:.2} ms", st.p50),
            baseline: format!("{:.2} ms direct SQL, {:.3} ms /healthz", dbs.p50, floor.p50),
            ratio: format!("{:.1}x SQL", ratio(st.p50, dbs.p50)),
            target: "milliseconds".into(),
            met: Some(st.p50 < 100.0),
        });
    }
    // A deep page: the cursor after 50k tasks costs what the first does.
    let mut cursor = None;
    let mut deep = vec![];
    for page in 0..500 {
        let q = match &cursor {
            None => "?limit=100".to_string(),
            Some(c) => format!("?limit=100&cursor={c}"),
        };
        let t = Instant::now();
        let text = c.get_text(&format!("/api/v1/tasks{q}"));
        if page >= 490 {
            deep.push(t.elapsed());
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        cursor = v["next_cursor"].as_str().map(String::from);
    }
    println!(
        "{}",
        Stats::of_durations(&deep).line("list pages 491-500 by cursor")
    );
}
