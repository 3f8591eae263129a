//! Crash semantics: restarts reconcile every task with what is on disk, the
//! helper can die without taking tasks with it, a kill's escalation survives
//! the death of both runtime and helper, and a full or read-only data dir is
//! a clean 503 that leaves nothing half-written.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn finished_while_down_is_finalized_from_result_json() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let id = s.submit(&sh("sleep 0.3; echo done; exit 4"));
    let st = s.wait_status(&id, "running", T);
    let shim = st["shim_pid"].as_i64().unwrap() as i32;
    s.kill9();
    assert!(wait_dead(shim, T), "shim did not finish");
    drop(s);
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed");
    assert_eq!(st["exit_code"], 4);
    assert_eq!(st["stdout"], "done\n");
    assert_eq!(st["error"]["code"], "exit_nonzero");
    let types = s.event_types(&id);
    assert!(types.contains(&"recovered".to_string()), "{types:?}");
    assert_eq!(types.last().unwrap(), "failed");
    assert_eq!(
        types.iter().filter(|t| *t == "resource_released").count(),
        1
    );
}

/// The shim renames its fdatasynced `result.json.tmp` without a directory
/// fsync, so a power loss can leave the result under the temp name; a
/// `kill -9` during its write leaves a body cut short. Both are simulated
/// on the files of finished tasks while the runtime is down.
#[test]
fn a_result_left_under_its_temp_name_counts_only_when_whole() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let whole = s.submit(&sh("sleep 0.3; echo done; exit 4"));
    let cut = s.submit(&sh("sleep 0.3; exit 0"));
    let shims: Vec<i32> = [&whole, &cut]
        .iter()
        .map(|id| {
            s.wait_status(id, "running", T)["shim_pid"]
                .as_i64()
                .unwrap() as i32
        })
        .collect();
    s.kill9();
    for shim in shims {
        assert!(wait_dead(shim, T), "shim did not finish");
    }
    for (id, keep) in [(&whole, usize::MAX), (&cut, 20)] {
        let td = s.task_dir(id);
        let body = std::fs::read(td.join("result.json")).unwrap();
        std::fs::remove_file(td.join("result.json")).unwrap();
        std::fs::write(td.join("result.json.tmp"), &body[..body.len().min(keep)]).unwrap();
    }
    drop(s);
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&whole, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit_code"], 4);
    assert_eq!(st["stdout"], "done\n");
    // Put back under its name, durably, before it was relied on.
    let td = s.task_dir(&whole);
    assert!(!td.join("result.json.tmp").exists());
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(td.join("result.json")).unwrap()).unwrap();
    assert_eq!(on_disk["exit_code"], 4);
    // Cut short is no result: the monitor was lost.
    let st = s.wait_terminal(&cut, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "internal");
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(s.task_dir(&cut).join("result.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["error"]["code"], "internal");
}

#[test]
fn lost_monitor_is_failed_internal() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    let st = s.wait_status(&id, "running", T);
    let (shim, task) = (
        st["shim_pid"].as_i64().unwrap() as i32,
        st["pid"].as_i64().unwrap() as i32,
    );
    s.kill9();
    sigkill(shim);
    sigkill(task);
    assert!(wait_dead(shim, T));
    drop(s);
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "internal");
    assert!(st["error"]["message"].as_str().unwrap().contains("monitor"));
    assert!(s.event_types(&id).contains(&"recovered".to_string()));
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["active_reservations"], json!([]), "reservation leaked");
}

#[test]
fn running_task_is_reattached_and_still_killable() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    s.wait_status(&id, "running", T);
    s.kill9();
    drop(s);
    let s = Server::builder().data_dir(&dir).start();
    assert_eq!(s.status(&id)["status"], "running");
    let v = s.get("/api/v1/runtime/resources").json();
    assert_eq!(v["reserved"]["task_slots"], 1, "ledger not rebuilt: {v}");
    let start = Instant::now();
    s.kill(&id, None);
    let st = s.wait_terminal(&id, T);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(st["status"], "cancelled");
}

