#!/usr/bin/env python3
"""Per-task timeline of the bench's latency scenario, from kernel
tracepoints recorded while it runs (see docs/benchmarks.md):

    execgo-runtime-bench --scenarios latency --latency-tasks 3000 > lat.out &
    # once lat.out shows "server: runtime pid R, helper pid H":
    perf record -a -o tl.data \
      -e sched:sched_process_fork -e sched:sched_process_exec \
      -e sched:sched_process_exit \
      -e syscalls:sys_enter_fsync -e syscalls:sys_exit_fsync \
      -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \
      -e syscalls:sys_enter_mkdir -e syscalls:sys_enter_sendto \
      -e syscalls:sys_exit_recvfrom -- sleep 1.5
    perf script -i tl.data | grep -v '^ *perf ' > tl.txt
    timeline.py tl.txt BENCH_PID HELPER_PID

(Leave out read/write tracepoints: perf's own writes would flood them.)

One iteration starts at the bench's POST (a 144-byte sendto from the
bench's main thread; its status GETs are 128 bytes) and ends at the last
answer the bench received before its next POST (the terminal status). The
runtime's database work is recognised by its thread name (`sqlite`), the
Launch frame by its size (0x66_ bytes for a /bin/true task), the
intermediate, shim and task by the forks that follow the helper's.
"""
import re
import statistics
import sys

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def load(path):
    out = []
    for line in open(path):
        m = LINE.match(line)
        if m:
            comm, tid, _cpu, ts, name, rest = m.groups()
            out.append((float(ts) * 1000.0, comm.strip(), int(tid), name, rest))
    return out


def child(e):
    return int(re.search(r"child_pid=(\d+)", e[4]).group(1))


def iteration(w, helper, bench, end):
    def first(pred):
        return next((e for e in w if pred(e)), None)

    def by(pid, name):
        return first(lambda e: e[2] == pid and e[3] == name)

    mkdir = first(lambda e: e[1] == "sqlite" and "mkdir" in e[3])
    fsync = first(lambda e: e[1] == "sqlite" and e[3] == "syscalls:sys_enter_fsync")
    fsynced = first(lambda e: e[1] == "sqlite" and e[3] == "syscalls:sys_exit_fsync")
    launch = first(lambda e: e[3] == "syscalls:sys_enter_sendto" and "len: 0x0000066" in e[4])
    hfork = by(helper, "sched:sched_process_fork")
    if None in (mkdir, fsync, fsynced, launch, hfork):
        return None
    sfork = by(child(hfork), "sched:sched_process_fork")
    if sfork is None:
        return None
    shim = child(sfork)
    claim, claimed = by(shim, "syscalls:sys_enter_fsync"), by(shim, "syscalls:sys_exit_fsync")
    tfork = by(shim, "sched:sched_process_fork")
    if None in (claim, claimed, tfork):
        return None
    task = child(tfork)
    exec_, texit = by(task, "sched:sched_process_exec"), by(task, "sched:sched_process_exit")
    sync, synced = by(shim, "syscalls:sys_enter_fdatasync"), by(shim, "syscalls:sys_exit_fdatasync")
    sexit = by(shim, "sched:sched_process_exit")
    if None in (exec_, texit, sync, synced, sexit):
        return None
    answers = [e for e in w if e[2] == bench and e[3] == "syscalls:sys_exit_recvfrom"
               and not e[4].startswith("0xfff")]
    seen = answers[-1][0] if answers else end
    points = [
        ("POST sent -> task dir mkdir (HTTP, validate, plan, to the db thread)", w[0][0], mkdir[0]),
        ("mkdir -> submit commit fsync (files, row, events)", mkdir[0], fsync[0]),
        ("submit commit fsync", fsync[0], fsynced[0]),
        ("fsync -> Launch sent (answer, dispatch pass, launch record, spec)", fsynced[0], launch[0]),
        ("Launch sent -> helper forks the intermediate", launch[0], hfork[0]),
        ("intermediate forks the shim", hfork[0], sfork[0]),
        ("shim start -> claim fsync (stat, setsid, claim, result temp)", sfork[0], claim[0]),
        ("claim fsync (directory)", claim[0], claimed[0]),
        ("claim -> task fork (FIFO, workspace, stdio, resolve, signalfd)", claimed[0], tfork[0]),
        ("task fork -> exec", tfork[0], exec_[0]),
        ("/bin/true runs", exec_[0], texit[0]),
        ("task exit -> result fdatasync (reap, logs, encode, write)", texit[0], sync[0]),
        ("result fdatasync", sync[0], synced[0]),
        ("fdatasync -> shim exit", synced[0], sexit[0]),
        ("shim exit -> terminal status seen (pidfd, finalize, next poll)", sexit[0], seen),
        ("total, POST sent -> terminal seen", w[0][0], seen),
    ]
    return [(name, b - a) for name, a, b in points]


def main():
    events = load(sys.argv[1])
    bench, helper = int(sys.argv[2]), int(sys.argv[3])
    posts = [i for i, e in enumerate(events) if e[2] == bench
             and e[3] == "syscalls:sys_enter_sendto" and "len: 0x00000090" in e[4]]
    rows = []
    for i, j in zip(posts, posts[1:]):
        r = iteration(events[i:j], helper, bench, events[j][0])
        if r:
            rows.append(r)
    if not rows:
        sys.exit("no complete iteration found")
    print(f"{len(rows)} tasks")
    print("| # | stage | mean ms | p50 ms |")
    print("|---|---|---|---|")
    for k, (name, _) in enumerate(rows[0]):
        v = [r[k][1] for r in rows]
        print(f"| {k + 1} | {name} | {statistics.mean(v):.3f} | {statistics.median(v):.3f} |")


if __name__ == "__main__":
    main()
