//! The `linux_sandbox` profile through the real binaries, as root: what a
//! task sees and may do inside it, and that its limits hold.

use std::time::Duration;

use execgo_runtime_tests::*;

const T: Duration = Duration::from_secs(30);

/// A runtime that offers linux_sandbox, or why the test is skipped.
fn sandbox_server() -> Result<Server, &'static str> {
    if !is_root() {
        return Err("linux_sandbox needs a root helper");
    }
    let s = Server::start();
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if caps["sandbox"]["linux_sandbox"] != true {
        return Err("this host does not offer linux_sandbox");
    }
    Ok(s)
}

fn sandboxed(script: &str, extra: Value) -> Value {
    let mut body = sh(script);
    body["sandbox"] = json!({"profile": "linux_sandbox"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k == "namespaces" {
                body["sandbox"]["namespaces"] = v;
            } else {
                body[k] = v;
            }
        }
    }
    body
}

#[test]
fn a_sandboxed_task_sees_only_itself_and_can_change_nothing_of_the_host() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let marker = format!("execgo-sandbox-tmp-{}", std::process::id());
    let script = format!(
        "grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
         echo pids $(ls /proc | grep -c '^[0-9]')
         echo host $(hostname)
         mount -t tmpfs t /mnt 2>/dev/null && echo mounted || echo mount-refused
         unshare -r true 2>/dev/null && echo unshared || echo unshare-refused
         touch /etc/execgo-probe 2>/dev/null && echo etc-written || echo etc-read-only
         echo data > written && cat written
         echo x > /tmp/{marker} && echo tmp-written
         ls /proc/self/fd > fds
         echo fds $(tr '\\n' ' ' < fds)"
    );
    let id = s.submit(&sandboxed(&script, json!({})));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "host execgo-sandbox",
        "mount-refused",
        "unshare-refused",
        "etc-read-only",
        "data\n",
        "tmp-written",
        "fds 0 1 2 3\n",
    ] {
        assert!(out.contains(want), "{want:?} missing: {out}");
    }
    let uid = st["task_uid"].as_u64().expect("task_uid");
    assert!(out.contains(&format!("Uid:\t{uid}\t")), "{out}");
    // Its own processes only: init, the shell and what it runs.
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pids <= 6, "{pids} pids visible: {out}");
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "/tmp is not private"
    );
    let plan = &st["execution_plan"];
    assert_eq!(
        plan["effective_sandbox"]["profile"], "linux_sandbox",
        "{plan}"
    );
    assert_eq!(plan["degraded"], false, "{plan}");
}

#[test]
fn a_network_namespace_has_only_a_working_loopback() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
        /usr/bin/python3 -c '
import socket
l = socket.socket(); l.bind((\"127.0.0.1\", 0)); l.listen()
c = socket.create_connection(l.getsockname(), timeout=5)
print(\"loopback-works\")'";
    let ns = json!({"namespaces": {"net": true}});
    // The first launch clones its namespace; the helper then keeps a spare
    // ready, which later ones join. Each must still be fresh, with only a
    // working `lo`, never the host's, and never shared: the second and
    // third run at the same time (a namespace's inode number can be reused
    // only once it is gone), the second surely on the spare.
    let script =
        format!("{script}\necho fds $(ls /proc/self/fd)\nreadlink /proc/self/ns/net; sleep 1");
    let host = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let host = host.display().to_string();
    let check = |st: &Value| -> String {
        let out = st["stdout"].as_str().unwrap_or_default();
        let (checks, ns_name) = out.trim_end().rsplit_once('\n').unwrap_or((out, ""));
        // No descriptor of the namespace (nor any other) reaches the task:
        // the command substitution's ls sees its stdio and its directory.
        assert_eq!(checks, "lo\nloopback-works\nfds 0 1 2 3", "{st}");
        assert!(ns_name.starts_with("net:["), "{st}");
        assert_ne!(ns_name, host, "the host's namespace: {st}");
        ns_name.to_string()
    };
    let first = s.submit(&sandboxed(&script, ns.clone()));
    check(&s.wait_terminal(&first, T));
    let both = [
        s.submit(&sandboxed(&script, ns.clone())),
        s.submit(&sandboxed(&script, ns)),
    ];
    let names: Vec<String> = both
        .iter()
        .map(|id| check(&s.wait_terminal(id, T)))
        .collect();
    assert_ne!(names[0], names[1], "two running tasks shared a namespace");
}

#[test]
fn the_memory_limit_ends_a_task_that_exceeds_it() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let script = "exec /usr/bin/python3 -c 'b = bytearray(256 * 1024 * 1024); print(len(b))'";
    let limit: u64 = 64 * 1024 * 1024;
    let id = s.submit(&sandboxed(
        script,
        json!({"limits": {"memory_bytes": limit}}),
    ));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["error"]["code"], "memory_limit_exceeded", "{st}");
    let peak = st["usage"]["memory_peak_bytes"].as_u64().expect("peak");
    assert!(
        peak > limit / 2 && peak <= limit + (1 << 20),
        "peak {peak}: {st}"
    );
}

