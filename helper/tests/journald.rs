//! Journald logging of the real helper binary: `--log-format journald`
//! against a real `systemd-journald` started in a private mount namespace
//! (a fresh /run and journal directory), a task launched through the
//! protocol, and both the helper's and the shim's lines read back with
//! `journalctl TASK_ID=<id>`. Also the format's default rule
//! (`JOURNAL_STREAM`), the environment variable, and the fall-back to JSON
//! when the journal socket is missing. Root-only parts print why they skip.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{spec, wait_result, Helper, BIN};
use execgo_runtime_protocol::{HelperErrorKind, Request, Response};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const JOURNALD: &str = "/lib/systemd/systemd-journald";

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// Why the namespace tests cannot run here, if they cannot.
fn unavailable(need_journald: bool) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to mount a private /run".into());
    }
    if need_journald && !Path::new(JOURNALD).exists() {
        return Some(format!("{JOURNALD} is missing"));
    }
    for tool in ["unshare", "nsenter", "journalctl"] {
        if find_tool(tool).is_none() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// Kills the namespace's journald (by the pid it wrote) when dropped, so
/// a failing assertion does not leave it behind.
struct JournaldGuard(PathBuf);

impl Drop for JournaldGuard {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// A helper exec'd by `sh` in a private mount namespace with a fresh
/// tmpfs on /run (and on /var/log/journal), after `setup` ran there.
/// Standalone on a socket in the tempdir (outside the namespace's mounts,
/// so the test reaches it); stderr in `helper.log`.
fn start_in_namespace(setup: &str, extra: &[&str], env: &[(&str, &str)]) -> Helper {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    let socket = dir.path().join("h.sock");
    let log = File::create(dir.path().join("helper.log")).unwrap();
    let mut args = vec![
        BIN.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--allowed-uid".into(),
        "0".into(),
    ];
    args.extend(common::task_user_args(0, common::my_uid(), extra));
    args.extend(extra.iter().map(|s| s.to_string()));
    let script = format!(
        "set -e
         mount -t tmpfs tmpfs /run
         if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
         mkdir -p /run/systemd/journal /run/log/journal
         {setup}
         exec \"$@\""
    );
    let mut cmd = Command::new(find_tool("unshare").unwrap());
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .args(&args)
    .env_remove("JOURNAL_STREAM")
    .env_remove("EXECGO_RUNTIME_LOG_FORMAT")
    .env("RUST_LOG", "debug")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let h = Helper {
        child,
        dir,
        socket,
        data,
    };
    wait_bound(&h);
    h
}

fn wait_bound(h: &Helper) {
    let until = Instant::now() + WAIT;
    while !h.socket.exists() {
        assert!(Instant::now() < until, "helper never bound: {}", h.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `journalctl -o json MATCH` in the helper's mount namespace.
fn journal(helper_pid: u32, matches: &[String]) -> Vec<Value> {
    let out = Command::new(find_tool("nsenter").unwrap())
        .args(["--target", &helper_pid.to_string(), "--mount"])
        // --all: fields over 4 KiB are shown, not nulled.
        .args(["journalctl", "--no-pager", "--all", "-o", "json"])
        .args(matches)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn journald_gets_the_helpers_and_the_shims_lines_with_task_id() {
    if let Some(why) = unavailable(true) {
        println!("skipped: {why}");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let pidfile = scratch.path().join("journald.pid");
    let _journald = JournaldGuard(pidfile.clone());
    let setup = format!(
        "({JOURNALD} >/dev/null 2>&1 & echo $! > {pidfile})
         i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        pidfile = pidfile.display()
    );
    // At the default level, info: what operators see.
    let h = start_in_namespace(
        &setup,
        &["--log-format", "journald"],
        &[("RUST_LOG", "info")],
    );
    let helper_pid = h.pid();

    let id = "jt-1";
    let dir = h.task(id);
    let l = h.client().launch(spec(id, &["/bin/echo", "hi"]));
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let task_pid = r["pid"].to_string();

    let wanted = [
        "shim launched",
        "shim started",
        "task started",
        "result recorded",
    ];
    let start = Instant::now();
    let mut found = Vec::new();
    while start.elapsed() < WAIT {
        found = journal(helper_pid, &[format!("TASK_ID={id}")]);
        if wanted
            .iter()
            .all(|m| found.iter().any(|v| v["MESSAGE"] == *m))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in wanted {
        assert!(
            found.iter().any(|v| v["MESSAGE"] == m),
            "no {m:?} entry for TASK_ID={id}: {found:#?}\nhelper stderr: {}",
            h.log()
        );
    }
    for v in &found {
        assert_eq!(v["TASK_ID"], id, "{v}");
        assert_eq!(v["SYSLOG_IDENTIFIER"], "execgo-runtime-helper", "{v}");
        assert_eq!(v["TARGET"], "helper", "{v}");
    }
    let by = |m: &str| found.iter().find(|v| v["MESSAGE"] == m).unwrap();
    // The helper's own line, from the helper's pid.
    let launched = by("shim launched");
    assert_eq!(launched["_PID"], helper_pid.to_string());
    assert_eq!(launched["PRIORITY"], "6");
    assert_eq!(launched["SHIM_PID"], l.shim_pid.to_string());
    assert_eq!(launched["SHIM_START_TICKS"], l.shim_start_ticks.to_string());
    // The shim's lines, from the shim's pid, at info.
    for m in ["shim started", "task started", "result recorded"] {
        assert_eq!(by(m)["_PID"], l.shim_pid.to_string(), "{m}");
        assert_eq!(by(m)["PRIORITY"], "6", "{m}");
    }
    assert_eq!(by("shim started")["SHIM_PID"], l.shim_pid.to_string());
    assert_eq!(by("task started")["PID"], task_pid);
    assert_eq!(by("task started")["PROFILE"], "process");
    assert_eq!(by("task started")["PROGRAM"], "/bin/echo");
    assert_eq!(by("result recorded")["STATUS"], "success");
    // `error_code` is null: left out, not "null".
    assert!(by("result recorded").get("ERROR_CODE").is_none());

    // The start-up line has no task; it is there by identifier.
    let all = journal(
        helper_pid,
        &["SYSLOG_IDENTIFIER=execgo-runtime-helper".to_string()],
    );
    let started = all
        .iter()
        .find(|v| v["MESSAGE"] == "helper started")
        .unwrap_or_else(|| panic!("no 'helper started' entry: {all:#?}"));
    assert_eq!(started["MODE"], "standalone");
    let caps: Value = serde_json::from_str(started["CAPABILITIES"].as_str().unwrap()).unwrap();
    assert!(caps.is_object(), "{caps}");

    // A line too large for one datagram (larger than the default socket
    // buffer) arrives whole, through a memfd: a refused launch whose
    // error quotes a 300 KB env key.
    let big_id = "jt-big";
    let mut big = spec(big_id, &["/bin/true"]);
    let key = format!("{}=", "k".repeat(300_000));
    big.env.push((key.clone(), "v".into()));
    match h.client().call(&Request::Launch(big)) {
        Response::Error(e) => assert_eq!(e.kind, HelperErrorKind::InvalidRequest),
        other => panic!("oversized launch answered {other:?}"),
    }
    let start = Instant::now();
    let mut refused = Vec::new();
    while refused.is_empty() && start.elapsed() < WAIT {
        refused = journal(helper_pid, &[format!("TASK_ID={big_id}")]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let entry = refused
        .iter()
        .find(|v| v["MESSAGE"] == "launch refused")
        .unwrap_or_else(|| panic!("no 'launch refused' entry: {refused:?}"));
    assert_eq!(entry["PRIORITY"], "4");
    let error = entry["ERROR"].as_str().unwrap();
    assert!(error.contains(&key), "error of {} bytes", error.len());

    // shim.log takes the shim's warnings and errors: none for a task that
    // ran normally, so no file; a task that could not start has one, as
    // JSON lines with the task id, and the same line in the journal.
    assert!(!dir.join("shim.log").exists());
    let bad_id = "jt-missing";
    let bad_dir = h.task(bad_id);
    h.client().launch(spec(bad_id, &["/no/such/program"]));
    let r = wait_result(&bad_dir, WAIT);
    assert_eq!(r["error"]["code"], "launch_failed", "{r}");
    let shim_log = json_lines(&std::fs::read_to_string(bad_dir.join("shim.log")).unwrap());
    assert!(
        shim_log
            .iter()
            .any(|v| v["message"] == "the task could not be started"
                && v["level"] == "WARN"
                && v["task_id"] == bad_id),
        "{shim_log:?}"
    );
    assert!(
        shim_log.iter().all(|v| v["level"] != "INFO"),
        "{shim_log:?}"
    );
    let start = Instant::now();
    let mut bad = Vec::new();
    while !bad
        .iter()
        .any(|v: &Value| v["MESSAGE"] == "the task could not be started")
        && start.elapsed() < WAIT
    {
        bad = journal(helper_pid, &[format!("TASK_ID={bad_id}")]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let warned = bad
        .iter()
        .find(|v| v["MESSAGE"] == "the task could not be started")
        .unwrap_or_else(|| panic!("no warning in the journal: {bad:?}"));
    assert_eq!(warned["PRIORITY"], "4");
    // In journald mode the helper writes nothing to stderr.
    assert!(
        !h.log().contains("shim launched"),
        "helper stderr: {}",
        h.log()
    );
}

#[test]
fn journal_stream_defaults_to_journald_and_a_missing_socket_falls_back_to_json() {
    if let Some(why) = unavailable(false) {
        println!("skipped: {why}");
        return;
    }
    // A fresh /run without journald: the socket is missing.
    let h = start_in_namespace("", &[], &[("JOURNAL_STREAM", "8:12345")]);
    let until = Instant::now() + WAIT;
    while !h.log().contains("helper started") {
        assert!(Instant::now() < until, "{}", h.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = json_lines(&h.log());
    let warning = lines
        .iter()
        .find(|v| v["message"] == "journald is not reachable; logging JSON to stderr")
        .unwrap_or_else(|| panic!("no fall-back warning: {lines:?}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["socket"], "/run/systemd/journal/socket");
    assert!(warning["error"].is_string());
    h.assert_alive();
}

fn start_plain(env: &[(&str, &str)], extra: &[&str]) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("h.sock"))
        .arg("--allowed-uid")
        .arg(common::my_uid().to_string())
        .args(extra)
        .args(common::task_user_args(
            common::my_uid(),
            common::my_uid(),
            extra,
        ))
        .env_remove("JOURNAL_STREAM")
        .env_remove("EXECGO_RUNTIME_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[test]
fn the_environment_variable_chooses_the_format() {
    // An explicit json wins over JOURNAL_STREAM: JSON lines, no attempt at
    // journald (so no fall-back warning), whatever this host runs.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let socket = tmp.path().join("h.sock");
    let log = tmp.path().join("helper.log");
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .arg("--socket")
        .arg(&socket)
        .arg("--allowed-uid")
        .arg(common::my_uid().to_string())
        .args(common::task_user_args(
            common::my_uid(),
            common::my_uid(),
            &[],
        ))
        .env("JOURNAL_STREAM", "8:12345")
        .env("EXECGO_RUNTIME_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut h = Helper {
        child,
        dir: tmp,
        socket,
        data,
    };
    wait_bound(&h);
    let until = Instant::now() + WAIT;
    while !h.log().contains("helper started") {
        assert!(Instant::now() < until, "{}", h.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    h.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("journald"), "{text}");
    json_lines(&text);

    // An unknown value there is a usage error, like the flag's.
    for (env, extra) in [
        (&[("EXECGO_RUNTIME_LOG_FORMAT", "syslog")][..], &[][..]),
        (&[], &["--log-format", "syslog"][..]),
    ] {
        let out = start_plain(env, extra).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?} {extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("syslog"), "{err}");
    }
}
