//! Launches through the real helper binary: the reply names the shim, the
//! shim claims and runs the task, records its start in `started`, enforces
//! its limits and writes result.json as the contract says.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::{
    has_started, read_claim, spec, stat_fields, wait_gone, wait_result, wait_started, Helper,
};
use execgo_runtime_protocol::{HelperErrorKind, Request, Response};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn echo_succeeds_with_its_output() {
    let h = Helper::start();
    let dir = h.task("echo");
    let mut c = h.client();
    let l = c.launch(spec("echo", &["/bin/echo", "hi"]));
    assert!(l.shim_pid > 0);
    let started = wait_started(&dir, WAIT);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["stdout"], "hi\n");
    assert_eq!(r["stderr"], "");
    assert_eq!(r["stdout_truncated"], false);
    assert_eq!(r["exit_code"], 0);
    assert!(r.get("exit_signal").is_none());
    assert!(r.get("error").is_none());
    // Template fields survive; outcome fields replace the template's.
    assert_eq!(r["task_id"], "echo");
    assert_eq!(r["handle_id"], "echo");
    // `started` and the result agree on the process and its start.
    assert_eq!(r["pid"], started.pid);
    assert_eq!(r["pgid"], started.pid);
    assert_eq!(r["shim_pid"], l.shim_pid);
    assert_eq!(r["started_at"], started.started_at.as_str());
    assert_eq!(r["updated_at"], r["finished_at"]);
    assert!(r["duration_ms"].is_u64());
    assert!(r["usage"]["duration_ms"].is_u64());
    assert!(r["usage"]["max_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["kill_requested"], false);
    assert_eq!(r["timed_out"], false);
    // The claim names the shim the reply named: a symlink whose target is
    // the record. (The reply's ticks are 0 if the shim had exited already.)
    let claim = read_claim(&dir);
    assert_eq!(claim.shim_pid, l.shim_pid);
    assert!(
        [0, claim.shim_start_ticks].contains(&l.shim_start_ticks),
        "{l:?} {claim:?}"
    );
    assert!(dir.join("workspace").is_dir());
    assert!(!dir.join("result.json.tmp").exists());
}

#[test]
fn shim_log_exists_only_when_the_shim_has_trouble_to_tell() {
    let h = Helper::start_configured(common::my_uid(), None, &[], |c| {
        c.env("RUST_LOG", "info");
    });
    let dir = h.task("quiet");
    h.client().launch(spec("quiet", &["/bin/true"]));
    assert_eq!(wait_result(&dir, WAIT)["status"], "success");
    assert!(
        !dir.join("shim.log").exists(),
        "a normal run logs no trouble"
    );
    let dir = h.task("loud");
    h.client().launch(spec("loud", &["/no/such/program"]));
    assert_eq!(wait_result(&dir, WAIT)["error"]["code"], "launch_failed");
    let text = std::fs::read_to_string(dir.join("shim.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["message"], "the task could not be started");
    assert_eq!(lines[0]["task_id"], "loud");
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains("/no/such/program"));
}

/// `SigIgn` and `SigBlk` of a `/proc/<pid>/status` text.
fn ignored_and_blocked(status: &str) -> (String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("SigIgn:"), field("SigBlk:"))
}

/// Launches `cat /proc/self/status` and asserts the task ignores and
/// blocks no signal.
fn assert_task_signals_are_clean(h: &Helper, id: &str) {
    let st = std::fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap();
    let (ign, blk) = ignored_and_blocked(&st);
    assert_eq!(ign, "0000000000001000", "the helper ignores SIGPIPE only");
    assert_eq!(blk, "0000000000000000");
    let dir = h.task(id);
    h.client()
        .launch(spec(id, &["/bin/cat", "/proc/self/status"]));
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let (ign, blk) = ignored_and_blocked(r["stdout"].as_str().unwrap());
    assert_eq!(ign, "0000000000000000", "{id}");
    assert_eq!(blk, "0000000000000000", "{id}");
}

#[test]
#[allow(unsafe_code)]
fn a_task_starts_with_default_signals_and_an_empty_mask() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    use std::os::unix::process::CommandExt;
    // Started as std starts it (glibc's posix_spawn, which leaves the C
    // library's own real-time signals 32 and 33 ignored in its child).
    assert_task_signals_are_clean(&Helper::start(), "spawned");
    // Started by a parent that left signals ignored and blocked, as a
    // shell's `trap '' ...` or a supervisor's mask would: start-up undoes
    // that, and the task child resets what the helper and the shim change.
    let h = Helper::start_configured(common::my_uid(), None, &[], |c| {
        // SAFETY: runs in the forked child before exec, and only makes
        // async-signal-safe calls (signal, sigprocmask) on stack values.
        unsafe {
            c.pre_exec(|| {
                for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGUSR1, libc::SIGTERM] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                let mut set = SigSet::empty();
                set.add(Signal::SIGUSR2);
                set.add(Signal::SIGQUIT);
                sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
                Ok(())
            })
        };
    });
    assert_task_signals_are_clean(&h, "inherited");
}

