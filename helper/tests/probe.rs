//! The capability probe of the real helper binary, checked against the
//! host: every answer is compared with what an independent check finds
//! (`unshare(1)` for namespaces, the effective capability set for chroot
//! and pivot_root, the test's own reading of /proc/self/mountinfo for
//! cgroups), as root and as an unprivileged user (uid 65534 when the test
//! is root, else the test's own uid). Root-only parts print why they skip.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Helper;
use execgo_runtime_protocol::{CgroupVersion, HelperCapabilities, Request, Response};

const NOBODY: u32 = 65534;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_ADMIN: u32 = 21;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn probe(h: &Helper) -> HelperCapabilities {
    match h.client().call(&Request::Probe) {
        Response::Probe(c) => c,
        other => panic!("probe answered {other:?}\n{}", h.log()),
    }
}

/// A command run as `uid` (uid = gid) when given, else as ourselves.
fn command(program: &str, uid: Option<u32>) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(id) = uid {
        c.uid(id).gid(id);
    }
    c
}

/// Whether `unshare ARGS true` succeeds for `uid`; `None` without
/// unshare(1).
fn unshare_works(args: &[&str], uid: Option<u32>) -> Option<bool> {
    match command("unshare", uid).args(args).arg("true").status() {
        Ok(s) => Some(s.success()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running unshare: {e}"),
    }
}

/// The effective capability set of a process running as `uid`.
fn cap_eff(uid: Option<u32>) -> u64 {
    let out = command("cat", uid)
        .arg("/proc/self/status")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The cgroup mounts, as the test reads them itself: (mount point, type,
/// super options, mount options).
fn cgroup_mounts() -> Vec<(PathBuf, String, Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let dash = f.iter().position(|x| *x == "-").unwrap();
        let fs_type = f[dash + 1];
        if fs_type == "cgroup" || fs_type == "cgroup2" {
            out.push((
                PathBuf::from(f[4].replace("\\040", " ")),
                fs_type.to_string(),
                f[dash + 3].split(',').map(str::to_string).collect(),
                f[5].split(',').map(str::to_string).collect(),
            ));
        }
    }
    out
}

/// Where the test finds each of memory, pids, cpu served: (version, mount
/// point, mounted read-write).
struct CgroupHost {
    version: CgroupVersion,
    served: Vec<(&'static str, CgroupVersion, PathBuf, bool)>,
}

fn cgroup_host() -> CgroupHost {
    let mounts = cgroup_mounts();
    let v1_names = [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "net_prio",
        "blkio",
        "perf_event",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ];
    let unified = mounts.iter().find(|m| m.1 == "cgroup2");
    let has_v1 = mounts
        .iter()
        .any(|m| m.1 == "cgroup" && m.2.iter().any(|o| v1_names.contains(&o.as_str())));
    let version = match (unified.is_some(), has_v1) {
        (false, false) => CgroupVersion::None,
        (false, true) => CgroupVersion::V1,
        (true, false) => CgroupVersion::V2,
        (true, true) => CgroupVersion::Hybrid,
    };
    let mut served = Vec::new();
    for c in ["memory", "pids", "cpu"] {
        let on_v2 = unified.filter(|m| {
            std::fs::read_to_string(m.0.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|x| x == c)
        });
        let rw = |opts: &[String]| opts.iter().any(|o| o == "rw");
        if let Some(m) = on_v2 {
            served.push((c, CgroupVersion::V2, m.0.clone(), rw(&m.3)));
        } else if let Some(m) = mounts
            .iter()
            .find(|m| m.1 == "cgroup" && m.2.iter().any(|o| o == c))
        {
            served.push((c, CgroupVersion::V1, m.0.clone(), rw(&m.3)));
        }
    }
    CgroupHost { version, served }
}

/// The parent cgroup the helper uses in `mount` for `--cgroup-root root`.
fn root_in(mount: &Path, root: &Path) -> PathBuf {
    if root.starts_with(mount) {
        root.to_path_buf()
    } else {
        mount.join(root.file_name().unwrap())
    }
}

/// Removes the parent cgroups a test's helper created (they are left in
/// place by design, as the parent of task cgroups).
struct CgroupRoots(Vec<PathBuf>);

impl Drop for CgroupRoots {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn test_cgroup_root(tag: &str) -> (String, CgroupRoots) {
    let root = format!(
        "/sys/fs/cgroup/execgo-helper-test-{tag}-{}",
        std::process::id()
    );
    let host = cgroup_host();
    let mut dirs: Vec<PathBuf> = host
        .served
        .iter()
        .map(|(_, _, m, _)| root_in(m, Path::new(&root)))
        .collect();
    dirs.dedup();
    (root, CgroupRoots(dirs))
}

/// Checks the answers every run must agree on, whoever runs the helper.
fn check_against_host(caps: &HelperCapabilities, uid: Option<u32>, cgroup_root: &str) {
    let w = &caps.warnings;
    // Namespaces: whatever unshare(1) manages for the same user.
    let ns = [
        ("mount", caps.namespaces.mount, &["--mount"][..]),
        ("pid", caps.namespaces.pid, &["--pid", "--fork"]),
        ("uts", caps.namespaces.uts, &["--uts"]),
        ("ipc", caps.namespaces.ipc, &["--ipc"]),
        ("net", caps.namespaces.net, &["--net"]),
        ("user", caps.namespaces.user, &["--user"]),
    ];
    for (name, got, args) in ns {
        match unshare_works(args, uid) {
            Some(expected) => assert_eq!(got, expected, "{name} namespace; warnings: {w:?}"),
            None => println!("skipping the {name} namespace comparison: no unshare(1) here"),
        }
        let prefix = format!("{name} namespace: ");
        assert_eq!(
            !got,
            w.iter().any(|x| x.starts_with(&prefix)),
            "a warning exactly when missing: {name}: {w:?}"
        );
    }
    // chroot and pivot_root need CAP_SYS_CHROOT and CAP_SYS_ADMIN.
    let caps_eff = cap_eff(uid);
    let has = |bit: u32| caps_eff & (1 << bit) != 0;
    assert_eq!(caps.chroot, has(CAP_SYS_CHROOT), "chroot; warnings: {w:?}");
    assert_eq!(
        caps.pivot_root,
        has(CAP_SYS_ADMIN),
        "pivot_root; warnings: {w:?}"
    );
    for (name, got) in [("chroot", caps.chroot), ("pivot_root", caps.pivot_root)] {
        assert_eq!(!got, w.iter().any(|x| x.starts_with(&format!("{name}: "))));
    }
    // seccomp with NO_NEW_PRIVS needs no privilege, only the kernel option.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        caps.seccomp,
        status.contains("Seccomp_filters:"),
        "seccomp; warnings: {w:?}"
    );
    assert!(caps.process_group && caps.rlimit_cpu && caps.rlimit_memory);
    assert!(caps.data_dir_writable, "{w:?}");

    // cgroups: the layout as the test reads it; writable exactly where the
    // mount is read-write and the user may create the parent cgroup.
    let host = cgroup_host();
    assert_eq!(caps.cgroup_version, host.version);
    assert_eq!(
        caps.cgroup_v1,
        host.served.iter().any(|s| s.1 == CgroupVersion::V1)
    );
    assert_eq!(
        caps.cgroup_v2,
        host.served.iter().any(|s| s.1 == CgroupVersion::V2)
    );
    let me = uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let mut any = false;
    for (c, version, mount, rw) in &host.served {
        let parent = root_in(mount, Path::new(cgroup_root));
        let may_create = me == 0 || {
            let m = std::fs::metadata(mount).unwrap();
            m.uid() == me || m.mode() & 0o002 != 0
        };
        let expected = *rw && may_create;
        any |= expected;
        let got = match *c {
            "memory" => caps.memory_limit,
            "pids" => caps.pids_limit,
            _ => caps.cpu_quota,
        };
        assert_eq!(
            got,
            expected,
            "{c} on {version:?} at {}; {w:?}",
            parent.display()
        );
        if *c == "memory" {
            assert_eq!(caps.oom_detection, expected, "oom detection; {w:?}");
        }
        let prefix = format!("cgroup {} {c} controller: ", version.as_str());
        let warning = w.iter().find(|x| x.starts_with(&prefix));
        assert_eq!(warning.is_some(), !expected, "{prefix}: {w:?}");
        if !expected && me != 0 {
            let warning = warning.unwrap();
            assert!(
                warning.contains(&format!("mkdir {}", parent.display()))
                    && warning.ends_with(": permission denied"),
                "{warning}"
            );
        }
    }
    assert_eq!(caps.cgroup_writable, any, "{w:?}");
    for c in ["memory", "pids", "cpu"] {
        if !host.served.iter().any(|s| s.0 == c) {
            assert!(w
                .iter()
                .any(|x| x.starts_with(&format!("cgroup {c} controller: not available"))));
        }
    }
}

/// Nothing the probe creates is left behind, except the parent cgroups.
fn check_no_leftovers(h: &Helper, cgroup_root: &str) {
    let pid = h.pid();
    for (_, _, mount, _) in cgroup_host().served {
        let probe = root_in(&mount, Path::new(cgroup_root)).join(format!("probe-{pid}"));
        assert!(!probe.exists(), "{} left behind", probe.display());
    }
    let names: Vec<String> = std::fs::read_dir(&h.data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["tasks"], "the data dir holds only what it held");
}

#[test]
fn as_root_the_probe_finds_what_the_host_offers() {
    if !is_root() {
        println!(
            "skipping: the root probe test needs euid 0 (running as {})",
            nix::unistd::geteuid()
        );
        return;
    }
    let (root, _cleanup) = test_cgroup_root("root");
    let h = Helper::start_with(0, None, &["--cgroup-root", &root]);
    let caps = probe(&h);
    assert!(caps.privileged);
    check_against_host(&caps, None, &root);
    check_no_leftovers(&h, &root);
    // On this kind of machine (namespaces, chroot, pivot_root and seccomp
    // allowed to root; memory, pids and cpu mounted read-write) all of it
    // is available; elsewhere the comparison above is what counts.
    println!("probe as root: {caps:#?}");

    // The parent cgroups stay, as the parent of task cgroups.
    for (_, _, mount, rw) in cgroup_host().served {
        if rw {
            assert!(root_in(&mount, Path::new(&root)).is_dir());
        }
    }

    // A Probe request answers from the probe made at start: with the data
    // dir gone, a fresh probe would find it unwritable; the answer is
    // unchanged, and nothing is probed again (no scratch entry appears).
    std::fs::remove_dir_all(&h.data).unwrap();
    assert_eq!(probe(&h), caps);
}

#[test]
fn unprivileged_the_probe_answers_from_what_it_tried() {
    // As root, the helper runs as nobody; otherwise as ourselves, which is
    // unprivileged already.
    let (run_as, allowed) = if is_root() {
        (Some(NOBODY), 0)
    } else {
        println!(
            "not root: probing as our own uid {} instead of {NOBODY}",
            nix::unistd::geteuid()
        );
        (None, nix::unistd::geteuid().as_raw())
    };
    let (root, _cleanup) = test_cgroup_root("nobody");
    let h = Helper::start_with(allowed, run_as, &["--cgroup-root", &root]);
    let caps = probe(&h);
    assert!(!caps.privileged);
    check_against_host(&caps, run_as, &root);
    check_no_leftovers(&h, &root);
    // No cgroup writable for an ordinary user, and each controller says why.
    assert!(!caps.cgroup_writable, "{:?}", caps.warnings);
    assert!(!caps.memory_limit && !caps.pids_limit && !caps.cpu_quota && !caps.oom_detection);
    // Answers are tried, not derived from the uid: seccomp (with
    // NO_NEW_PRIVS) needs no privilege, and neither, where the kernel
    // allows it, does a user namespace; both agree with the host above.
    println!("probe as {run_as:?}: {caps:#?}");
}
