//! Submit → terminal latency of `/bin/true` in the `linux_sandbox` profile
//! with all five namespaces (pid, mount, uts, ipc, net), one task at a
//! time, against `bwrap` running `/bin/true` in the same namespaces, and
//! against a bare fork/exec + wait, all interleaved in the same run. The
//! measurement is the latency scenario's ([`latency::sequential`]).
//!
//! Two bwrap command lines are timed. The target's baseline does what the
//! runtime's sandbox child does: the host root read-only (devices usable,
//! as in the runtime, which sets only `MOUNT_ATTR_RDONLY`), the workspace
//! writable and the working directory, a tmpfs on `/tmp`, a fresh `/proc`,
//! a hostname, no capabilities. The other is the command as
//! written (a fresh `/dev` instead of the host's). Neither switches uid,
//! loads a seccomp filter or joins cgroups, which the runtime does. The
//! target's bwrap line is also timed with the durable writes the design
//! requires around every task done in line ([`Durable`]): bwrap writes
//! nothing durable, so on a disk that line is what the runtime's launch
//! would cost if its own machinery were free.

use execgo_runtime_tests::{is_root, json, Value};

use crate::client::Client;
use crate::durable::Durable;
use crate::env::{Env, Row, WaitBy};
use crate::stats::ratio;
use crate::{baseline, latency, tree_cpu};

const NAMESPACES: [&str; 5] = ["pid", "mount", "uts", "ipc", "net"];

/// The hostname the runtime gives a sandbox (helper `sys/sandbox.rs`).
const HOSTNAME: &str = "execgo-sandbox";

/// `bwrap` with the runtime's set-up around `/bin/true` (see the header).
fn bwrap_like_runtime(bwrap: &str, workspace: &str) -> Vec<String> {
    let mut v = vec![bwrap];
    v.extend([
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-ipc",
        "--unshare-net",
        "--ro-bind",
        "/",
        "/",
        // --ro-bind mounts nodev; the runtime's read-only root keeps the
        // host's device nodes usable.
        "--dev-bind",
        "/dev",
        "/dev",
        "--remount-ro",
        "/dev",
        "--bind",
        workspace,
        workspace,
        "--tmpfs",
        "/tmp",
        "--proc",
        "/proc",
        "--hostname",
        HOSTNAME,
        "--chdir",
        workspace,
        "--cap-drop",
        "ALL",
        "/bin/true",
    ]);
    v.into_iter().map(String::from).collect()
}

/// The command line.
fn bwrap_as_issued(bwrap: &str) -> Vec<String> {
    let mut v = vec![bwrap];
    v.extend([
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-ipc",
        "--unshare-net",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        "/bin/true",
    ]);
    v.into_iter().map(String::from).collect()
}

/// `name` found in `PATH`.
fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
}

/// Why the runtime cannot run the scenario's tasks, from its capabilities.
fn missing(caps: &Value) -> Option<String> {
    let sb = &caps["sandbox"];
    if sb["linux_sandbox"] != true {
        return Some(format!(
            "the runtime's capabilities say sandbox.linux_sandbox = {}{}",
            sb["linux_sandbox"],
            match caps["warnings"].as_array() {
                Some(w) if !w.is_empty() => format!(" (warnings: {})", Value::from(w.clone())),
                _ => String::new(),
            }
        ));
    }
    let off: Vec<&str> = NAMESPACES
        .into_iter()
        .filter(|ns| sb["namespaces"][ns] != true)
        .collect();
    (!off.is_empty()).then(|| {
        format!(
            "the runtime's capabilities lack namespaces {}",
            off.join(", ")
        )
    })
}

fn skip(why: &str) {
    println!("  skipped: {why}");
}

