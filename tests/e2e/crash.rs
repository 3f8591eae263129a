//! Exactly-once under `kill -9`: a stream of tasks, each appending its id to
//! a shared file, while the runtime (and in some cycles the helper) is
//! killed at arbitrary moments and restarted on the same data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use execgo_runtime_tests::*;

/// A small deterministic generator, seeded per run and printed, so a failing
/// schedule can be replayed with `EXECGO_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Where tasks get a uid of their own: in the ledger's order (appends),
/// a uid's runs never overlap: each `start` of a uid follows the `end` of
/// its previous run. A uid serves many tasks in turn, never two at once.
fn assert_no_uid_shared_by_two_live_tasks(ledger: &str) {
    let mut live: BTreeMap<&str, &str> = BTreeMap::new();
    let mut uids: BTreeSet<&str> = BTreeSet::new();
    for line in ledger.lines() {
        let mut f = line.split(' ');
        let (Some(id), Some(uid), Some(what)) = (f.next(), f.next(), f.next()) else {
            panic!("a torn ledger line: {line:?}");
        };
        uids.insert(uid);
        match what {
            "start" => {
                if let Some(other) = live.insert(uid, id) {
                    panic!("uid {uid} ran {id} while {other} still ran");
                }
            }
            "end" => assert_eq!(live.remove(uid), Some(id), "{line}"),
            _ => panic!("{line:?}"),
        }
    }
    println!("chaos: {} distinct task uids", uids.len());
}

#[test]
fn chaos_kill_9_runs_every_accepted_task_exactly_once() {
    let seed = std::env::var("EXECGO_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let ledger = tmp.path().join("ledger.txt");
    task_writable_file(&ledger);
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));

    // As root, tasks get a uid each from a range small enough that uids
    // are given back and leased again all through the run.
    let uids: Vec<&str> = if is_root() {
        vec!["--task-uid-range", "1879400000-1879400015"]
    } else {
        Vec::new()
    };
    for cycle in 0..10 {
        let mut s = Server::builder()
            .data_dir(&dir)
            .args(["--max-running-tasks", "4", "--max-queued-tasks", "1000"])
            .args(uids.iter().copied())
            .start();
        let stop = Arc::new(AtomicBool::new(false));
        let submitter = {
            let (stop, accepted, attempted) = (stop.clone(), accepted.clone(), attempted.clone());
            let url = s.url("/api/v1/tasks");
            let ledger = ledger.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("c{cycle}-{i}");
                    i += 1;
                    // Each run leaves a start and an end line with its uid,
                    // and lasts long enough to overlap others.
                    let l = ledger.display();
                    let body = json!({"task_id": id, "execution": {"kind": "command",
                    "program": "/bin/sh",
                    "args": ["-c", format!(
                        "echo \"{id} $(id -u) start\" >> {l}; sleep 0.03; echo \"{id} $(id -u) end\" >> {l}"
                    )]}});
                    attempted.lock().unwrap().insert(id.clone());
                    let bytes = serde_json::to_vec(&body).unwrap();
                    match try_request("POST", &url, Some(&bytes), &[]) {
                        Ok(r) if r.status == 200 => {
                            accepted.lock().unwrap().insert(id);
                        }
                        // The queue is full: a clear refusal, nothing to
                        // run; the submitter waits for room.
                        Ok(r) if r.status == 429 => {
                            attempted.lock().unwrap().remove(&id);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Ok(r) => panic!("unexpected answer {}: {}", r.status, r.text),
                        Err(_) => return, // the runtime is gone
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        if cycle % 3 == 1 {
            if let Some(h) = s.helper_pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(h),
                    nix::sys::signal::Signal::SIGKILL,
                );
                std::thread::sleep(Duration::from_millis(rng.below(100)));
            }
        }
        s.kill9();
        stop.store(true, Ordering::SeqCst);
        submitter.join().unwrap();
        drop(s);
    }

    // Final run: everything accepted must become terminal, exactly once.
    let s = Server::builder()
        .data_dir(&dir)
        .args(uids.iter().copied())
        .start();
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 10,
        "too few tasks accepted: {}",
        accepted.len()
    );
    for id in &accepted {
        let st = s.wait_terminal(id, Duration::from_secs(60));
        assert_eq!(st["status"], "success", "{id}: {st}");
    }
    // Ids whose answer was lost may exist too; they must also end.
    for id in attempted.lock().unwrap().difference(&accepted) {
        let r = s.get(&format!("/api/v1/tasks/{id}"));
        if r.status == 200 {
            s.wait_terminal(id, Duration::from_secs(60));
        }
    }
    let ledger = std::fs::read_to_string(&ledger).unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in ledger.lines() {
        if let Some(id) = line.strip_suffix(" start") {
            let id = id.rsplit_once(' ').map_or(id, |(id, _uid)| id);
            *counts.entry(id.to_string()).or_default() += 1;
        }
    }
    if is_root() {
        assert_no_uid_shared_by_two_live_tasks(&ledger);
    }
    for id in &accepted {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "task {id} ran {:?} times",
            counts.get(id)
        );
    }
    for (id, n) in &counts {
        assert_eq!(*n, 1, "task {id} ran {n} times");
    }
    println!("chaos: {} accepted, {} ran", accepted.len(), counts.len());
    drop(s);
    // No shim or task is left running for this data dir.
    let start = Instant::now();
    let needle = dir.to_string_lossy().to_string();
    loop {
        let left = pids_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let db = rusqlite::Connection::open(dir.join("runtime.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
