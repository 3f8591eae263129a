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
    // (The runtime may see the output before it records the start.)
    s.wait_for(&id, T, |v| {
        v["stdout_truncated"] == true && v["status"] == "running"
    });
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

/// A tmpfs of `size`, unmounted (lazily: shims may still hold it) on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_does_not_stop_the_runtime() {
    if !is_root() {
        println!("skipped: needs root to mount a size-limited tmpfs");
        return;
    }
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let _fs = Tmpfs::mount(&data, "20m");
    let s = Server::builder().data_dir(&data).start();

    let other = s.submit(&command("/bin/sleep", &["60"]));
    s.wait_status(&other, "running", T);
    // Fills the file system from its workspace, and stays on it.
    let filler = s.submit(&sh("dd if=/dev/zero of=big bs=1M; exit 0"));
    let done = s.wait_terminal(&filler, T);
    let big = s.task_dir(&filler).join("workspace/big");
    assert!(big.exists(), "{done}");
    // What the task's end gave back (its result's reservation) is taken
    // too: the file system is full.
    let more = s.task_dir(&filler).join("workspace/more");
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat /dev/zero > {} 2>/dev/null", more.display()))
        .status();

    // Everything that only reads keeps answering.
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.get(&format!("/api/v1/tasks/{other}")).status, 200);
    assert_eq!(s.get(&format!("/api/v1/tasks/{filler}")).status, 200);
    assert_eq!(s.get("/api/v1/tasks").status, 200);
    assert_eq!(s.get(&format!("/api/v1/tasks/{other}/events")).status, 200);

    // A submit says why it cannot be taken, and leaves nothing behind.
    let r = s.post(
        "/api/v1/tasks",
        &json!({"task_id": "on-a-full-disk",
                "execution": {"kind": "command", "program": "/bin/true"}}),
    );
    assert_eq!(r.status, 503, "{}", r.text);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "storage_unavailable", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.starts_with("storage full: ") && message.contains("no space left on device"),
        "{message}"
    );
    assert!(
        !s.task_dir("on-a-full-disk").exists(),
        "a task dir was left"
    );
    assert_eq!(s.get("/api/v1/tasks/on-a-full-disk").status, 404);

    // Killing a running task still works.
    let r = s.kill(&other, None);
    assert_eq!(r.status, 200, "{}", r.text);
    // Its shim ends it and records that in the space it reserved.
    let result = s.task_dir(&other).join("result.json");
    let start = Instant::now();
    while !result.exists() && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(50));
    }
    let recorded: Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(recorded["status"], "cancelled", "{recorded}");
    assert_eq!(s.get(&format!("/api/v1/tasks/{other}")).status, 200);

    // Space again: the runtime records what it could not, and submits
    // work again.
    std::fs::remove_file(&big).unwrap();
    std::fs::remove_file(&more).unwrap();
    let killed = s.wait_terminal(&other, T);
    assert_eq!(killed["status"], "cancelled", "{killed}");
    let again = s.submit(&sh("echo back"));
    let st = s.wait_terminal(&again, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "back\n");
    assert_eq!(s.get("/readyz").status, 200);
}
