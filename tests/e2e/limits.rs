//! A `process` task's limits hold for the whole task, tried the way a
//! hostile task would: many children sharing one memory limit, a fork
//! loop against the pids limit, user namespaces and the kernel interfaces
//! the baseline seccomp filter refuses. Each test shows the limit held
//! (the OOM kill, the count of forks, the errno), and that the task itself
//! ran. Root, a writable controller or seccomp are checked first; a test
//! that cannot run says why and passes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// A runtime whose process tasks get cgroup limits for every controller
/// in `needs` (`memory_limit`, `pids_limit`), or why the test is skipped.
fn cgroup_server(needs: &[&str]) -> Result<Server, String> {
    if !is_root() {
        return Err("task cgroups need root".into());
    }
    let s = Server::start();
    let caps = s.get("/api/v1/runtime/capabilities").json();
    for n in needs {
        if caps["resources"][n] != true {
            return Err(format!("no writable cgroup controller for {n} here"));
        }
    }
    Ok(s)
}

fn with_limits(mut body: Value, limits: Value) -> Value {
    body["limits"] = limits;
    body
}

/// The task's cgroup directories, wherever a hierarchy has one.
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

/// The first of `files` found in one of the task's cgroups, trimmed.
fn cgroup_value(id: &str, files: &[&str]) -> Option<String> {
    task_cgroups(id).iter().find_map(|d| {
        files
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
            .map(|v| v.trim().to_string())
    })
}

