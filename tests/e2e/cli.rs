//! The CLI against a live server: output and exit codes as operators'
//! scripts use them.

use std::process::{Command, Output};

use execgo_runtime_tests::*;

fn cli(s: &Server, args: &[&str]) -> Output {
    let mut c = Command::new(runtime_bin());
    c.arg(args[0]).arg("--server").arg(format!("{}/", s.base));
    c.args(&args[1..]);
    c.env_remove("EXECGO_RUNTIME_OWNER");
    c.output().expect("run cli")
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout not json ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

#[test]
fn run_prints_terminal_status_and_exits_0_whatever_the_outcome() {
    let s = Server::start();
    let o = cli(
        &s,
        &[
            "run",
            "--json",
            r#"{"execution":{"kind":"command","program":"/bin/echo","args":["x"]}}"#,
            "--poll-interval-ms",
            "20",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = stdout_json(&o);
    assert_eq!(v["status"], "success");
    assert_eq!(v["stdout"], "x\n");
    let o = cli(
        &s,
        &[
            "run",
            "--json",
            r#"{"execution":{"kind":"command","program":"/bin/false"}}"#,
            "--poll-interval-ms",
            "20",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout_json(&o)["error"]["code"], "exit_nonzero");
}

#[test]
fn submit_status_wait_with_file() {
    let s = Server::start();
    let f = s.data_dir.join("task.json");
    std::fs::write(
        &f,
        r#"{"task_id":"cli-1","execution":{"kind":"command","program":"/bin/true"}}"#,
    )
    .unwrap();
    let o = cli(&s, &["submit", "--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout_json(&o)["task_id"], "cli-1");
    let o = cli(&s, &["wait", "cli-1", "--poll-interval-ms", "20"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout_json(&o)["status"], "success");
    let o = cli(&s, &["status", "cli-1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout_json(&o)["task_id"], "cli-1");
}

#[test]
fn http_errors_print_the_body_and_exit_1() {
    let s = Server::start();
    let o = cli(&s, &["status", "missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout_json(&o)["error"]["code"], "not_found");
    assert!(String::from_utf8_lossy(&o.stderr).contains("request failed with status 404"));
    let o = cli(
        &s,
        &["submit", "--json", r#"{"execution":{"kind":"command"}}"#],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout_json(&o)["error"]["code"], "invalid_input");
}

#[test]
fn wait_timeout_exits_1_with_nothing_on_stdout() {
    let s = Server::start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    let o = cli(
        &s,
        &[
            "wait",
            &id,
            "--timeout-ms",
            "200",
            "--poll-interval-ms",
            "20",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    s.kill(&id, None);
}

#[test]
fn kill_with_owner_flag_and_env() {
    let s = Server::start();
    let id = s.submit(
        &json!({"execution": {"kind": "command", "program": "/bin/sleep",
        "args": ["30"]}, "control_context": {"owner": "alice"}}),
    );
    s.wait_status(&id, "running", std::time::Duration::from_secs(20));
    let o = cli(&s, &["kill", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout_json(&o)["error"]["code"], "permission_denied");
    let o = Command::new(runtime_bin())
        .args(["kill", "--server", &s.base, &id])
        .env("EXECGO_RUNTIME_OWNER", "alice")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout_json(&o)["task_id"], id.as_str());
    let st = s.wait_terminal(&id, std::time::Duration::from_secs(20));
    assert_eq!(st["status"], "cancelled");
}