/// The task child runs in the shim's memory until its exec, so it resets
/// the shim's signal handlers first (`sys::HANDLED_BY_STD`): those must be
/// std's SIGSEGV and SIGBUS handlers and nothing else, in the helper and in
/// the shim (a thread, say, would add glibc's handlers for its own
/// real-time signals).
#[test]
fn the_shim_handles_only_the_signals_its_task_child_resets() {
    let std_handlers = format!(
        "{:016x}",
        (1u64 << (libc::SIGSEGV - 1)) | (1u64 << (libc::SIGBUS - 1))
    );
    let caught = |pid: u32| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    let h = Helper::start();
    assert_eq!(caught(h.pid()), std_handlers, "the helper");
    let dir = h.task("caught");
    let l = h.client().launch(spec("caught", &["sleep", "30"]));
    let shim = caught(l.shim_pid as u32);
    wait_started(&dir, WAIT);
    send_kill(&dir);
    assert_eq!(wait_result(&dir, WAIT)["status"], "cancelled");
    assert_eq!(shim, std_handlers, "the shim");
}

#[test]
fn nonzero_exit_fails_and_output_is_capped() {
    let h = Helper::start();
    let dir = h.task("three");
    let mut s = spec(
        "three",
        &["/bin/sh", "-c", "printf 0123456789; echo oops >&2; exit 3"],
    );
    s.limits.stdout_max_bytes = 4;
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["error"]["code"], "exit_nonzero");
    assert_eq!(r["error"]["message"], "task exited with code 3");
    assert_eq!(r["stdout"], "0123");
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["stderr_truncated"], false);
    // The logs themselves are complete.
    assert_eq!(
        std::fs::read_to_string(dir.join("stdout.log")).unwrap(),
        "0123456789"
    );
}

#[test]
fn a_missing_program_is_launch_failed_without_a_start() {
    let h = Helper::start();
    let mut c = h.client();
    for (id, prog) in [("bare", "no-such-program-xyz"), ("abs", "/no/such/program")] {
        let dir = h.task(id);
        let l = c.launch(spec(id, &[prog, "arg"]));
        let r = wait_result(&dir, WAIT);
        assert!(!has_started(&dir), "{id}: started without an exec");
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error"]["code"], "launch_failed");
        assert_eq!(
            r["error"]["message"],
            format!("failed to execute '{prog}': No such file or directory (os error 2)")
        );
        for absent in ["started_at", "pid", "pgid", "exit_code", "duration_ms"] {
            assert!(r.get(absent).is_none(), "{absent} in {r}");
        }
        assert_eq!(r["shim_pid"], l.shim_pid);
    }
}

#[test]
fn env_is_exactly_what_was_passed_and_cwd_is_the_subdir() {
    let h = Helper::start();
    let dir = h.task("env");
    let mut s = spec("env", &["/usr/bin/env"]);
    s.env = vec![
        ("FOO".into(), "bar".into()),
        ("WITH_EQ".into(), "a=b".into()),
        ("EMPTY".into(), String::new()),
    ];
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let mut lines: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
    lines.sort();
    assert_eq!(lines, ["EMPTY=", "FOO=bar", "WITH_EQ=a=b"]);

    let dir = h.task("cwd");
    let mut s = spec("cwd", &["sh", "-c", "pwd -P; ls -a"]);
    s.workspace_subdir = Some("a/b".into());
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let want = std::fs::canonicalize(dir.join("workspace/a/b")).unwrap();
    let out = r["stdout"].as_str().unwrap();
    assert_eq!(out.lines().next().unwrap(), want.to_str().unwrap());
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), [".", ".."]);
}

#[test]
fn no_descriptor_leaks_into_the_task() {
    let h = Helper::start();
    let dir = h.task("fds");
    h.client()
        .launch(spec("fds", &["/bin/ls", "/proc/self/fd"]));
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let mut fds: Vec<u32> = r["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    fds.sort();
    // 0-2, plus the one ls itself opened to list the directory.
    assert_eq!(fds, [0, 1, 2, 3], "{r}");
}

#[test]
fn wall_time_limit_times_out_quickly() {
    let h = Helper::start();
    let dir = h.task("slow");
    let mut s = spec("slow", &["sleep", "10"]);
    s.limits.wall_time_ms = 200;
    let t = Instant::now();
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "timeout");
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["exit_signal"], 15);
    assert!(r.get("exit_code").is_none());
    let d = r["duration_ms"].as_u64().unwrap();
    assert!((200..1000).contains(&d), "duration {d}");
}

