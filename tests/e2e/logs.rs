//! Logs: JSON lines on stderr by default with `task_id` on task lines, and
//! the journald path against a real `systemd-journald` started in a private
//! mount namespace, read back with `journalctl TASK_ID=<id>`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn json_lines_on_stderr_carry_task_id() {
    let s = Server::start();
    let id = s.submit(&command("/bin/true", &[]));
    s.wait_terminal(&id, T);
    std::thread::sleep(Duration::from_millis(100));
    let lines: Vec<Value> = s
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not json ({e}): {l}")))
        .collect();
    let task_lines: Vec<&Value> = lines
        .iter()
        .filter(|v| v["fields"]["task_id"] == id.as_str())
        .collect();
    assert!(task_lines.len() >= 2, "too few task lines: {lines:?}");
    for v in &lines {
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
    }
}

fn journald_available() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root to mount a private /run");
    }
    for tool in [
        "/lib/systemd/systemd-journald",
        "/usr/bin/journalctl",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(tool).exists() {
            return Some("systemd-journald, journalctl, unshare or nsenter is missing");
        }
    }
    None
}

#[test]
fn journald_receives_task_lines_with_task_id_field() {
    if let Some(why) = journald_available() {
        println!("skipped: {why}");
        return;
    }
    let tmp = tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pidfile = tmp.path().join("journald.pid");
    let port = free_port();
    // A private mount namespace with a fresh /run and journal directory, a
    // real journald in it, then the runtime exec'd in the same namespace.
    let script = format!(
        "set -e
         mount -t tmpfs tmpfs /run
         mount -t tmpfs tmpfs /var/log/journal
         mkdir -p /run/systemd/journal /run/log/journal
         (/lib/systemd/systemd-journald >/dev/null 2>&1 & echo $! > {pidfile})
         i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
         exec {bin} serve --log-format journald --listen-addr 127.0.0.1:{port} --data-dir {data}",
        pidfile = pidfile.display(),
        bin = runtime_bin().display(),
        data = data.display(),
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        if let Ok(r) = try_request("GET", &format!("{base}/healthz"), None, &[]) {
            if r.status == 200 {
                break;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("runtime under journald exited: {st}");
        }
        assert!(start.elapsed() < T, "runtime did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = serde_json::to_vec(&command("/bin/true", &[])).unwrap();
    let r = request("POST", &format!("{base}/api/v1/tasks"), Some(&body), &[]);
    let id = r.json()["task_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let mut found = Vec::new();
    while start.elapsed() < T {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &child.id().to_string(),
                "--mount",
                "journalctl",
                "--no-pager",
                "-o",
                "json",
            ])
            .arg(format!("TASK_ID={id}"))
            .output()
            .unwrap();
        found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        if found.iter().any(|v| v["MESSAGE"] == "task finished") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    assert!(
        found.iter().any(|v| v["MESSAGE"] == "task accepted"),
        "no 'task accepted' line for TASK_ID={id}: {found:?}"
    );
    assert!(
        found.iter().any(|v| v["MESSAGE"] == "task finished"),
        "{found:?}"
    );
    // The embedded helper and the task's shim log to the same journal.
    assert!(
        found
            .iter()
            .any(|v| v["SYSLOG_IDENTIFIER"] == "execgo-runtime-helper"),
        "no helper or shim line for TASK_ID={id}: {found:?}"
    );
    for v in &found {
        assert_eq!(v["TASK_ID"], id.as_str());
        let ident = v["SYSLOG_IDENTIFIER"].as_str().unwrap_or("");
        assert!(
            ident == "execgo-runtime" || ident == "execgo-runtime-helper",
            "{v}"
        );
    }
}
