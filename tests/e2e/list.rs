//! `GET /api/v1/tasks` and `execgo-runtime list` against the real
//! binaries: filters, newest first, summaries without logs, pages that
//! neither repeat nor skip a task while new ones arrive, and bad queries
//! refused with nothing changed.

use std::collections::HashSet;
use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

fn labelled(program: &str, args: &[&str], labels: Value, tenant: &str, owner: &str) -> Value {
    let mut body = command(program, args);
    body["control_context"] = json!({"labels": labels, "tenant": tenant, "owner": owner});
    body
}

fn list(s: &Server, query: &str) -> Value {
    let r = s.get(&format!("/api/v1/tasks{query}"));
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.json()
}

fn ids(v: &Value) -> Vec<String> {
    v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_id"].as_str().expect("task_id").to_string())
        .collect()
}

#[test]
fn filters_select_and_summaries_carry_no_logs() {
    let s = Server::start();
    let a = s.submit(&labelled(
        "/bin/echo",
        &["a"],
        json!({"team": "red"}),
        "acme",
        "ann",
    ));
    let b = s.submit(&labelled(
        "/bin/false",
        &[],
        json!({"team": "blue"}),
        "acme",
        "bob",
    ));
    let c = s.submit(&labelled(
        "/bin/sleep",
        &["30"],
        json!({"team": "red", "tier": "gold"}),
        "other",
        "ann",
    ));
    s.wait_terminal(&a, T);
    s.wait_terminal(&b, T);
    s.wait_status(&c, "running", T);

    let all = list(&s, "");
    assert_eq!(
        ids(&all),
        [c.as_str(), b.as_str(), a.as_str()],
        "newest first"
    );
    assert!(all.get("next_cursor").is_none(), "one page: {all}");
    let first = &all["tasks"][2];
    assert_eq!(first["status"], "success");
    assert_eq!(first["handle_id"], a.as_str());
    assert!(first["execution_plan"].is_object() && first["artifacts"].is_object());
    for key in ["stdout", "stderr", "stdout_truncated", "stderr_truncated"] {
        assert!(first.get(key).is_none(), "a summary has no {key}: {first}");
    }

    assert_eq!(ids(&list(&s, "?status=running")), [c.as_str()]);
    assert_eq!(
        ids(&list(&s, "?status=success,failed")),
        [b.as_str(), a.as_str()]
    );
    assert_eq!(
        ids(&list(&s, "?status=success&status=running")),
        [c.as_str(), a.as_str()]
    );
    assert_eq!(ids(&list(&s, "?tenant=acme")), [b.as_str(), a.as_str()]);
    assert_eq!(ids(&list(&s, "?owner=ann")), [c.as_str(), a.as_str()]);
    assert_eq!(ids(&list(&s, "?label=team:red")), [c.as_str(), a.as_str()]);
    assert_eq!(
        ids(&list(&s, "?label=team:red&label=tier:gold")),
        [c.as_str()]
    );
    assert_eq!(
        ids(&list(&s, "?label=team:red&tenant=acme&owner=ann")),
        [a.as_str()]
    );
    assert!(ids(&list(&s, "?label=team:green")).is_empty());

    let created_b = s.status(&b)["created_at"].as_str().unwrap().to_string();
    assert_eq!(
        ids(&list(&s, &format!("?created_after={created_b}"))),
        [c.as_str()]
    );
    assert_eq!(
        ids(&list(&s, &format!("?created_before={created_b}"))),
        [a.as_str()]
    );
    s.kill(&c, Some("ann"));
}

#[test]
fn pages_neither_repeat_nor_skip_while_tasks_arrive() {
    let s = Server::builder()
        .args(["--max-queued-tasks", "1000"])
        .start();
    let mut before = HashSet::new();
    for _ in 0..25 {
        before.insert(s.submit(&command("/bin/true", &[])));
    }
    let mut seen = Vec::new();
    let mut query = "?limit=7".to_string();
    let mut pages = 0;
    loop {
        let page = list(&s, &query);
        assert!(ids(&page).len() <= 7);
        seen.extend(ids(&page));
        pages += 1;
        // New tasks between pages sort before the cursor: never listed.
        s.submit(&command("/bin/true", &[]));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=7&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 4, "25 tasks in pages of 7");
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a task listed twice: {seen:?}");
    assert_eq!(
        unique, before,
        "every task there at the start, exactly once"
    );
}

#[test]
fn bad_queries_are_refused_and_change_nothing() {
    let s = Server::start();
    let id = s.submit(&command("/bin/true", &[]));
    s.wait_terminal(&id, T);
    let before = list(&s, "");
    for q in [
        "?status=done",
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?tenant=a&tenant=b",
        "?label=nocolon",
        "?created_after=yesterday",
        "?cursor=not-a-cursor",
        "?color=red",
    ] {
        let r = s.get(&format!("/api/v1/tasks{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_eq!(r.code(), "invalid_input", "{q}");
    }
    let r = request("PUT", &s.url("/api/v1/tasks"), Some(b"{}"), &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(list(&s, ""), before);
}

#[test]
fn the_cli_lists_with_filters() {
    let s = Server::start();
    let a = s.submit(&labelled("/bin/true", &[], json!({"k": "v"}), "t1", "o"));
    let b = s.submit(&command("/bin/false", &[]));
    s.wait_terminal(&a, T);
    s.wait_terminal(&b, T);
    let out = std::process::Command::new(runtime_bin())
        .args([
            "list", "--server", &s.base, "--status", "success", "--tenant", "t1",
        ])
        .args(["--label", "k:v", "--limit", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v), [a]);
    let out = std::process::Command::new(runtime_bin())
        .args(["list", "--server", &s.base, "--status", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "invalid_input");
}