#[test]
fn a_fork_bomb_is_held_at_the_pids_limit() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let script = "exec /usr/bin/python3 -c '
import os, time
n = 0
for i in range(200):
    try:
        if os.fork() == 0:
            time.sleep(5); os._exit(0)
        n += 1
    except OSError:
        break
print(n)'";
    let id = s.submit(&sandboxed(
        script,
        json!({"limits": {"pids_max": 16, "wall_time_ms": 20000}}),
    ));
    let st = s.wait_terminal(&id, T);
    let forked: u32 = st["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .expect("a count");
    // init and python hold two of the sixteen.
    assert!(forked <= 14, "{forked} forks under pids_max 16: {st}");
    assert!(forked >= 10, "{st}");
}

#[test]
fn a_sandboxed_task_times_out_and_its_namespace_dies() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let script = "setsid sleep 300 & sleep 300";
    let id = s.submit(&sandboxed(
        script,
        json!({"limits": {"wall_time_ms": 1000}}),
    ));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["error"]["code"], "timeout", "{st}");
    let needle = s.task_dir(&id);
    assert!(pids_mentioning(needle.to_str().unwrap()).is_empty());
}

#[test]
fn a_sandboxed_task_ends_with_its_main_process_with_the_namespaces_usage() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    // A marker in the sleeper's command line finds it if it survived.
    let marker = format!("300.{}", std::process::id());
    let script = format!(
        "sleep {marker} & \
         sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; exit 3"
    );
    let id = s.submit(&sandboxed(&script, json!({})));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit_code"], 3, "{st}");
    // The busy loop ran in a grandchild of the namespace's init: its CPU
    // time is the task's.
    let cpu = st["usage"]["user_cpu_ms"].as_u64().unwrap_or(0)
        + st["usage"]["system_cpu_ms"].as_u64().unwrap_or(0);
    assert!(cpu > 50, "{st}");
    assert!(
        pids_mentioning(&marker).is_empty(),
        "the background sleep survived"
    );
}

#[test]
fn a_cpu_quota_holds_a_busy_task_to_its_share() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if caps["resources"]["cpu_quota"] != true {
        return println!("skipped: no cgroup cpu controller for task cgroups");
    }
    // A tenth of a CPU for 1.5 s of wall time: ~150 ms of CPU, far from
    // the 1500 ms the loop would take unthrottled.
    let script = "sh -c 'while :; do :; done' & p=$!; sleep 1.5; kill $p; wait $p; exit 0";
    let id = s.submit(&sandboxed(
        script,
        json!({"limits": {"cpu_millis": 100}, "policy": {"capability_mode": "strict"}}),
    ));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let plan = &st["execution_plan"]["resource_enforcement"];
    assert_eq!(plan["cpu_millis"], 100, "{st}");
    assert_eq!(plan["cpu_quota_enforced"], true, "{st}");
    let cpu = st["usage"]["user_cpu_ms"].as_u64().unwrap_or(0)
        + st["usage"]["system_cpu_ms"].as_u64().unwrap_or(0);
    assert!((50..600).contains(&cpu), "cpu {cpu} ms: {st}");
    // Out of range: refused at submit, nothing stored.
    let r = s.post(
        "/api/v1/tasks",
        &sandboxed(
            "true",
            json!({"task_id": "cpu-bad", "limits": {"cpu_millis": 5}}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "invalid_input", "{}", r.text);
    assert_eq!(s.get("/api/v1/tasks/cpu-bad").status, 404);
}

#[test]
fn a_rootfs_outside_the_allowlist_is_refused_and_one_without_chroot_dropped() {
    let s = match sandbox_server() {
        Ok(s) => s,
        Err(why) => return println!("skipped: {why}"),
    };
    // No --rootfs-dir at all: every rootfs is outside.
    let mut body = sandboxed("true", json!({}));
    body["sandbox"]["rootfs"] = json!("/srv/rootfs");
    body["sandbox"]["chroot"] = json!(true);
    let r = s.post("/api/v1/tasks", &body);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "invalid_input");
    assert!(r.text.contains("--rootfs-dir"), "{}", r.text);
    body["sandbox"]["chroot"] = json!(false);
    let id = s.submit(&body);
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let plan = &st["execution_plan"];
    assert_eq!(plan["degraded"], true, "{plan}");
    assert!(plan["effective_sandbox"].get("rootfs").is_none(), "{plan}");
}