pub fn run(env: &Env, n: usize) {
    println!();
    println!(
        "submit->terminal latency of /bin/true in linux_sandbox (pid, mount, uts, ipc, net \
         namespaces; {n} sequential tasks) against bwrap"
    );
    if !is_root() {
        return skip("linux_sandbox needs a root helper; run the bench as root");
    }
    let Some(bwrap) = which("bwrap") else {
        return skip("bwrap is not installed (Debian package bubblewrap)");
    };
    let workspace = env.root.join("sandbox-bwrap-workspace");
    if let Err(e) = std::fs::create_dir_all(&workspace) {
        return skip(&format!("creating {}: {e}", workspace.display()));
    }
    let ws = workspace.display().to_string();
    let like = bwrap_like_runtime(&bwrap, &ws);
    let issued = bwrap_as_issued(&bwrap);
    for argv in [&like, &issued] {
        if let Err(e) = try_once(argv) {
            return skip(&format!("{} does not work here: {e}", argv.join(" ")));
        }
    }
    let s = env.server("sandbox", &[]);
    let caps = s.get("/api/v1/runtime/capabilities").json();
    if let Some(why) = missing(&caps) {
        return skip(&why);
    }
    let c = Client::new(&s.base);
    // Strict: a host that cannot give the profile refuses the task instead
    // of running it as a plain process.
    let body = json!({
        "execution": {"kind": "command", "program": "/bin/true"},
        "sandbox": {
            "profile": "linux_sandbox",
            "namespaces": {"mount": true, "pid": true, "uts": true, "ipc": true, "net": true},
        },
        "policy": {"capability_mode": "strict"},
    });
    let first = c.submit(&body);
    let (st, _) = c.wait_terminal(&first, env.poll);
    let plan = &st["execution_plan"];
    if st["status"] != "success" || plan["effective_sandbox"]["profile"] != "linux_sandbox" {
        return skip(&format!(
            "a first sandboxed /bin/true did not run sandboxed: {st}"
        ));
    }
    println!("  bwrap (target's baseline): {}", like.join(" "));
    println!("  bwrap (as in the issue):   {}", issued.join(" "));
    // bwrap is waited for: the runtime's end is followed too, unless
    // --wait says otherwise (status polls are requests the runtime answers
    // on the CPUs the launch needs).
    let wait = env.wait_or(WaitBy::Events);
    println!("  task ends seen by: {wait:?}");
    // Beside the data dir, on the same file system.
    let mut durable = match Durable::new(env.root.join("sandbox-durable-baseline")) {
        Ok(d) => d,
        Err(e) => return skip(&format!("the durable baseline's directory: {e}")),
    };
    let seq = latency::sequential(
        env,
        &s,
        &c,
        &body,
        n,
        wait,
        &mut [
            &mut baseline::true_once,
            &mut || baseline::command_once(&like),
            &mut || baseline::command_once(&issued),
            &mut || durable.around(&mut || baseline::command_once(&like)),
        ],
    );
    let (bare, bw, bw_issued) = (seq.baseline(0), seq.baseline(1), seq.baseline(2));
    let bw_durable = seq.baseline(3);
    let rt = seq.stats();
    println!("{}", bare.line("baseline fork/exec+wait"));
    println!("{}", bw.line("bwrap /bin/true (runtime's set-up)"));
    println!("{}", bw_issued.line("bwrap /bin/true (issue's command)"));
    println!(
        "{}",
        bw_durable.line("bwrap /bin/true with the design's durable writes in line")
    );
    seq.print_tasks("execgo-runtime linux_sandbox");
    let r = ratio(rt.p50, bw.p50);
    let r_issued = ratio(rt.p50, bw_issued.p50);
    let r_bare = ratio(rt.p50, bare.p50);
    let r_durable = ratio(rt.p50, bw_durable.p50);
    println!(
        "  ratio p50 {r:.2}x bwrap (target <= 1.0x); {r_issued:.2}x the issue's bwrap; \
         {r_durable:.2}x bwrap with the durable writes; {r_bare:.1}x a bare fork/exec+wait"
    );
    // The tree's CPU per task against the same number of bwrap runs, and
    // of bare fork/execs, each loop alone in a cgroup of its own.
    let tree = tree_cpu::Figure::new(
        env,
        seq.tree.clone(),
        tree_cpu::bare_command(env, n, &like),
        1,
    )
    .against("bwrap /bin/true (runtime's set-up)", "bwrap");
    let less_polls = seq.print_cpu(&tree);
    let vs_bare = tree_cpu::Figure::new(env, seq.tree.clone(), tree_cpu::bare_true(env, n, 1), 1);
    println!("{}", vs_bare.line());
    env.row(Row {
        figure: "linux_sandbox /bin/true p50 (p90, max)".into(),
        measured: format!("{:.2} ms ({:.2}, {:.2})", rt.p50, rt.p90, rt.max),
        baseline: format!("{:.3} ms bwrap", bw.p50),
        ratio: format!("{r:.2}x"),
        target: "<= 1.0x bwrap".into(),
        met: Some(r <= 1.0),
    });
    env.row(Row {
        figure: "linux_sandbox /bin/true p50, other baselines".into(),
        measured: format!("{:.2} ms", rt.p50),
        baseline: format!(
            "{:.3} ms issue's bwrap; {:.3} ms bwrap + durable writes; {:.3} ms fork/exec+wait",
            bw_issued.p50, bw_durable.p50, bare.p50
        ),
        ratio: format!("{r_issued:.2}x; {r_durable:.2}x; {r_bare:.1}x"),
        target: "-".into(),
        met: None,
    });
    env.row(tree.row("cpu per task, whole tree (sandbox)".into()));
    env.row(less_polls.row("cpu per task, whole tree, less status polls (sandbox)".into()));
    env.row(vs_bare.row("cpu per task, whole tree (sandbox) vs fork/exec".into()));
    latency::stages(&c, &seq.samples);
}

/// One run of `argv`, or what it printed when it failed.
fn try_once(argv: &[String]) -> Result<(), String> {
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        let all = json!({"sandbox": {"linux_sandbox": true, "namespaces":
            {"pid": true, "mount": true, "uts": true, "ipc": true, "net": true}}});
        assert_eq!(missing(&all), None);
        let mut no_net = all.clone();
        no_net["sandbox"]["namespaces"]["net"] = json!(false);
        assert_eq!(
            missing(&no_net).as_deref(),
            Some("the runtime's capabilities lack namespaces net")
        );
        let off = json!({"sandbox": {"linux_sandbox": false}, "warnings": ["x"]});
        assert!(missing(&off)
            .unwrap()
            .contains("= false (warnings: [\"x\"])"));
    }

    #[test]
    fn both_bwrap_lines_run_true_in_the_five_namespaces() {
        for argv in [bwrap_like_runtime("bwrap", "/w"), bwrap_as_issued("bwrap")] {
            for flag in [
                "--unshare-pid",
                "--unshare-uts",
                "--unshare-ipc",
                "--unshare-net",
            ] {
                assert!(argv.iter().any(|a| a == flag), "{argv:?}");
            }
            assert_eq!(argv.last().map(String::as_str), Some("/bin/true"));
        }
    }
}
