//! Tasks are strangers to each other and to the runtime, tried as an
//! attacker would through the real binaries: an attacker task is given a
//! victim task's pid and the data dir's path and tries to read the
//! victim's secrets, signal it, trace it and read the runtime's state.
//! Every attempt must fail because of the rule under test, while the
//! victim demonstrably runs to `success`. Root only: per-task uids are a
//! root helper's.

use std::path::Path;
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// The secret the victim holds in its environment and its workspace.
const SECRET: &str = "victim-secret-4f1c";

/// A victim that keeps a secret in its environment and a file in its
/// workspace, writes `ready` there, and sleeps until `release` appears in
/// its workspace or 10 s pass; then reports what it saw.
fn victim(profile: &str) -> Value {
    let mut body = sh(&format!(
        "echo {SECRET} > secret.txt; touch ready; i=0; \
         while [ ! -e release ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         echo victim-done"
    ));
    body["execution"]["env"] = json!({ "API_KEY": SECRET });
    if profile == "linux_sandbox" {
        body["sandbox"] = json!({ "profile": "linux_sandbox" });
    }
    body
}

/// What the attacker tries, one line per attempt: `<attempt> ok` when it
/// worked, `<attempt> denied` otherwise.
fn attacker(pid: i64, data: &Path, victim_id: &str) -> Value {
    let d = data.display();
    let ws = format!("{d}/tasks/{victim_id}/workspace");
    let script = format!(
        "try() {{ name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"$name ok\"; else echo \"$name denied\"; fi; }}
         try environ grep -q {SECRET} /proc/{pid}/environ
         try cwd cat /proc/{pid}/cwd/secret.txt
         try root ls /proc/{pid}/root/
         try signal kill -0 {pid}
         try kill kill -9 {pid}
         try ptrace python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); sys.exit(0 if l.ptrace(16,{pid},0,0)==0 else 1)'
         try workspace cat {ws}/secret.txt
         try request cat {d}/tasks/{victim_id}/request.json
         try wal cat {d}/runtime.db-wal
         try db cat {d}/runtime.db
         try list ls {d}/tasks
         try leases ls /run/execgo-runtime-task-uids
         echo attacker-done"
    );
    sh(&script)
}

const ATTEMPTS: [&str; 12] = [
    "environ",
    "cwd",
    "root",
    "signal",
    "kill",
    "ptrace",
    "workspace",
    "request",
    "wal",
    "db",
    "list",
    "leases",
];

fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < T, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn task_uid(st: &Value) -> u64 {
    st["task_uid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no task_uid: {st}"))
}

/// One attack on a victim of `profile`, through the runtime `s`.
fn attack(s: &Server, profile: &str) {
    let v = s.submit(&victim(profile));
    wait_for_file(&s.task_dir(&v).join("workspace/ready"));
    let vst = s.wait_status(&v, "running", T);
    let mut pid = vst["pid"].as_i64().expect("victim pid");
    // A sandbox's pid is its namespace's init (root, on the host); the
    // victim's own process, as the host sees it, is the init's child.
    if profile == "linux_sandbox" {
        let kids = children_of(pid as i32);
        pid = i64::from(*kids.first().expect("the sandbox init's child"));
    }
    let a = s.submit(&attacker(pid, &s.data_dir, &v));
    let ast = s.wait_terminal(&a, T);
    assert_eq!(ast["status"], "success", "{ast}");
    let out = ast["stdout"].as_str().unwrap();
    assert!(out.contains("attacker-done"), "{out}");
    for attempt in ATTEMPTS {
        assert!(
            out.contains(&format!("{attempt} denied")),
            "{profile} victim: the attacker's {attempt} attempt was not denied: {out}"
        );
    }
    // The victim ran on, untouched, to its end.
    std::fs::write(s.task_dir(&v).join("workspace/release"), "").unwrap();
    let vst = s.wait_terminal(&v, T);
    assert_eq!(vst["status"], "success", "{vst}");
    assert_eq!(vst["stdout"], "victim-done\n", "{vst}");
    assert_ne!(task_uid(&vst), task_uid(&ast), "two tasks, two uids");
}

