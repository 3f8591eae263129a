//! CPU time per task: the runtime, its helper, this client, and the whole
//! machine (which also covers shims, tasks and kernel threads, which are
//! nobody's children we can read), from /proc in clock ticks. The whole
//! tree's CPU without the rest of the machine is `tree_cpu`'s figure.

/// USER_HZ, the unit of /proc/*/stat and /proc/stat times; 100 on every
/// Linux ABI this runs on.
const TICK_MS: f64 = 10.0;

/// utime + stime of a process (all its threads, dead ones included), and
/// cutime + cstime (its waited-for children).
fn proc_ticks2(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14-17 of proc_pid_stat(5), counted after the command name.
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

fn proc_ticks(pid: i32) -> Option<u64> {
    proc_ticks2(pid).map(|t| t.0)
}

/// (busy, idle, iowait) of all CPUs from /proc/stat.
fn system_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, get(3), get(4))
}

#[derive(Clone, Copy)]
pub struct Snapshot {
    runtime: u64,
    helper: u64,
    client: u64,
    /// The client's own children: the baselines' processes.
    baselines: u64,
    busy: u64,
    idle: u64,
    iowait: u64,
}

pub fn snapshot(runtime: i32, helper: Option<i32>) -> Snapshot {
    let (busy, idle, iowait) = system_ticks();
    let (client, baselines) = proc_ticks2(std::process::id() as i32).unwrap_or((0, 0));
    Snapshot {
        runtime: proc_ticks(runtime).unwrap_or(0),
        helper: helper.and_then(proc_ticks).unwrap_or(0),
        client,
        baselines,
        busy,
        idle,
        iowait,
    }
}

/// `cpu per task: runtime … ms, helper …, client …, machine busy … (rest …),
/// idle …%, iowait …%` between two snapshots; the CPU of baseline processes
/// the client ran in between is left out of "machine busy".
pub fn per_task(a: &Snapshot, b: &Snapshot, tasks: usize) -> String {
    let per = |x: u64, y: u64| (y.saturating_sub(x)) as f64 * TICK_MS / tasks.max(1) as f64;
    let runtime = per(a.runtime, b.runtime);
    let helper = per(a.helper, b.helper);
    let client = per(a.client, b.client);
    let baselines = per(a.baselines, b.baselines);
    let busy = per(a.busy, b.busy) - baselines;
    let idle = b.idle.saturating_sub(a.idle) as f64;
    let iowait = b.iowait.saturating_sub(a.iowait) as f64;
    let all = b.busy.saturating_sub(a.busy) as f64 + idle + iowait;
    let pct = |x: f64| if all > 0.0 { 100.0 * x / all } else { 0.0 };
    format!(
        "  cpu per task (10 ms ticks): runtime {runtime:.3} ms, helper {helper:.3} ms, bench client {client:.3} ms; \
         machine busy {busy:.3} ms (shims, tasks, kernel: {:.3} ms); idle {:.0}%, iowait {:.0}%",
        (busy - runtime - helper - client).max(0.0),
        pct(idle),
        pct(iowait)
    )
}
