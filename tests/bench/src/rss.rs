//! Resident memory: the runtime and its embedded helper idle, and the
//! shims of running tasks, next to a directly started `sleep`.
//!
//! Measured with address-space randomisation off (personality
//! `ADDR_NO_RANDOMIZE`, inherited by everything started meanwhile): a
//! fault maps the 64 KiB around it, so where the code lands decides how
//! many windows a process keeps resident, and randomised runs vary by
//! ±0.15 MiB.

use std::time::Duration;

use execgo_runtime_tests::json;

use crate::baseline;
use crate::client::{is_running, Client};
use crate::env::{Env, Row};
use crate::procfs::{self, mib, Rss};
use crate::stats::Stats;

pub fn run(env: &Env, shims: usize) {
    use nix::sys::personality::{self, Persona};
    println!();
    println!("RSS: runtime and helper idle, {shims} shims of running sleep tasks");
    let before = personality::get().ok();
    let fixed = before.and_then(|p| personality::set(p | Persona::ADDR_NO_RANDOMIZE).ok());
    println!(
        "  address-space randomisation: {}",
        if fixed.is_some() {
            "off for this scenario"
        } else {
            "on (could not turn it off)"
        }
    );
    measure(env, shims);
    if let Some(p) = before {
        let _ = personality::set(p);
    }
}

fn measure(env: &Env, shims: usize) {
    // Every shim must run at once (the default is 4 running tasks).
    let s = env.server(
        "rss",
        &["--max-running-tasks".into(), shims.max(4).to_string()],
    );
    let c = Client::new(&s.base);
    // Idle after start-up and one status round trip.
    std::thread::sleep(Duration::from_millis(500));
    let runtime = procfs::rss(s.pid()).expect("runtime /proc status");
    let helper_pid = s.helper_pid().expect("embedded helper");
    let helper = procfs::rss(helper_pid).expect("helper /proc status");
    let mut direct = baseline::spawn_sleep(30);
    std::thread::sleep(Duration::from_millis(100));
    let sleep_rss = procfs::rss(direct.id() as i32).expect("sleep /proc status");
    baseline::sigterm(&direct);
    let _ = direct.wait();

    let body = json!({"execution": {"kind": "command", "program": "sleep", "args": ["30"]}});
    let ids: Vec<String> = (0..shims).map(|_| c.submit(&body)).collect();
    let mut shim_rss: Vec<Rss> = vec![];
    let mut task_rss: Vec<Rss> = vec![];
    for id in &ids {
        let (st, _) = c.wait_for(id, Duration::from_millis(1), is_running);
        std::thread::sleep(Duration::from_millis(50));
        let shim_pid = st["shim_pid"].as_i64().expect("shim_pid") as i32;
        shim_rss.push(procfs::rss(shim_pid).expect("shim /proc status"));
        if let Some(pid) = st["pid"].as_i64() {
            if let Some(r) = procfs::rss(pid as i32) {
                task_rss.push(r);
            }
        }
    }
    let runtime_busy = procfs::rss(s.pid()).expect("runtime /proc status");
    let helper_busy = procfs::rss(helper_pid).expect("helper /proc status");
    for id in &ids {
        c.kill(id);
    }
    for id in &ids {
        c.wait_terminal(id, Duration::from_millis(2));
    }

    println!("{}", sleep_rss.line("baseline: a direct `sleep 30`"));
    println!("{}", runtime.line("runtime idle"));
    println!("{}", helper.line("helper idle"));
    if let Some(first) = shim_rss.first() {
        println!("{}", first.line("shim (first of the tasks)"));
    }
    let shim = Stats::of(shim_rss.iter().map(|r| mib(r.vm_rss)).collect());
    println!(
        "  shim VmRSS over {} shims: p50 {:.2} MiB, max {:.2} MiB; Pss p50 {:.2} MiB",
        shim.n,
        shim.p50,
        shim.max,
        Stats::of(shim_rss.iter().filter_map(|r| r.pss).map(mib).collect()).p50
    );
    if let Some(t) = task_rss.first() {
        println!("{}", t.line("the task's own sleep"));
    }
    println!(
        "{}",
        runtime_busy.line(&format!("runtime, {shims} tasks running"))
    );
    println!(
        "{}",
        helper_busy.line(&format!("helper, {shims} tasks running"))
    );

    let rows = [
        ("runtime idle", mib(runtime.vm_rss), 20.0),
        ("helper idle", mib(helper.vm_rss), 5.0),
        ("shim (p50)", shim.p50, 2.0),
    ];
    for (what, v, target) in rows {
        env.row(Row {
            figure: format!("RSS {what}"),
            measured: format!("{v:.2} MiB"),
            baseline: format!("{:.2} MiB `sleep`", mib(sleep_rss.vm_rss)),
            ratio: format!("{:.1}x", v / mib(sleep_rss.vm_rss)),
            target: format!("<= {target} MiB"),
            met: Some(v <= target),
        });
    }
}