#[test]
fn a_process_task_cannot_read_signal_or_trace_another_nor_read_the_runtimes_state() {
    if !is_root() {
        println!("skipped: per-task uids need a root helper");
        return;
    }
    attack(&Server::start(), "process");
}

/// The same attack in the packaged layout: a root helper on a socket, the
/// runtime as an unprivileged user owning the data dir.
#[test]
fn in_the_separated_layout_a_task_cannot_reach_another_nor_the_runtimes_state() {
    if !is_root() {
        println!("skipped: the separated layout needs a root helper");
        return;
    }
    let tmp = tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut helper = start_root_helper(tmp.path(), &[]);
    let s = unprivileged_runtime(&data)
        .arg("--helper-socket")
        .arg(tmp.path().join("helper.sock").to_str().unwrap())
        .start();
    attack(&s, "process");
    drop(s);
    let _ = helper.kill();
    let _ = helper.wait();
}

#[test]
fn a_sandboxed_victim_is_out_of_a_process_tasks_reach_by_its_host_pid() {
    if !is_root() {
        println!("skipped: per-task uids and linux_sandbox need root");
        return;
    }
    attack(&Server::start(), "linux_sandbox");
}

#[test]
fn each_running_task_has_its_own_uid_from_the_range_and_a_terminal_one_holds_none() {
    if !is_root() {
        println!("skipped: per-task uids need a root helper");
        return;
    }
    let first = 1_879_300_000u64;
    let s = Server::builder()
        .args(["--task-uid-range", &format!("{first}-{}", first + 2)])
        .start();
    let ids: Vec<String> = (0..3)
        .map(|_| s.submit(&sh("id -u; touch mine; sleep 1")))
        .collect();
    // A fourth while the three run: the range is spent, and says so.
    for id in &ids {
        s.wait_status(id, "running", T);
    }
    let spent = s.submit(&sh("true"));
    let st = s.wait_terminal(&spent, T);
    assert_eq!(st["error"]["code"], "launch_failed", "{st}");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("{first}-{}", first + 2)), "{msg}");
    let mut uids = Vec::new();
    for id in &ids {
        let st = s.wait_terminal(id, T);
        assert_eq!(st["status"], "success", "{st}");
        let uid = task_uid(&st);
        assert_eq!(st["stdout"], format!("{uid}\n"), "ran as its task_uid");
        assert!((first..=first + 2).contains(&uid), "{uid}");
        uids.push(uid);
        // What it left is the runtime's now (root's, under a root serve).
        let meta = std::fs::metadata(s.task_dir(id).join("workspace/mine")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "three running tasks, three uids: {uids:?}");
    let ours = format!("{}/tasks/", s.data_dir.canonicalize().unwrap().display());
    let held: Vec<_> = std::fs::read_dir("/run/execgo-runtime-task-uids")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with(&ours))
        .collect();
    assert!(held.is_empty(), "no lease outlives its task: {held:?}");
    // Given back, the uids serve again.
    let again = s.submit(&sh("id -u"));
    let st = s.wait_terminal(&again, T);
    assert_eq!(st["status"], "success", "{st}");
    assert!((first..=first + 2).contains(&task_uid(&st)));
}

