//! A task cannot escape its limits: every task gets cgroups of its own
//! (where the host has writable ones), and a kill, the wall time and the
//! end of the task reach every process in them, also one that moved to
//! another process group or session. A shim that dies leaves cgroups that
//! the next helper removes, killing what is left in them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);

/// Starts two escapees and records their pids in the workspace: one in a
/// new session (ignoring SIGTERM), one in a new process group; then runs
/// `then`.
fn escape(then: &str) -> Value {
    sh(&format!("{ESCAPE}\n{then}"))
}

const ESCAPE: &str =
    "setsid sh -c 'trap \"\" TERM; echo $$ > session.pid; while :; do sleep 1; done' &
     /usr/bin/python3 -c 'import os, time
os.setpgid(0, 0)
open(\"group.pid\", \"w\").write(str(os.getpid()))
time.sleep(300)' &
     while [ ! -s session.pid ] || [ ! -s group.pid ]; do sleep 0.02; done
     touch escaped";

/// Skips unless tasks get cgroups here: root, with a writable hierarchy.
fn cgroups_available() -> Option<&'static str> {
    if !is_root() {
        return Some("task cgroups need root");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mountinfo.contains(" - cgroup") {
        return Some("no cgroup hierarchy is mounted");
    }
    None
}

fn escapee_pids(s: &Server, id: &str) -> Vec<i32> {
    let ws = s.task_dir(id).join("workspace");
    let start = Instant::now();
    while !ws.join("escaped").exists() {
        assert!(start.elapsed() < T, "the escapees never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    ["session.pid", "group.pid"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(ws.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

fn assert_all_dead(pids: &[i32]) {
    let start = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "escapees {pids:?} outlived their task"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The shim removes a task's cgroups right after it writes the result, so
/// they may outlive the terminal status by a moment: waits for that.
fn assert_cgroups_removed(id: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while !task_cgroups(id).is_empty() {
        assert!(
            Instant::now() < until,
            "cgroups left: {:?}",
            task_cgroups(id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The task's cgroup directories, wherever a hierarchy has one
/// (`<root>/<data dir scope>/<task_id>`).
fn task_cgroups(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for h in ["memory", "pids", "cpu", "freezer", "unified", ""] {
        let root = PathBuf::from("/sys/fs/cgroup")
            .join(h)
            .join("execgo-runtime");
        let Ok(scopes) = std::fs::read_dir(&root) else {
            continue;
        };
        for scope in scopes.flatten() {
            let dir = scope.path().join(id);
            if dir.is_dir() {
                found.push(dir);
            }
        }
    }
    found
}

#[test]
fn escapees_die_on_kill() {
    if let Some(why) = cgroups_available() {
        println!("skipped: {why}");
        return;
    }
    let s = Server::builder()
        .args(["--termination-grace-ms", "300"])
        .start();
    let id = s.submit(&escape("sleep 300"));
    let pids = escapee_pids(&s, &id);
    assert!(!task_cgroups(&id).is_empty(), "the task has no cgroup");
    let plan = &s.status(&id)["execution_plan"];
    assert_eq!(
        plan["resource_enforcement"]["cgroup_enforced"], true,
        "{plan}"
    );
    let caps = s.get("/api/v1/runtime/capabilities").json();
    assert_eq!(caps["resources"]["task_cgroups"], true, "{caps}");
    s.kill(&id, None);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "cancelled", "{st}");
    assert_all_dead(&pids);
    assert_cgroups_removed(&id);
    // The one cgroup a process task joins has the memory controller only
    // on v2 (on v1 it is the freezer's): the peak comes with it.
    let peak = st["usage"]["memory_peak_bytes"].as_u64();
    if caps["resources"]["cgroup_version"] == "v2" {
        assert!(peak.is_some_and(|p| p > 0), "{st}");
    } else {
        assert_eq!(peak, None, "{st}");
    }
}

#[test]
fn escapees_die_at_the_wall_time() {
    if let Some(why) = cgroups_available() {
        println!("skipped: {why}");
        return;
    }
    let s = Server::builder()
        .args(["--termination-grace-ms", "300"])
        .start();
    let mut body = escape("sleep 300");
    body["limits"] = json!({"wall_time_ms": 2000});
    let id = s.submit(&body);
    let pids = escapee_pids(&s, &id);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["error"]["code"], "timeout", "{st}");
    assert_all_dead(&pids);
    assert_cgroups_removed(&id);
}

#[test]
fn escapees_die_when_the_main_process_exits() {
    if let Some(why) = cgroups_available() {
        println!("skipped: {why}");
        return;
    }
    let s = Server::start();
    let id = s.submit(&escape("exit 0"));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let ws = s.task_dir(&id).join("workspace");
    for f in ["session.pid", "group.pid"] {
        let pid: i32 = std::fs::read_to_string(ws.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_all_dead(&[pid]);
    }
    assert_cgroups_removed(&id);
}

/// A shim killed outright leaves its task's cgroups and the escapees in
/// them; the helper of the next runtime removes both.
#[test]
fn a_dead_shims_cgroups_are_swept_on_recovery() {
    if let Some(why) = cgroups_available() {
        println!("skipped: {why}");
        return;
    }
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&data).start();
    let id = s.submit(&escape("sleep 300"));
    let pids = escapee_pids(&s, &id);
    let shim = s.status(&id)["shim_pid"].as_i64().unwrap() as i32;
    s.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(pids.iter().all(|p| alive(*p)), "the escapees died early");
    assert!(!task_cgroups(&id).is_empty());
    drop(s);
    let s = Server::builder().data_dir(&data).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_all_dead(&pids);
    let start = Instant::now();
    while !task_cgroups(&id).is_empty() {
        assert!(start.elapsed() < T, "cgroups left: {:?}", task_cgroups(&id));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--disable-cgroup`: no task cgroup, and the plan says what that costs.
#[test]
fn disabled_cgroups_are_not_used_and_the_plan_says_so() {
    if let Some(why) = cgroups_available() {
        println!("skipped: {why}");
        return;
    }
    let s = Server::builder().arg("--disable-cgroup").start();
    let id = s.submit(&sh("touch escaped; sleep 300"));
    let ws = s.task_dir(&id).join("workspace");
    let start = Instant::now();
    while !ws.join("escaped").exists() {
        assert!(start.elapsed() < T, "the task never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(task_cgroups(&id), Vec::<PathBuf>::new());
    let st = s.status(&id);
    let plan = &st["execution_plan"];
    assert_eq!(
        plan["resource_enforcement"]["cgroup_enforced"], false,
        "{plan}"
    );
    assert!(
        plan["capability_warnings"]
            .to_string()
            .contains("no task cgroup"),
        "{plan}"
    );
    s.kill(&id, None);
    s.wait_terminal(&id, T);
}