/// A minimal root file system in `dir`: sh, cat and ls with their
/// libraries (as `ldd` lists them), and the mount points the sandbox needs.
fn make_rootfs(dir: &std::path::Path) {
    for d in ["bin", "workspace", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for bin in ["/bin/sh", "/bin/cat", "/bin/ls"] {
        let real = std::fs::canonicalize(bin).unwrap();
        std::fs::copy(&real, dir.join(&bin[1..])).unwrap();
        let ldd = std::process::Command::new("ldd")
            .arg(&real)
            .output()
            .unwrap();
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let to = dir.join(&lib[1..]);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap();
        }
    }
    std::fs::write(dir.join("etc/release"), "execgo test rootfs\n").unwrap();
}

#[test]
fn a_rootfs_inside_an_allowed_dir_becomes_the_tasks_root() {
    if !is_root() {
        return println!("skipped: linux_sandbox needs a root helper");
    }
    let allowed = tempdir();
    make_rootfs(&allowed.path().join("tiny"));
    // Escapes: a symlink on the way, and a path outside the allowed dir.
    std::os::unix::fs::symlink(allowed.path().join("tiny"), allowed.path().join("link")).unwrap();
    let s = Server::builder()
        .arg("--rootfs-dir")
        .arg(allowed.path().to_str().unwrap())
        .start();
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if caps["sandbox"]["linux_sandbox"] != true {
        return println!("skipped: this host does not offer linux_sandbox");
    }
    let root = |path: &str, script: &str| {
        let mut body = sandboxed(script, json!({}));
        body["sandbox"]["rootfs"] = json!(path);
        body["sandbox"]["chroot"] = json!(true);
        body["policy"] = json!({"capability_mode": "strict"});
        body
    };
    let tiny = allowed.path().join("tiny");
    let id = s.submit(&root(
        tiny.to_str().unwrap(),
        "cat /etc/release; pwd; ls /dev; echo hi > f && cat f; ls /tmp; ls /",
    ));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["status"], "success", "{st}");
    let out = st["stdout"].as_str().unwrap();
    assert!(out.starts_with("execgo test rootfs\n/workspace\n"), "{out}");
    assert!(
        out.contains("full\nnull\nrandom\ntty\nurandom\nzero\n"),
        "a minimal /dev: {out}"
    );
    assert!(out.contains("hi\n"), "{out}");
    assert!(
        s.task_dir(&id).join("workspace/f").exists(),
        "the workspace is the task's"
    );
    // Outside the allowed dir, or with `..`: refused at submit.
    for bad in ["/etc", &format!("{}/../x", allowed.path().display())] {
        let r = s.post("/api/v1/tasks", &root(bad, "true"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.code(), "invalid_input", "{bad}");
    }
    // A symlink on the way: the helper refuses to follow it.
    let link = allowed.path().join("link");
    let id = s.submit(&root(link.to_str().unwrap(), "true"));
    let st = s.wait_terminal(&id, T);
    assert_eq!(st["error"]["code"], "sandbox_setup_failed", "{st}");
}