/// Waits until `pid` is gone (a zombie counts as gone).
fn wait_dead(pid: i32) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn a_uid_whose_shim_was_killed_is_reused_only_once_its_processes_are_dead() {
    if !is_root() {
        println!("skipped: per-task uids need a root helper");
        return;
    }
    let uid = 1_879_300_100u64;
    let s = Server::builder()
        .args(["--task-uid-range", &format!("{uid}-{uid}")])
        .start();
    // The first task leaves a process in its own session, then its shim is
    // killed: nobody gives its uid back.
    let first = s.submit(&sh(
        "setsid sleep 600 & echo $! > orphan; touch ready; sleep 600",
    ));
    wait_for_file(&s.task_dir(&first).join("workspace/ready"));
    let st = s.wait_status(&first, "running", T);
    let orphan: i32 = std::fs::read_to_string(s.task_dir(&first).join("workspace/orphan"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(orphan));
    let shim = st["shim_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = s.wait_terminal(&first, T);
    assert_eq!(st["status"], "failed", "{st}");
    // Reported terminal only once nothing of it runs: the helper killed
    // the process that left the task's group and session.
    assert!(
        !alive(orphan),
        "the orphan {orphan} outlived its task's end"
    );
    // The one uid of the range goes to the next task only after every
    // process of the first is dead and its files are handed back.
    let second = s.submit(&sh(
        "id -u; ps -eo uid=,comm= | awk -v u=$(id -u) '$1 == u && $2 == \"sleep\"' | wc -l",
    ));
    let st = s.wait_terminal(&second, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(task_uid(&st), uid);
    assert!(!alive(orphan), "the first task's process was killed first");
    let lines: Vec<&str> = st["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(
        lines,
        [uid.to_string().as_str(), "0"],
        "no sleep of the first task runs as the uid"
    );
    let meta = std::fs::metadata(s.task_dir(&first).join("workspace/orphan")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0, "handed back");
}

/// A sandbox's shim killed: its pid namespace's init dies with it
/// (PR_SET_PDEATHSIG), and with the init every process of the namespace.
#[test]
fn a_sandbox_dies_with_its_shim() {
    if !is_root() {
        println!("skipped: linux_sandbox needs root");
        return;
    }
    let s = Server::start();
    let mut body = sh("setsid sleep 600 & touch ready; sleep 600");
    body["sandbox"] = json!({"profile": "linux_sandbox"});
    let id = s.submit(&body);
    wait_for_file(&s.task_dir(&id).join("workspace/ready"));
    let st = s.wait_status(&id, "running", T);
    let init = st["pid"].as_i64().unwrap() as i32;
    let shim = st["shim_pid"].as_i64().unwrap() as i32;
    let mut tree = vec![init];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children_of(tree[i]));
        i += 1;
    }
    assert!(tree.len() >= 3, "init, the task and its orphan: {tree:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for pid in &tree {
        assert!(wait_dead(*pid), "{pid} of the sandbox outlived its shim");
    }
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
}

#[test]
fn a_script_runs_when_the_data_dir_lies_under_a_directory_tasks_cannot_search() {
    if !is_root() {
        println!("skipped: per-task uids need a root helper");
        return;
    }
    // Mode 0700: as a checkout under /root would be.
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        closed.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let s = Server::builder()
        .data_dir(&closed.path().join("data"))
        .start();
    for (interpreter, script) in [
        (json!(["python3"]), "print('from-the-script')"),
        (json!(["/bin/sh"]), "echo from-the-script"),
        (json!(["bash", "-e"]), "echo from-the-script"),
    ] {
        let id = s.submit(&json!({
            "execution": {
                "kind": "script",
                "interpreter": interpreter,
                "script": script,
            }
        }));
        let st = s.wait_terminal(&id, T);
        assert_eq!(st["status"], "success", "{interpreter}: {st}");
        assert_eq!(st["stdout"], "from-the-script\n", "{st}");
    }
}

#[test]
fn a_range_holding_a_known_user_is_refused_at_start_naming_it() {
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user")
        .uid
        .as_raw();
    let range = format!("{}-{}", nobody - 1, nobody + 1);
    let tmp = tempdir();
    let out = std::process::Command::new(helper_bin())
        .args(["--data-dir", tmp.path().to_str().unwrap()])
        .args(["--socket", tmp.path().join("s").to_str().unwrap()])
        .args(["--allowed-uid", "12345", "--task-uid-range", &range])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !is_root() {
        // Unprivileged, a range is refused as such.
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("needs a root helper"), "{stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&range), "names the range: {stderr}");
    assert!(
        stderr.contains("\\\"nobody\\\""),
        "names the user: {stderr}"
    );
    for bad in ["0-10", "10-5", "x-y", "5"] {
        let out = std::process::Command::new(helper_bin())
            .args(["--data-dir", tmp.path().to_str().unwrap()])
            .args(["--socket", tmp.path().join("s").to_str().unwrap()])
            .args(["--allowed-uid", "12345", "--task-uid-range", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("FIRST-LAST"), "{bad}: {stderr}");
    }
}
