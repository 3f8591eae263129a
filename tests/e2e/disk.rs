//! Disk use: each task log is capped on disk (`--max-log-bytes`), whatever
//! the task writes and however; past the cap output is dropped, the task
//! is never blocked, and the status says `*_truncated`.

use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn log_len(s: &Server, id: &str, name: &str) -> u64 {
    std::fs::metadata(s.task_dir(id).join(name)).unwrap().len()
}

#[test]
fn output_past_the_cap_is_dropped_without_blocking_the_task() {
    let s = Server::builder()
        .args(["--max-log-bytes", &MIB.to_string()])
        .start();
    let started = Instant::now();
    let id = s.submit(&sh("head -c 52428800 /dev/zero; echo done >&2"));
    let st = s.wait_terminal(&id, T);
    let took = started.elapsed();
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(log_len(&s, &id, "stdout.log"), MIB, "stdout.log is the cap");
    assert_eq!(st["stdout_truncated"], true, "{}", st["stdout_truncated"]);
    assert_eq!(st["stderr"], "done\n");
    assert_eq!(st["stderr_truncated"], false);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // result.json says so too.
    let result: Value =
        serde_json::from_slice(&std::fs::read(s.task_dir(&id).join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["stdout_truncated"], true, "{result}");
    assert_eq!(result["stderr_truncated"], false, "{result}");
}

#[test]
fn the_cap_holds_for_many_writers_sharing_the_descriptor() {
    let s = Server::builder()
        .args(["--max-log-bytes", &MIB.to_string()])
        .start();
    // Four processes, each writing 1 MiB, two of them in a session of
    // their own (they inherit the descriptor, not the group); stderr too.
    let id = s.submit(&sh("for i in 1 2; do head -c 1048576 /dev/zero & done; \
         for i in 1 2; do setsid head -c 1048576 /dev/zero & done; \
         head -c 3000000 /dev/zero >&2; wait"));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(log_len(&s, &id, "stdout.log"), MIB);
    assert_eq!(log_len(&s, &id, "stderr.log"), MIB);
    assert_eq!(st["stdout_truncated"], true);
    assert_eq!(st["stderr_truncated"], true);
}

#[test]
fn a_task_writing_little_sees_no_change() {
    let s = Server::builder()
        .args(["--max-log-bytes", &MIB.to_string()])
        .start();
    let id = s.submit(&sh("echo hello; echo oops >&2"));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "hello\n");
    assert_eq!(st["stderr"], "oops\n");
    assert_eq!(st["stdout_truncated"], false);
    assert_eq!(st["stderr_truncated"], false);
    assert_eq!(
        std::fs::read(s.task_dir(&id).join("stdout.log")).unwrap(),
        b"hello\n"
    );
}

#[test]
fn a_running_task_at_the_cap_shows_truncated() {
    let s = Server::builder().args(["--max-log-bytes", "65536"]).start();
    let id = s.submit(&sh("head -c 200000 /dev/zero; exec sleep 60"));
    let st = s.wait_for(&id, T, |v| v["stdout_truncated"] == true);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(log_len(&s, &id, "stdout.log"), 65536);
    s.kill(&id, None);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "cancelled", "{st}");
    assert_eq!(st["stdout_truncated"], true);
}

#[test]
fn a_zero_cap_is_a_usage_error() {
    for (flag, env) in [(Some("0"), None), (None, Some("0")), (Some("x"), None)] {
        let mut cmd = std::process::Command::new(runtime_bin());
        cmd.args(["serve", "--listen-addr", "127.0.0.1:0"]);
        if let Some(v) = flag {
            cmd.args(["--max-log-bytes", v]);
        }
        if let Some(v) = env {
            cmd.env("EXECGO_RUNTIME_MAX_LOG_BYTES", v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("max-log-bytes"), "{err}");
    }
}
