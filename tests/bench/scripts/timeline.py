#!/usr/bin/env python3
"""Per-task timeline of the bench's latency scenario, from kernel
tracepoints recorded while it runs (see docs/benchmarks.md):

    execgo-runtime-bench --scenarios latency --latency-tasks 2000 &
    # note the bench pid and the printed helper pid, then:
    perf record -a -o tl.data \
      -e sched:sched_process_fork -e sched:sched_process_exec \
      -e sched:sched_process_exit \
      -e syscalls:sys_enter_fsync -e syscalls:sys_exit_fsync \
      -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \
      -e syscalls:sys_enter_mkdir -e syscalls:sys_enter_sendto \
      -e syscalls:sys_exit_recvfrom \
      -e syscalls:sys_enter_write --filter 'fd == 2' \
      -e syscalls:sys_enter_pidfd_open -- sleep 2
    perf script -i tl.data > tl.txt
    timeline.py tl.txt BENCH_PID HELPER_PID

One iteration starts at the bench's POST (a 144-byte header sendto; a
GET is 128 bytes). The runtime is recognised by its thread names
(`execgo-runtime`, `tokio-runtime-w`); the helper by its pid, the
intermediate, shim and task by the forks that follow. The byte counts
(the 0x661-byte Launch frame, the 0xe6-byte submit answer, the ~0x640-byte
terminal status body) are those of /bin/true tasks with generated UUIDs.
"""
import re
import statistics
import sys

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
TERMINAL_BODY = ("0x63e", "0x63f", "0x640", "0x641")


def load(path):
    out = []
    for line in open(path):
        m = LINE.match(line)
        if m:
            comm, tid, ts, name, rest = m.groups()
            out.append((float(ts) * 1000.0, comm.strip(), int(tid), name, rest))
    return out


def is_runtime(e):
    return e[1] in ("execgo-runtime", "tokio-runtime-w")


def child(e):
    return int(re.search(r"child_pid=(\d+)", e[4]).group(1))


def main():
    events = load(sys.argv[1])
    bench, helper = int(sys.argv[2]), int(sys.argv[3])
    iters, cur = [], None
    for e in events:
        if e[2] == bench and e[3] == "syscalls:sys_enter_sendto" and "len: 0x00000090" in e[4]:
            if cur:
                iters.append(cur)
            cur = (e[0], [])
        elif cur:
            cur[1].append(e)
    if cur:
        iters.append(cur)

    stages = {}
    for t0, evs in iters:
        def first(pred, after=t0):
            return next((e for e in evs if e[0] >= after and pred(e)), None)

        answer = first(lambda e: e[2] == bench and e[3] == "syscalls:sys_exit_recvfrom" and e[4].strip() == "0xe6")
        mkdir = first(lambda e: is_runtime(e) and e[3] == "syscalls:sys_enter_mkdir")
        sync_in = first(lambda e: is_runtime(e) and e[3] in ("syscalls:sys_enter_fsync", "syscalls:sys_enter_fdatasync"))
        sync_out = first(lambda e: is_runtime(e) and e[3] in ("syscalls:sys_exit_fsync", "syscalls:sys_exit_fdatasync"))
        launch = first(lambda e: is_runtime(e) and e[3] == "syscalls:sys_enter_sendto" and "len: 0x00000661" in e[4])
        hfork = first(lambda e: e[2] == helper and e[3] == "sched:sched_process_fork")
        if not all((answer, mkdir, sync_in, sync_out, launch, hfork)):
            continue
        inter = child(hfork)
        sfork = first(lambda e: e[2] == inter and e[3] == "sched:sched_process_fork")
        if not sfork:
            continue
        shim = child(sfork)
        mine = [e for e in evs if e[2] == shim]
        syncs = [e[0] for e in mine if e[3] in ("syscalls:sys_enter_fsync", "syscalls:sys_exit_fsync")]
        tfork = next((e for e in mine if e[3] == "sched:sched_process_fork"), None)
        if not tfork or len(syncs) < 8:
            continue
        task = child(tfork)
        exe = first(lambda e: e[2] == task and e[3] == "sched:sched_process_exec")
        texit = first(lambda e: e[2] == task and e[3] == "sched:sched_process_exit")
        reply = first(lambda e: e[2] == helper and e[3] == "syscalls:sys_enter_sendto")
        pidfd = first(lambda e: is_runtime(e) and e[3] == "syscalls:sys_enter_pidfd_open")
        sexit = first(lambda e: e[2] == shim and e[3] == "sched:sched_process_exit")
        if not all((exe, texit, reply, pidfd, sexit)):
            continue
        finished = first(lambda e: is_runtime(e) and e[3] == "syscalls:sys_enter_write", after=sexit[0])
        seen = first(lambda e: e[2] == bench and e[3] == "syscalls:sys_exit_recvfrom" and e[4].strip() in TERMINAL_BODY, after=sexit[0])
        if not (finished and seen):
            continue
        claim_in, claim_out, cdir_in, cdir_out, res_in, res_out, rdir_in, rdir_out = syncs[:8]
        for name, value in (
            ("01 POST sent -> task dir mkdir (parse, validate, plan, txn rows)", mkdir[0] - t0),
            ("02 mkdir -> commit fsync start (3 file creates, commit)", sync_in[0] - mkdir[0]),
            ("03 submit commit fsync (runtime.db WAL)", sync_out[0] - sync_in[0]),
            ("04 fsync end -> POST answer received by client", answer[0] - sync_out[0]),
            ("05 fsync end -> Launch frame sent to helper (wake, dispatch txn)", launch[0] - sync_out[0]),
            ("06 Launch sent -> helper forks intermediate", hfork[0] - launch[0]),
            ("07 helper fork -> shim forked (intermediate: setsid, fork)", sfork[0] - hfork[0]),
            ("08 shim forked -> claim fsync start (stat, setsid, log, claim)", claim_in - sfork[0]),
            ("09 claim fsync (file)", claim_out - claim_in),
            ("10 claim fsync (dir)", cdir_out - cdir_in),
            ("11 claim done -> task forked (fifo, workspace, stdio, resolve)", tfork[0] - cdir_out),
            ("12 task forked -> exec", exe[0] - tfork[0]),
            ("13 exec -> helper replies Launched", reply[0] - exe[0]),
            ("14 helper reply -> runtime pidfd_open (running txn)", pidfd[0] - reply[0]),
            ("15 exec -> task exit (/bin/true runs)", texit[0] - exe[0]),
            ("16 task exit -> result fsync start (reap, usage, encode)", res_in - texit[0]),
            ("17 result.json fsync (file)", res_out - res_in),
            ("18 result.json fsync (dir)", rdir_out - rdir_in),
            ("19 result written -> shim exit", sexit[0] - rdir_out),
            ("20 shim exit -> runtime logs 'task finished' (finalize txn)", finished[0] - sexit[0]),
            ("21 finalize -> client receives terminal status", seen[0] - finished[0]),
            ("== POST sent -> task exec", exe[0] - t0),
            ("== POST sent -> shim exit", sexit[0] - t0),
            ("== POST sent -> terminal seen", seen[0] - t0),
        ):
            stages.setdefault(name, []).append(value)

    done = len(stages.get("== POST sent -> terminal seen", []))
    print(f"{done} complete task timelines of {len(iters)} iterations (ms)")
    for name in sorted(stages):
        v = sorted(stages[name])
        print(f"{name:<68} mean {statistics.mean(v):7.3f}  p50 {v[len(v) // 2]:7.3f}  p90 {v[int(len(v) * 0.9)]:7.3f}")


if __name__ == "__main__":
    main()
