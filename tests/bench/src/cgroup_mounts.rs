//! Which cgroup hierarchy counts CPU time here, and where this process's
//! own cgroup is in it, from `/proc/self/mountinfo` and `/proc/self/cgroup`.
//!
//! A v1 hierarchy with the `cpuacct` controller counts in `cpuacct.usage`
//! (ns); the v2 hierarchy counts in `cpu.stat` `usage_usec`, which every
//! non-root v2 cgroup has whether or not the `cpu` controller is enabled.
//! In a hybrid layout (v1 controllers plus a v2 mount, often holding none
//! of them) the v1 `cpuacct` hierarchy is used: it is the one the kernel's
//! CPU controllers are bound to.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The counter read, as printed next to the figure.
    pub fn counter(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1 cpuacct.usage",
            Version::V2 => "cgroup v2 cpu.stat usage_usec",
        }
    }
}

/// The hierarchy the bench creates its cgroups in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// This process's own cgroup in it, as a directory: new cgroups go
    /// under it (in a container that is the only part one can see).
    pub own_dir: PathBuf,
}

/// The hierarchy of this process, or why there is none.
pub fn detect() -> Result<Hierarchy, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
    choose(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
}

/// The fields of a mountinfo line (proc_pid_mountinfo(5)) used here.
struct Mount<'a> {
    /// Field 4: the root of the mount within its hierarchy.
    root: &'a str,
    /// Field 5, still escaped.
    mount_point: &'a str,
    /// The first field after the `-` separator.
    fs_type: &'a str,
    /// The third field after it, for a v1 cgroup mount its controllers
    /// among the options (`rw,cpu,cpuacct`).
    super_options: &'a str,
}

fn mounts(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Optional fields (7...) end with a lone "-".
        let dash = 6 + f.get(6..)?.iter().position(|x| *x == "-")?;
        Some(Mount {
            root: f.get(3)?,
            mount_point: f.get(4)?,
            fs_type: f.get(dash + 1)?,
            super_options: f.get(dash + 3)?,
        })
    })
}

/// Undoes mountinfo's `\ooo` octal escapes (space, tab, newline, `\`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's path in the hierarchy whose `/proc/self/cgroup` line
/// satisfies `pick` (`hierarchy-ID:controller-list:path`).
fn own_path(self_cgroup: &str, pick: impl Fn(&str, &str) -> bool) -> Option<&str> {
    self_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        pick(id, controllers).then_some(path)
    })
}

/// `mount_point` + `path` made relative to the mount's `root`.
fn dir_of(m: &Mount, path: &str) -> Result<PathBuf, String> {
    let rel = if m.root == "/" {
        Some(path)
    } else if path == m.root {
        Some("")
    } else {
        path.strip_prefix(m.root).filter(|r| r.starts_with('/'))
    }
    .ok_or_else(|| {
        format!(
            "this process's cgroup {path} is outside the part ({}) mounted at {}",
            m.root, m.mount_point
        )
    })?;
    Ok(PathBuf::from(unescape(m.mount_point)).join(rel.trim_start_matches('/')))
}

/// The hierarchy to use, from the texts of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`.
pub fn choose(mountinfo: &str, self_cgroup: &str) -> Result<Hierarchy, String> {
    let has = |list: &str, c: &str| list.split(',').any(|x| x == c);
    if let Some(m) =
        mounts(mountinfo).find(|m| m.fs_type == "cgroup" && has(m.super_options, "cpuacct"))
    {
        let path = own_path(self_cgroup, |id, c| id != "0" && has(c, "cpuacct"))
            .ok_or("no cpuacct line in /proc/self/cgroup")?;
        return Ok(Hierarchy {
            version: Version::V1,
            own_dir: dir_of(&m, path)?,
        });
    }
    if let Some(m) = mounts(mountinfo).find(|m| m.fs_type == "cgroup2") {
        let path = own_path(self_cgroup, |id, c| id == "0" && c.is_empty())
            .ok_or("no cgroup v2 line (0::) in /proc/self/cgroup")?;
        return Ok(Hierarchy {
            version: Version::V2,
            own_dir: dir_of(&m, path)?,
        });
    }
    Err("no cgroup v1 cpuacct nor cgroup v2 mount in /proc/self/mountinfo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian bookworm with systemd: v2 only.
    const V2_MOUNTINFO: &str = "\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 28 0:6 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4000000k
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V2_CGROUP: &str = "0::/user.slice/user-1000.slice/session-3.scope\n";

    /// Older systemd, hybrid: v1 controllers (cpu and cpuacct mounted
    /// together) and a v2 mount with no controllers.
    const HYBRID_MOUNTINFO: &str = "\
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:29 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
36 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
37 31 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";
    const HYBRID_CGROUP: &str = "\
12:memory:/system.slice/ssh.service
4:cpu,cpuacct:/system.slice/ssh.service
1:name=systemd:/system.slice/ssh.service
0::/system.slice/ssh.service
";

    /// This VM: v1 only for cpu, cpuacct (separate mounts), memory, pids;
    /// a v2 mount holding hugetlb alone; no optional fields.
    const V1_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_CGROUP: &str = "\
4:memory:/process_api/e946969b
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn v2_only_uses_the_unified_hierarchy() {
        assert_eq!(
            choose(V2_MOUNTINFO, V2_CGROUP),
            Ok(Hierarchy {
                version: Version::V2,
                own_dir: "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope".into(),
            })
        );
    }

    #[test]
    fn hybrid_prefers_v1_cpuacct() {
        assert_eq!(
            choose(HYBRID_MOUNTINFO, HYBRID_CGROUP),
            Ok(Hierarchy {
                version: Version::V1,
                own_dir: "/sys/fs/cgroup/cpu,cpuacct/system.slice/ssh.service".into(),
            })
        );
    }

    #[test]
    fn v1_cpuacct_mounted_alone() {
        assert_eq!(
            choose(V1_MOUNTINFO, V1_CGROUP),
            Ok(Hierarchy {
                version: Version::V1,
                own_dir: "/sys/fs/cgroup/cpuacct".into(),
            })
        );
    }

    #[test]
    fn hybrid_without_cpuacct_falls_back_to_v2() {
        let mountinfo: String = HYBRID_MOUNTINFO
            .lines()
            .filter(|l| !l.contains("cpuacct"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            choose(&mountinfo, HYBRID_CGROUP).map(|h| h.version),
            Ok(Version::V2)
        );
    }

    #[test]
    fn a_container_sees_its_own_part_of_the_hierarchy() {
        // The mount's root is this cgroup (or above it); the path in
        // /proc/self/cgroup is from the hierarchy's root.
        let mi = "40 31 0:38 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let own = |cg: &str| choose(mi, cg).map(|h| h.own_dir);
        assert_eq!(own("0::/kubepods/pod1\n"), Ok("/sys/fs/cgroup".into()));
        assert_eq!(own("0::/kubepods/pod1/c\n"), Ok("/sys/fs/cgroup/c".into()));
        assert!(own("0::/kubepods/pod10\n").is_err());
    }

    #[test]
    fn mount_points_are_unescaped() {
        let mi = "40 31 0:38 / /mnt/cg\\040v2 rw master:3 - cgroup2 none rw\n";
        assert_eq!(
            choose(mi, "0::/a\n").map(|h| h.own_dir),
            Ok("/mnt/cg v2/a".into())
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn no_cgroup_mount_is_an_error() {
        assert!(choose("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n").is_err());
        assert!(choose(V1_MOUNTINFO, "0::/\n").is_err(), "no cpuacct line");
    }
}