fn send_kill(dir: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join("control"))
        .unwrap();
    f.write_all(b"K").unwrap();
}

#[test]
fn a_k_on_the_fifo_cancels_the_task() {
    let h = Helper::start();
    let dir = h.task("killme");
    h.client().launch(spec("killme", &["sleep", "30"]));
    // The control FIFO is there before the task starts.
    wait_started(&dir, WAIT);
    let t = Instant::now();
    send_kill(&dir);
    let r = wait_result(&dir, WAIT);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["error"]["code"], "cancelled");
    assert_eq!(r["kill_requested"], true);
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["exit_signal"], 15);
    // With the shim gone, a kill finds nobody listening.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(dir.join("control"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENXIO));
}

#[test]
fn a_task_ignoring_sigterm_is_killed_after_the_grace() {
    let h = Helper::start();
    let dir = h.task("stubborn");
    let mut s = spec("stubborn", &["sh", "-c", "trap '' TERM; sleep 30"]);
    s.limits.wall_time_ms = 200;
    s.termination_grace_ms = 700;
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "timeout");
    assert_eq!(r["exit_signal"], 9);
    let d = r["duration_ms"].as_u64().unwrap();
    assert!((900..5000).contains(&d), "duration {d} not >= wall + grace");

    // The same through a kill request: cancelled, SIGKILL after the grace.
    let dir = h.task("stubborn-kill");
    let mut s = spec("stubborn-kill", &["sh", "-c", "trap '' TERM; sleep 30"]);
    s.termination_grace_ms = 500;
    h.client().launch(s);
    wait_started(&dir, WAIT);
    // Give sh time to install its trap before the TERM arrives.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    send_kill(&dir);
    let r = wait_result(&dir, WAIT);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["exit_signal"], 9);
}

#[test]
fn a_second_launch_finds_the_claim_and_runs_nothing() {
    let h = Helper::start();
    let dir = h.task_with_ledger("once");
    let mut c = h.client();
    let s = spec("once", &["sh", "-c", "echo run >> ../ran"]);
    let first = c.launch(s.clone());
    wait_result(&dir, WAIT);
    // The second launch gets a shim of its own, which finds the claim and
    // exits; the claim still names the first.
    let second = c.launch(s.clone());
    assert_ne!(second.shim_pid, first.shim_pid);
    wait_gone(second.shim_pid, WAIT);
    assert_eq!(read_claim(&dir).shim_pid, first.shim_pid);
    assert_eq!(already_claimed_lines(&dir), [first.shim_pid]);
    // And two launches at once: their shims race for the claim, one runs
    // the task and the other finds it claimed.
    let dir2 = h.task_with_ledger("once-running");
    let s2 = spec("once-running", &["sh", "-c", "echo run >> ../ran; sleep 1"]);
    let a = c.launch(s2.clone());
    let b = c.launch(s2);
    wait_result(&dir2, WAIT);
    let winner = read_claim(&dir2).shim_pid;
    assert!([a.shim_pid, b.shim_pid].contains(&winner), "{winner}");
    let loser = if winner == a.shim_pid { b } else { a };
    wait_gone(loser.shim_pid, WAIT);
    assert_eq!(already_claimed_lines(&dir2), [winner]);
    assert_eq!(std::fs::read_to_string(dir.join("ran")).unwrap(), "run\n");
    assert_eq!(std::fs::read_to_string(dir2.join("ran")).unwrap(), "run\n");
}

