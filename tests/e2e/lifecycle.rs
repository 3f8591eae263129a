//! Process structure and lifetime: the shim is not a descendant of the
//! runtime, a task outlives `kill -9` of the runtime, and GC removes
//! expired tasks.

use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(20);

fn ancestors(mut pid: i32) -> Vec<i32> {
    let mut out = vec![];
    while pid > 1 {
        match ppid_of(pid) {
            Some(p) => {
                out.push(p);
                pid = p;
            }
            None => break,
        }
    }
    out
}

#[test]
fn shim_is_not_a_descendant_of_the_runtime() {
    let s = Server::start();
    let id = s.submit(&command("/bin/sleep", &["30"]));
    let st = s.wait_status(&id, "running", T);
    let shim = st["shim_pid"].as_i64().unwrap() as i32;
    let task = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(ppid_of(task), Some(shim), "the task is the shim's child");
    let chain = ancestors(shim);
    assert!(
        !chain.contains(&s.pid()),
        "shim {shim} descends from the runtime: {chain:?}"
    );
    s.kill(&id, None);
    s.wait_terminal(&id, T);
}

#[test]
fn task_survives_kill_9_of_the_runtime_and_is_finished_after_restart() {
    let data = tempdir();
    let dir = data.path().join("data");
    let mut s = Server::builder().data_dir(&dir).start();
    let id = s.submit(&sh("sleep 1; echo survived"));
    let st = s.wait_status(&id, "running", T);
    let task = st["pid"].as_i64().unwrap() as i32;
    s.kill9();
    assert!(alive(task), "the task died with the runtime");
    drop(s);
    // Restart on the same data dir: the task ends with its real outcome.
    let s2 = Server::builder().data_dir(&dir).start();
    let st = s2.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "survived\n");
    assert!(s2.event_types(&id).contains(&"recovered".to_string()));
}

#[test]
fn gc_deletes_expired_terminal_tasks() {
    let s = Server::builder()
        .args(["--result-retention-secs", "1", "--gc-interval-ms", "100"])
        .start();
    let id = s.submit(&command("/bin/true", &[]));
    s.wait_terminal(&id, T);
    let running = s.submit(&command("/bin/sleep", &["30"]));
    s.wait_status(&running, "running", T);
    let start = Instant::now();
    loop {
        if s.get(&format!("/api/v1/tasks/{id}")).status == 404 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not collected");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The row goes first (reads see the 404 at its commit), the directory
    // right after it.
    let gone = Instant::now();
    while s.task_dir(&id).exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "directory left behind"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.get(&format!("/api/v1/tasks/{id}/events")).status, 404);
    // A running task is never collected.
    assert_eq!(s.status(&running)["status"], "running");
    s.kill(&running, None);
}

/// The shim's last act is to rename `result.json` into the task dir; the
/// runtime finalizes on that rename, not on the shim's exit afterwards.
/// Here the shim is stopped and the rename is done for it, with the result
/// of another task: the task ends with that outcome while its shim lives.
#[test]
fn a_result_renamed_in_ends_the_task_before_its_shim_exits() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let s = Server::builder().data_dir(&dir).start();
    let donor = s.submit(&sh("echo from-the-donor; exit 7"));
    s.wait_terminal(&donor, T);
    let body = std::fs::read(dir.join("tasks").join(&donor).join("result.json")).unwrap();

    let id = s.submit(&command("/bin/sleep", &["30"]));
    let st = s.wait_status(&id, "running", T);
    let shim = st["shim_pid"].as_i64().unwrap() as i32;
    let pgid = st["pgid"].as_i64().unwrap() as i32;
    let signal = |pid: i32, sig| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    };
    signal(shim, nix::sys::signal::Signal::SIGSTOP);
    let td = dir.join("tasks").join(&id);
    std::fs::write(td.join("result.json.tmp"), &body).unwrap();
    std::fs::rename(td.join("result.json.tmp"), td.join("result.json")).unwrap();

    let st = s.wait_terminal(&id, T);
    assert!(alive(shim), "the shim was still there");
    assert_eq!(st["exit_code"], 7, "{st}");
    assert_eq!(st["error"]["code"], "exit_nonzero", "{st}");
    signal(-pgid, nix::sys::signal::Signal::SIGKILL);
    signal(shim, nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn a_second_serve_on_the_same_data_dir_exits_1_naming_the_holder() {
    let s = Server::start();
    let id = s.submit(&command("/bin/true", &[]));
    s.wait_terminal(&id, T);
    let second = std::process::Command::new(runtime_bin())
        .args(["serve", "--listen-addr"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(&s.data_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run a second serve");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    let dir = std::fs::canonicalize(&s.data_dir).unwrap();
    let expected = format!("data dir {} is in use by pid {}", dir.display(), s.pid());
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    // The first one serves on, its task untouched.
    assert_eq!(s.get("/readyz").status, 200);
    assert_eq!(s.status(&id)["status"], "success");
}