#[test]
fn kill_escalation_survives_runtime_and_helper_death() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder()
        .data_dir(&dir)
        .args(["--termination-grace-ms", "1000"])
        .start();
    let id = s.submit(&sh("trap '' TERM; echo ready; sleep 60"));
    // The output can show before the start is recorded: wait for both.
    let st = s.wait_for(&id, T, |v| v["stdout"] == "ready\n" && v["pid"].is_i64());
    let task = st["pid"].as_i64().unwrap() as i32;
    s.kill(&id, None);
    let killed_at = Instant::now();
    if let Some(h) = s.helper_pid() {
        sigkill(h);
    }
    s.kill9();
    drop(s);
    assert!(alive(task), "SIGTERM must not have killed it");
    assert!(
        wait_dead(task, Duration::from_secs(10)),
        "SIGKILL never came"
    );
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "killed before the grace: {took:?}"
    );
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "cancelled", "{st}");
}

#[test]
fn embedded_helper_death_spares_tasks_and_is_replaced() {
    let s = Server::start();
    let id = s.submit(&sh("sleep 0.5; echo alive"));
    s.wait_status(&id, "running", T);
    let helper = s.helper_pid().expect("embedded helper");
    sigkill(helper);
    assert!(wait_dead(helper, T));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "alive\n");
    // New work runs on a new helper.
    let id2 = s.submit(&command("/bin/echo", &["again"]));
    assert_eq!(s.wait_terminal(&id2, T)["stdout"], "again\n");
    let new_helper = s.helper_pid().expect("replacement helper");
    assert_ne!(new_helper, helper);
    assert_eq!(s.get("/readyz").status, 200);
}

fn start_helper(socket: &Path, data: &Path) -> Child {
    let uid = nix::unistd::getuid().as_raw().to_string();
    let child = Command::new(helper_bin())
        .arg("--socket")
        .arg(socket)
        .args(["--allowed-uid", &uid])
        .args(helper_task_user_args())
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn helper");
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < T, "helper socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn standalone_helper_down_means_not_ready_and_tasks_wait() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("tasks")).unwrap();
    let sock = tmp.path().join("helper.sock");
    let mut helper = start_helper(&sock, &data);
    let s = Server::builder()
        .data_dir(&data)
        .arg("--helper-socket")
        .arg(sock.to_str().unwrap())
        .start();
    assert_eq!(s.get("/readyz").status, 200);
    let running = s.submit(&sh("sleep 0.5; echo kept"));
    s.wait_status(&running, "running", T);
    helper.kill().unwrap();
    helper.wait().unwrap();
    let _ = std::fs::remove_file(&sock);
    let r = s.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.code(), "not_ready");
    let waiting = s.submit(&command("/bin/echo", &["later"]));
    assert_eq!(s.wait_terminal(&running, T)["stdout"], "kept\n");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.status(&waiting)["status"], "accepted");
    let mut helper = start_helper(&sock, &data);
    let st = s.wait_terminal(&waiting, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "later\n");
    assert_eq!(s.get("/readyz").status, 200);
    drop(s);
    let _ = helper.kill();
    let _ = helper.wait();
}

/// A tmpfs mounted on a test directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opts}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn task_dirs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn full_or_read_only_data_dir_is_a_clean_503() {
    if !is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let tmp = tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(fs) = Tmpfs::mount(&data, "4m") else {
        println!("skipped: mount -t tmpfs failed");
        return;
    };
    let s = Server::builder().data_dir(&data).start();
    let ok = s.submit(&command("/bin/true", &[]));
    s.wait_terminal(&ok, T);
    // Fill the file system.
    let filler = data.join("filler");
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("cat /dev/zero > {} 2>/dev/null", filler.display()))
        .status();
    let before = task_dirs(&data);
    let mut saw_503 = false;
    for i in 0..5 {
        let r = s.post(
            "/api/v1/tasks",
            &json!({"task_id": format!("full-{i}"), "execution": {"kind": "command",
                "program": "/bin/true"}, "metadata": {"pad": "x".repeat(20000)}}),
        );
        assert_ne!(r.status, 500, "{}", r.text);
        if r.status == 503 {
            assert_eq!(r.code(), "storage_unavailable", "{}", r.text);
            assert_eq!(s.get(&format!("/api/v1/tasks/full-{i}")).status, 404);
            saw_503 = true;
        }
    }
    assert!(saw_503, "a full disk never produced a 503");
    for d in task_dirs(&data) {
        assert!(
            before.contains(&d) || s.get(&format!("/api/v1/tasks/{d}")).status == 200,
            "half-written task dir {d}"
        );
    }
    std::fs::remove_file(&filler).unwrap();
    let id = s.submit(&command("/bin/echo", &["back"]));
    assert_eq!(s.wait_terminal(&id, T)["stdout"], "back\n");
    // Read-only task directory (a read-only bind mount over tasks/; the
    // database stays writable, so only the file system says no).
    let tasks = data.join("tasks");
    let bind = Command::new("mount")
        .arg("--bind")
        .arg(&tasks)
        .arg(&tasks)
        .status()
        .unwrap();
    assert!(bind.success());
    let ro = Tmpfs(tasks.clone());
    ro.remount("bind,ro");
    let r = s.post(
        "/api/v1/tasks",
        &json!({"task_id": "ro-1",
        "execution": {"kind": "command", "program": "/bin/true"}}),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.code(), "storage_unavailable");
    drop(ro);
    assert_eq!(s.get("/api/v1/tasks/ro-1").status, 404);
    assert!(!data.join("tasks/ro-1").exists());
    drop(s);
    drop(fs);
}