/// The claimants named by the "task already claimed" lines of `shim.log`
/// (the test helper logs at debug, so every shim line is there).
fn already_claimed_lines(dir: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("shim.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["message"] == "task already claimed; not running it again")
        .map(|v| v["claimed_by"].as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn the_shim_is_detached_from_the_helper() {
    let mut h = Helper::start();
    let dir = h.task("detached");
    let l = h.client().launch(spec("detached", &["sleep", "30"]));
    let started = wait_started(&dir, WAIT);
    // A shim that is running: the reply's start ticks are its own, as its
    // claim says.
    assert!(l.shim_start_ticks > 0);
    assert_eq!(read_claim(&dir).shim_start_ticks, l.shim_start_ticks);
    let shim = stat_fields(l.shim_pid).expect("shim is running");
    let ppid: u32 = shim[1].parse().unwrap();
    let sid: i32 = shim[3].parse().unwrap();
    assert_ne!(ppid, h.pid(), "the shim must not be the helper's child");
    assert_ne!(
        ppid,
        std::process::id(),
        "nor the runtime's (here: the test)"
    );
    assert_eq!(sid, l.shim_pid, "the shim leads its own session");
    let task = stat_fields(started.pid).expect("task is running");
    let task_ppid: i32 = task[1].parse().unwrap();
    let task_pgid: i32 = task[2].parse().unwrap();
    assert_eq!(task_ppid, l.shim_pid);
    assert_eq!(task_pgid, started.pid);
    // The helper can go away; the shim and its task carry on.
    h.stop();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        stat_fields(l.shim_pid).is_some(),
        "the shim outlives the helper"
    );
    send_kill(&dir);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "cancelled", "{r}");
}

#[test]
fn orphans_in_the_group_do_not_outlive_the_task() {
    let h = Helper::start();
    let dir = h.task("orphans");
    // The main process exits at once, leaving a background sleep behind in
    // its process group; the shim kills the group when the main one exits.
    h.client()
        .launch(spec("orphans", &["sh", "-c", "sleep 30 & echo $!"]));
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    let bg: i32 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    // Gone, or a zombie waiting for init.
    wait_gone(bg, Duration::from_secs(5));
}

#[test]
fn invalid_specs_are_refused_without_side_effects() {
    let h = Helper::start();
    let dir = h.task("valid-id");
    let mut c = h.client();
    let mut cases = Vec::new();
    cases.push(("bad task id", spec("../etc", &["/bin/true"])));
    let mut s = spec("valid-id", &["/bin/true"]);
    s.env.push(("A=B".into(), "x".into()));
    cases.push(("'=' in an env key", s));
    let mut s = spec("valid-id", &["/bin/true"]);
    s.workspace_subdir = Some("a/../../escape".into());
    cases.push(("'..' in the subdir", s));
    let mut s = spec("valid-id", &["/bin/true"]);
    s.result_template = "[1,2]".into();
    cases.push(("template not an object", s));
    let mut s = spec("valid-id", &["/bin/true"]);
    s.argv.clear();
    cases.push(("empty argv", s));
    let mut s = spec("valid-id", &["/bin/true"]);
    s.limits.wall_time_ms = 0;
    cases.push(("zero wall time", s));
    cases.push(("missing task dir", spec("no-such-task", &["/bin/true"])));
    for (name, s) in cases {
        match c.call(&Request::Launch(s)) {
            Response::Error(e) => {
                assert_eq!(e.kind, HelperErrorKind::InvalidRequest, "{name}: {e}");
                assert!(!e.message.is_empty());
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Still served on the same connection, and nothing was created.
    assert_eq!(c.call(&Request::Ping), Response::Pong);
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["stderr.log", "stdout.log"]);
    assert!(!h.data.join("no-such-task").exists());
}

#[test]
fn a_symlinked_task_dir_is_refused() {
    let h = Helper::start();
    let elsewhere = h.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("stdout.log"), b"").unwrap();
    std::fs::write(elsewhere.join("stderr.log"), b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, h.task_dir("linked")).unwrap();
    match h
        .client()
        .call(&Request::Launch(spec("linked", &["/bin/true"])))
    {
        Response::Error(e) => assert_eq!(e.kind, HelperErrorKind::InvalidRequest, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(elsewhere.join("shim.claim").symlink_metadata().is_err());
}

#[test]
fn a_symlink_in_the_workspace_chain_fails_the_launch() {
    let h = Helper::start();
    let dir = h.task("ws-link");
    let outside = h.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(dir.join("workspace")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("workspace/a")).unwrap();
    let mut s = spec("ws-link", &["/bin/true"]);
    s.workspace_subdir = Some("a/b".into());
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["error"]["code"], "launch_failed", "{r}");
    assert!(!has_started(&dir));
    assert!(
        r["error"]["message"].as_str().unwrap().contains("symlink"),
        "{r}"
    );
    assert!(!outside.join("b").exists());
}

#[test]
fn cpu_limit_is_enforced_with_sigxcpu() {
    let h = Helper::start();
    let dir = h.task("spin");
    let mut s = spec("spin", &["sh", "-c", "while :; do :; done"]);
    s.limits.cpu_time_sec = Some(1);
    h.client().launch(s);
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "cpu_limit_exceeded");
    assert_eq!(r["exit_signal"], 24);
}

/// The helper raises its own RLIMIT_NOFILE soft limit to the hard one at
/// start; a task gets the limit the helper was started with.
#[test]
fn a_task_gets_the_descriptor_limit_the_helper_was_started_with() {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Ours, if the helper has room to raise it; else one below the hard.
    let soft = if soft < hard { soft } else { hard / 2 };
    let h = Helper::start_configured(common::my_uid(), None, &[], |cmd| {
        common::limit_nofile(cmd, soft, hard)
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", h.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, [hard.to_string(), hard.to_string()], "{line}");
    let dir = h.task("nofile");
    h.client()
        .launch(spec("nofile", &["sh", "-c", "ulimit -Sn; ulimit -Hn"]));
    let r = wait_result(&dir, WAIT);
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["stdout"], format!("{soft}\n{hard}\n"), "{r}");
}
