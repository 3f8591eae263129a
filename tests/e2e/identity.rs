//! Who a task runs as, through the real binaries: as root, tasks never run
//! as root by accident nor as the runtime, and whatever uid they run as
//! they hold no capability, cannot gain one, and die with their shim.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);

/// Prints the identity lines of the task's own /proc status.
const STATUS_LINES: &str =
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status";

/// The `Field:\tvalue` lines of a status dump, as (field, value).
fn fields(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {f:?}"))
}

/// No capability in any set, no new privileges, and real, effective,
/// saved and file-system ids all `uid`/`gid`.
fn assert_unprivileged(stdout: &str, uid: u32, gid: u32) {
    let f = fields(stdout);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&f, set), "0000000000000000", "{set}: {stdout}");
    }
    assert_eq!(field(&f, "NoNewPrivs"), "1", "{stdout}");
    let ids = |name| -> Vec<u32> {
        field(&f, name)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid"), [uid; 4], "{stdout}");
    assert_eq!(ids("Gid"), [gid; 4], "{stdout}");
    assert_eq!(field(&f, "Groups"), "", "no supplementary groups: {stdout}");
}

fn nobody() -> (u32, u32) {
    let u = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// The default `--task-uid-range`.
const DEFAULT_RANGE: std::ops::RangeInclusive<u32> = 1_879_048_192..=1_879_113_727;

#[test]
fn as_root_the_embedded_helper_runs_each_task_as_its_own_uid_without_privileges() {
    if !is_root() {
        println!("skipped: switching the task user needs root");
        return;
    }
    let s = Server::start();
    let script = format!(
        "{STATUS_LINES}
         echo data > written && cat written
         touch ../planted 2>/dev/null && echo planted-in-task-dir
         kill -0 $PPID 2>/dev/null && echo signalled-the-shim || echo shim-out-of-reach"
    );
    let id = s.submit(&sh(&script));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    let uid = st["task_uid"].as_u64().expect("task_uid") as u32;
    assert!(DEFAULT_RANGE.contains(&uid), "{st}");
    assert_unprivileged(out, uid, uid);
    assert!(out.contains("data\n"), "the workspace is writable: {out}");
    assert!(!out.contains("planted"), "{out}");
    assert!(out.contains("shim-out-of-reach"), "{out}");
    assert!(!s.task_dir(&id).join("planted").exists());
    // Over, the task's files are handed back to the runtime's user.
    use std::os::unix::fs::MetadataExt;
    for p in ["workspace", "workspace/written"] {
        let meta = std::fs::metadata(s.task_dir(&id).join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{p}");
    }
    // An interpreter script is read by the task's uid too, another one.
    let script = s.submit(
        &json!({"execution": {"kind": "script", "interpreter": ["/bin/sh"],
        "script": "id -u"}}),
    );
    let st = s.wait_terminal(&script, T);
    let other = st["task_uid"].as_u64().expect("task_uid");
    assert_eq!(st["stdout"], format!("{other}\n"), "{st}");
    assert_ne!(other, u64::from(uid), "each task its own uid");
}

#[test]
fn with_task_user_every_task_shares_that_user() {
    if !is_root() {
        println!("skipped: switching the task user needs root");
        return;
    }
    let s = Server::builder().args(["--task-user", "nobody"]).start();
    let (uid, gid) = nobody();
    for _ in 0..2 {
        let id = s.submit(&sh(STATUS_LINES));
        let st = s.wait_terminal(&id, T);
        assert_eq!(st["status"], "success", "{st}");
        assert_unprivileged(st["stdout"].as_str().unwrap(), uid, gid);
        assert_eq!(st["task_uid"], uid, "{st}");
        // The plan says what sharing costs.
        let warnings = st["execution_plan"]["capability_warnings"].to_string();
        assert!(warnings.contains("(--task-user)"), "{st}");
    }
    let caps = s.get("/api/v1/runtime/capabilities").json();
    assert_eq!(caps["sandbox"]["task_uid_range"], serde_json::Value::Null);
}

#[test]
fn serve_refuses_task_users_that_are_root_or_the_runtime() {
    // Usage: the task user is the embedded helper's; a separate helper has
    // its own.
    let out = Command::new(runtime_bin())
        .args([
            "serve",
            "--task-user",
            "nobody",
            "--helper-socket",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    if !is_root() {
        println!("skipped (the rest): the task user rules of a root runtime");
        return;
    }
    for (extra, want) in [
        (&["--task-user", "root"][..], "add --allow-root-tasks"),
        (
            &["--task-user", "root", "--allow-root-tasks"][..],
            "a task must not be able to act as the runtime",
        ),
    ] {
        let tmp = tempdir();
        let out = Command::new(runtime_bin())
            .arg("serve")
            .arg("--listen-addr")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} started");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

const RUNTIME_UID: u32 = SEPARATED_RUNTIME_UID;

/// An unprivileged runtime using the root helper in `dir`.
fn start_unprivileged_runtime(dir: &Path) -> Server {
    unprivileged_runtime(&dir.join("data"))
        .arg("--helper-socket")
        .arg(dir.join("helper.sock").to_str().unwrap())
        .start()
}

/// The separated production layout: helper as root on a socket, runtime
/// as an unprivileged user without capabilities, tasks as a third user.
#[test]
fn separated_mode_keeps_runtime_and_tasks_unprivileged() {
    if !is_root() {
        println!("skipped: the separated layout needs a root helper");
        return;
    }
    let tmp = tempdir();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let mut helper = start_root_helper(tmp.path(), &["--task-user", "nobody"]);
    let s = start_unprivileged_runtime(tmp.path());
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert_unprivileged_runtime(&status);
    let sock = tmp.path().join("helper.sock");
    let script = format!(
        "{STATUS_LINES}
         /usr/bin/python3 -c '
import socket, sys
try:
    socket.socket(socket.AF_UNIX).connect(sys.argv[1])
    print(\"reached-the-helper\")
except OSError as e:
    print(\"refused\", e.errno)' {}",
        sock.display()
    );
    let id = s.submit(&sh(&script));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    let (uid, gid) = nobody();
    assert_unprivileged(out, uid, gid);
    assert!(
        out.contains(&format!("refused {}", libc::EACCES)),
        "the task reached the helper's socket: {out}"
    );
    drop(s);
    helper.kill().unwrap();
    helper.wait().unwrap();
}

/// The separated layout with a uid per task: what a task leaves is handed
/// to the unprivileged runtime when it ends, so the retention GC removes
/// all of it, and the id can be submitted again.
#[test]
fn separated_mode_hands_a_tasks_files_back_so_retention_removes_them() {
    if !is_root() {
        println!("skipped: the separated layout needs a root helper");
        return;
    }
    let tmp = tempdir();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let mut helper = start_root_helper(tmp.path(), &[]);
    let data = tmp.path().join("data");
    std::os::unix::fs::chown(&data, Some(RUNTIME_UID), Some(RUNTIME_UID)).unwrap();
    let s = Server::builder()
        .data_dir(&data)
        .arg("--helper-socket")
        .arg(tmp.path().join("helper.sock").to_str().unwrap())
        .args(["--result-retention-secs", "1", "--gc-interval-ms", "100"])
        .configure(|cmd| {
            cmd.uid(RUNTIME_UID).gid(RUNTIME_UID);
        })
        .start();
    let body = json!({
        "task_id": "again",
        "execution": {"kind": "command", "program": "/bin/sh",
            "args": ["-c", "mkdir -p a/b && echo x > a/b/f && chmod 500 a/b && id -u"]},
    });
    for round in 0..2 {
        let id = s.submit(&body);
        let st = s.wait_terminal(&id, T);
        assert_eq!(st["status"], "success", "round {round}: {st}");
        let uid = st["task_uid"].as_u64().unwrap();
        assert!(DEFAULT_RANGE.contains(&(uid as u32)), "{st}");
        assert_ne!(uid, u64::from(RUNTIME_UID));
        // Retention removes the row and the whole directory.
        let start = Instant::now();
        while s.get("/api/v1/tasks/again").status != 404 || s.task_dir("again").exists() {
            assert!(
                start.elapsed() < T,
                "round {round}: the task dir stayed: {}",
                s.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(s);
    helper.kill().unwrap();
    helper.wait().unwrap();
}

/// The runtime of the separated layout: its uid everywhere, no capability.
fn assert_unprivileged_runtime(status: &str) {
    let f = fields(status);
    let uids: Vec<u32> = field(&f, "Uid")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(uids, [RUNTIME_UID; 4]);
    for set in ["CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(&f, set), "0000000000000000", "runtime {set}");
    }
}

/// Root tasks, where the operator allows them, are root without power:
/// every capability set empty, so mount(2) fails.
#[test]
fn allowed_root_tasks_still_have_no_capabilities() {
    if !is_root() {
        println!("skipped: root tasks need a root helper");
        return;
    }
    let tmp = tempdir();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let mut helper = start_root_helper(tmp.path(), &["--task-user", "root", "--allow-root-tasks"]);
    let s = start_unprivileged_runtime(tmp.path());
    let script = format!(
        "{STATUS_LINES}
         mkdir m && mount -t tmpfs t m 2>/dev/null && echo mounted || echo mount-refused
         chown 1:1 m 2>/dev/null && echo chowned || echo chown-refused"
    );
    let id = s.submit(&sh(&script));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    assert_unprivileged(out, 0, 0);
    assert!(out.contains("mount-refused\nchown-refused"), "{out}");
    drop(s);
    helper.kill().unwrap();
    helper.wait().unwrap();
}

/// The task dies with its shim (PR_SET_PDEATHSIG): nothing would enforce
/// its limits otherwise.
#[test]
fn a_task_does_not_outlive_its_shim() {
    let s = Server::start();
    let id = s.submit(&sh("sleep 300"));
    let st = s.wait_status(&id, "running", T);
    let pid = st["pid"].as_i64().expect("pid") as i32;
    let shim = st["shim_pid"].as_i64().expect("shim_pid") as i32;
    assert!(alive(pid));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < T, "task {pid} outlived its shim {shim}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
}

/// Nothing of the helper's, the shim's or the runtime's reaches a task: its
/// only descriptors are 0, 1 and 2 (plus the one `ls` opens to list them).
#[test]
fn a_task_gets_only_stdin_stdout_and_stderr() {
    let s = Server::start();
    // The first launch forks its shim; the helper then keeps one forked
    // ahead (a spare, handed its descriptors over a socket), which the
    // second gets: neither may pass anything on.
    for round in 0..2 {
        let id = s.submit(&sh("exec ls /proc/self/fd"));
        let st = s.wait_terminal(&id, T);
        assert_eq!(st["status"], "success", "round {round}: {st}");
        let fds: Vec<u32> = st["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        // ls's own descriptor for the directory is the lowest free one, 3.
        assert_eq!(fds, [0, 1, 2, 3], "round {round}: {st}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// linux_sandbox in the separated layout: the unprivileged runtime asks, the
/// root helper sandboxes, the task holds nothing and sees only itself.
#[test]
fn separated_mode_sandboxes_tasks() {
    if !is_root() {
        println!("skipped: the separated layout needs a root helper");
        return;
    }
    let tmp = tempdir();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    let mut helper = start_root_helper(tmp.path(), &["--task-user", "nobody"]);
    let s = start_unprivileged_runtime(tmp.path());
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if caps["sandbox"]["linux_sandbox"] != true {
        println!("skipped: this host does not offer linux_sandbox");
        drop(s);
        helper.kill().unwrap();
        helper.wait().unwrap();
        return;
    }
    let mut body = sh(&format!(
        "{STATUS_LINES}
         grep '^Seccomp:' /proc/self/status
         echo pids $(ls /proc | grep -c '^[0-9]')"
    ));
    body["sandbox"] = json!({"profile": "linux_sandbox"});
    body["policy"] = json!({"capability_mode": "strict"});
    let id = s.submit(&body);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    let (uid, gid) = nobody();
    assert_unprivileged(out, uid, gid);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids <= 6, "{out}");
    drop(s);
    helper.kill().unwrap();
    helper.wait().unwrap();
}