#[test]
fn a_recorded_kill_that_never_reached_the_shim_is_resent_after_restart() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    s.wait_status(&id, "running", T);
    s.kill9();
    drop(s);
    // The crash window: the kill committed, the FIFO write never happened.
    let db = rusqlite::Connection::open(dir.join("runtime.db")).unwrap();
    db.execute(
        "UPDATE tasks SET kill_requested = 1 WHERE task_id = ?1",
        [&id],
    )
    .unwrap();
    drop(db);
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "cancelled", "{st}");
}

/// A task whose launch was recorded, with the runtime and its helper
/// killed before any shim claimed it; returns the data dir and the id.
fn launch_recorded_never_claimed(tmp: &tempfile::TempDir) -> (std::path::PathBuf, String) {
    let dir = tmp.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    // A stopped helper: the launch is recorded but no shim ever claims.
    let helper = s.helper_pid().expect("embedded helper");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper),
        nix::sys::signal::Signal::SIGSTOP,
    );
    let id = s.submit(&command("/bin/true", &[]));
    let start = Instant::now();
    while !s
        .event_types(&id)
        .contains(&"resource_reserved".to_string())
    {
        assert!(start.elapsed() < T, "launch never recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    sigkill(helper);
    s.kill9();
    (dir, id)
}

#[test]
fn a_live_claimer_found_at_restart_is_followed() {
    let tmp = tempdir();
    let (dir, id) = launch_recorded_never_claimed(&tmp);
    let mut stand_in: Child = Command::new("/bin/sleep")
        .arg("3")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = stand_in.id() as i32;
    let record = execgo_runtime_protocol::taskdir::ClaimRecord {
        shim_pid: pid,
        shim_start_ticks: execgo_runtime_protocol::taskdir::start_ticks(pid).unwrap(),
    };
    let task_dir = dir.join("tasks").join(&id);
    std::os::unix::fs::symlink(record.encode(), task_dir.join("shim.claim")).unwrap();
    let s = Server::builder().data_dir(&dir).start();
    // Claimed but not started yet: the task waits for its shim's start.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.status(&id)["status"], "accepted");
    let started = execgo_runtime_protocol::taskdir::StartedRecord {
        pid,
        started_at: "2026-01-01T00:00:00.000Z".into(),
    };
    std::os::unix::fs::symlink(started.encode(), task_dir.join("started")).unwrap();
    let st = s.wait_status(&id, "running", T);
    assert_eq!(st["shim_pid"], pid, "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(st["started_at"], "2026-01-01T00:00:00.000Z", "{st}");
    assert!(
        s.events(&id).iter().any(|e| e["event_type"] == "recovered"
            && e["message"] == "re-attached to the shim that claimed the task"),
        "{:?}",
        s.events(&id)
    );
    // The stand-in writes no result: once it exits the monitor is lost.
    stand_in.wait().unwrap();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["error"]["code"], "internal", "{st}");
}

#[test]
fn a_claim_that_is_not_a_record_is_never_run_again() {
    let tmp = tempdir();
    let (dir, id) = launch_recorded_never_claimed(&tmp);
    // Something in the claim's place that no shim writes: the task counts
    // as claimed by a shim that is gone.
    let task_dir = dir.join("tasks").join(&id);
    std::fs::write(task_dir.join("shim.claim"), b"").unwrap();
    let s = Server::builder().data_dir(&dir).start();
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["error"]["code"], "internal", "{st}");
    assert!(st["started_at"].is_null(), "{st}");
    assert!(!task_dir.join("control").exists(), "a shim ran it");
}