/// The soft and hard `Max address space` of a `/proc/self/limits` line
/// in `out`.
fn address_space(out: &str) -> Option<(String, String)> {
    let line = out.lines().find(|l| l.starts_with("Max address space"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
}

/// Waits until the task has created `file` in its workspace.
fn wait_for_file(s: &Server, id: &str, file: &str) {
    let path = s.task_dir(id).join("workspace").join(file);
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < T, "{file} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Six children, each touching 60 MB, under one 100 MiB limit: together
/// they cannot fit, whatever each one's address space, and the task ends
/// `memory_limit_exceeded` with its peak at most the limit. One process
/// may still map far more than the limit as long as it does not use it
/// (the limit is memory, not address space).
#[test]
fn a_process_tasks_children_share_one_memory_limit() {
    let s = match cgroup_server(&["memory_limit", "oom_detection"]) {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let limit = 100 * MIB;
    let limits = json!({"memory_bytes": limit, "wall_time_ms": 30000});

    let script = "grep 'Max address space' /proc/self/limits
        for i in 1 2 3 4 5 6; do
            /usr/bin/python3 -c 'import time
b = b\"x\" * (60 << 20)
print(\"allocated\", flush=True)
time.sleep(5)' &
        done
        wait
        echo parent-done";
    let id = s.submit(&with_limits(sh(script), limits.clone()));
    let st = s.wait_terminal(&id, T);
    let out = st["stdout"].as_str().unwrap_or_default();
    println!("six children under 100 MiB: {out:?}, peak {}", st["usage"]);
    assert_eq!(
        address_space(out),
        Some(("unlimited".into(), "unlimited".into())),
        "the task's address space is bounded (RLIMIT_AS), not its cgroup: {st}"
    );
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "memory_limit_exceeded", "{st}");
    let allocated = out.matches("allocated").count();
    assert!(allocated < 6, "all six allocations coexisted: {st}");
    let peak = st["usage"]["memory_peak_bytes"].as_u64().expect("a peak");
    assert!(peak > limit / 2 && peak <= limit, "peak {peak}: {st}");
    let enforced = &st["execution_plan"]["resource_enforcement"];
    assert_eq!(enforced["memory_enforced"], true, "{enforced}");
    assert_eq!(enforced["oom_detection"], true, "{enforced}");

    // A gigabyte mapped, twenty megabytes used: fine under the same limit.
    let script = "exec /usr/bin/python3 -c 'import mmap
m = mmap.mmap(-1, 1 << 30)
m[: 20 << 20] = b\"y\" * (20 << 20)
print(\"mapped\", len(m))'";
    let id = s.submit(&with_limits(sh(script), limits));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    assert_eq!(st["stdout"], "mapped 1073741824\n", "{st}");
}

/// A fork loop under `pids_max: 50` gets no further than the limit: the
/// task (which counts its own forks) ran, and fewer than 50 of 400 forks
/// succeeded.
#[test]
fn a_process_task_cannot_fork_past_its_pids_limit() {
    let s = match cgroup_server(&["pids_limit"]) {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let script = "exec /usr/bin/python3 -c '
import os, time
n = 0
for i in range(400):
    try:
        if os.fork() == 0:
            time.sleep(3); os._exit(0)
        n += 1
    except OSError:
        pass
print(n)'";
    let id = s.submit(&with_limits(
        sh(script),
        json!({"pids_max": 50, "wall_time_ms": 30000}),
    ));
    let st = s.wait_terminal(&id, T);
    println!("forks that succeeded under pids_max 50: {}", st["stdout"]);
    assert_eq!(st["status"], "success", "{st}");
    let forked: u32 = st["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .expect("a count");
    // python itself holds one of the fifty.
    assert!(forked < 50, "{forked} forks under pids_max 50: {st}");
    assert!(forked >= 40, "the task could hardly fork at all: {st}");
    assert_eq!(
        st["execution_plan"]["resource_enforcement"]["pids_enforced"], true,
        "{st}"
    );
}

/// The plan says where a process task's limits are, and they are there:
/// in its cgroups while it runs (no RLIMIT_AS), or, with
/// `--disable-cgroup`, RLIMIT_AS with a warning, and no pids limit.
#[test]
fn the_plan_says_where_a_process_tasks_limits_are() {
    let s = match cgroup_server(&["memory_limit", "pids_limit"]) {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let limit = 100 * MIB;
    let body = with_limits(
        sh("grep 'Max address space' /proc/self/limits; touch ready; sleep 300"),
        json!({"memory_bytes": limit, "pids_max": 50}),
    );
    let id = s.submit(&body);
    wait_for_file(&s, &id, "ready");
    let st = s.status(&id);
    let plan = &st["execution_plan"];
    let e = &plan["resource_enforcement"];
    assert_eq!(e["memory_enforced"], true, "{plan}");
    assert_eq!(e["pids_enforced"], true, "{plan}");
    assert_eq!(e["cgroup_enforced"], true, "{plan}");
    assert_eq!(plan["degraded"], false, "{plan}");
    assert!(plan.get("capability_warnings").is_none(), "{plan}");
    assert_eq!(
        cgroup_value(&id, &["memory.limit_in_bytes", "memory.max"]),
        Some(limit.to_string())
    );
    assert_eq!(cgroup_value(&id, &["pids.max"]).as_deref(), Some("50"));
    s.kill(&id, None);
    let st = s.wait_terminal(&id, T);
    assert_eq!(
        address_space(st["stdout"].as_str().unwrap()),
        Some(("unlimited".into(), "unlimited".into())),
        "{st}"
    );
    drop(s);

    let s = Server::builder().arg("--disable-cgroup").start();
    let id = s.submit(&with_limits(
        sh("grep 'Max address space' /proc/self/limits"),
        json!({"memory_bytes": limit, "pids_max": 50}),
    ));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let plan = &st["execution_plan"];
    let e = &plan["resource_enforcement"];
    assert_eq!(e["memory_enforced"], true, "{plan}");
    assert_eq!(e["pids_enforced"], false, "{plan}");
    assert_eq!(e["oom_detection"], false, "{plan}");
    let warnings = plan["capability_warnings"].to_string();
    assert!(warnings.contains("RLIMIT_AS"), "{plan}");
    assert!(warnings.contains("pids_max"), "{plan}");
    assert_eq!(
        address_space(st["stdout"].as_str().unwrap()),
        Some((limit.to_string(), limit.to_string())),
        "{st}"
    );
}

/// Probes each system call the baseline filter refuses, with arguments
/// that would fail harmlessly (or create nothing lasting) if it let them
/// through, and prints `<name> <errno name or ok>` per call.
fn syscall_probe() -> String {
    format!(
        "import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and name.startswith(\"clone\"):
        os._exit(0)
    if r > 0 and name.startswith(\"clone\"):
        os.waitpid(r, 0)
    print(name, \"ok\" if r >= 0 else errno.errorcode.get(ctypes.get_errno()), flush=True)
call(\"clone-user\", {clone}, {newuser} | {sigchld}, 0, 0, 0, 0)
args = (ctypes.c_uint64 * 8)({newuser}, 0, 0, 0, {sigchld}, 0, 0, 0)
call(\"clone3-user\", {clone3}, ctypes.addressof(args), 64)
call(\"setns\", {setns}, 0, {newuser})
call(\"keyctl\", {keyctl}, 0, -3, 0)
call(\"bpf\", {bpf}, 0, 0, 0)
call(\"perf_event_open\", {perf}, 0, 0, -1, -1, 0)
call(\"userfaultfd\", {uffd}, 0)
call(\"io_uring_setup\", {uring}, 1, 0)
# Last: where it works, the rest would run in the new namespace.
call(\"unshare-user\", {unshare}, {newuser})
",
        unshare = libc::SYS_unshare,
        clone = libc::SYS_clone,
        clone3 = libc::SYS_clone3,
        setns = libc::SYS_setns,
        keyctl = libc::SYS_keyctl,
        bpf = libc::SYS_bpf,
        perf = libc::SYS_perf_event_open,
        uffd = libc::SYS_userfaultfd,
        uring = libc::SYS_io_uring_setup,
        newuser = libc::CLONE_NEWUSER,
        sigchld = libc::SIGCHLD,
    )
}

/// Parses the probe's lines into (call, answer).
fn answers(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `unshare -r`, `unshare -U`, clone and clone3 with `CLONE_NEWUSER`, and
/// the kernel interfaces of the baseline filter, all fail inside a process
/// task on a host that allows them outside one; ordinary programs
/// (sh, coreutils, python threads, fork and exec) still work there.
#[test]
fn a_process_task_cannot_make_a_user_namespace_or_reach_the_filtered_calls() {
    let s = Server::start();
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if caps["sandbox"]["seccomp"] != true {
        return println!("skipped: this host has no seccomp");
    }
    // Outside a task, as the test's user: the host lets these through, so
    // a refusal inside is the filter's.
    let probe = syscall_probe();
    let outside = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &probe])
        .output()
        .expect("run the probe outside a task");
    let outside = answers(&String::from_utf8_lossy(&outside.stdout));
    let unshared = std::process::Command::new("unshare")
        .args(["-U", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshared
        || outside
            .iter()
            .any(|(c, a)| c.ends_with("-user") && a != "ok")
    {
        return println!("skipped: this host refuses user namespaces anyway ({outside:?})");
    }

    let script = format!(
        "/bin/true && echo true=0
         unshare -r true 2>/dev/null; echo unshare-r=$?
         unshare -U true 2>/dev/null; echo unshare-U=$?
         /usr/bin/python3 -c '{}'
         /usr/bin/python3 -c 'import subprocess, threading, os
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0: os._exit(0)
os.waitpid(pid, 0)
subprocess.run([\"/bin/echo\", \"spawned\"], check=True)' | sort | tr a-z A-Z
         ls / > /dev/null && echo ls=0",
        syscall_probe().replace('\'', "'\\''")
    );
    let id = s.submit(&sh(&script));
    let st = s.wait_terminal(&id, T);
    let out = st["stdout"].as_str().unwrap_or_default();
    println!("outside a task: {outside:?}\ninside: {out}");
    assert_eq!(st["status"], "success", "{st}");
    for want in ["true=0\n", "SPAWNED\n", "ls=0\n"] {
        assert!(out.contains(want), "{want:?} missing: {st}");
    }
    for refused in ["unshare-r=", "unshare-U="] {
        let rc = out
            .lines()
            .find_map(|l| l.strip_prefix(refused))
            .expect(refused);
        assert_ne!(rc, "0", "{refused} succeeded in a process task: {st}");
    }
    let inside = answers(out);
    let answer = |call: &str| -> &str {
        inside
            .iter()
            .find(|(c, _)| c == call)
            .map_or("missing", |(_, a)| a.as_str())
    };
    for call in [
        "unshare-user",
        "clone-user",
        "setns",
        "keyctl",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
    ] {
        assert_eq!(answer(call), "EPERM", "{call}: {st}");
    }
    // clone3's flags are out of the filter's reach: libc falls back to
    // clone, which the filter reads.
    assert_eq!(answer("clone3-user"), "ENOSYS", "{st}");
    // The refusal is the filter's where the host answered otherwise.
    for (call, a) in &outside {
        if a != "EPERM" {
            assert_ne!(answer(call), a.as_str(), "{call}: the same as outside");
        }
    }
}
