//! Parsing `/proc/self/mountinfo` (proc_pid_mountinfo(5)): one mount per
//! line,
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! with zero or more optional fields (7) ended by a lone `-`. Paths escape
//! space, tab, newline and backslash as `\ooo` octal.

use std::path::PathBuf;

/// The fields of one mount the cgroup code needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Field 4: the root of the mount within its filesystem.
    pub root: String,
    /// Field 5, unescaped.
    pub mount_point: PathBuf,
    /// Field 9 (`cgroup`, `cgroup2`, ...).
    pub fs_type: String,
    /// Field 11, split at commas: for a v1 cgroup mount, its controllers
    /// (`memory`, `cpu`, `cpuacct`, ...) among the options.
    pub super_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses the whole text; a malformed line is an error (the kernel never
/// writes one), empty lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Mount>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| ParseError {
                line: i + 1,
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<Mount, &'static str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 {
        return Err("too few fields");
    }
    let dash = fields[6..]
        .iter()
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or("no '-' separator")?;
    let after = &fields[dash + 1..];
    if after.len() < 3 {
        return Err("too few fields after the '-' separator");
    }
    Ok(Mount {
        root: unescape(fields[3]).ok_or("bad escape in the root")?,
        mount_point: PathBuf::from(unescape(fields[4]).ok_or("bad escape in the mount point")?),
        fs_type: after[0].to_string(),
        super_options: after[2].split(',').map(str::to_string).collect(),
    })
}

/// Undoes the kernel's `\ooo` escaping (`seq_file`'s `mangle_path`).
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let digits = b.get(i + 1..i + 4)?;
            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return None;
            }
            let v = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_this_kind_of_host() {
        let text = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 master:2 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        let m = parse(text).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(m[2].fs_type, "cgroup");
        assert_eq!(m[2].super_options, ["rw", "cpu"]);
        // Optional fields before the separator are skipped.
        assert_eq!(m[3].fs_type, "cgroup");
        assert_eq!(m[3].super_options, ["rw", "memory"]);
        assert_eq!(m[5].fs_type, "cgroup2");
        assert_eq!(m[5].root, "/");
    }

    #[test]
    fn unescapes_paths() {
        let m = parse("1 0 0:1 /a\\134b /my\\040cgroups\\011x rw - cgroup2 cgroup2 rw\n").unwrap();
        assert_eq!(m[0].mount_point, PathBuf::from("/my cgroups\tx"));
        assert_eq!(m[0].root, "/a\\b");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for (text, reason) in [
            ("1 0 0:1 / /x rw", "too few fields"),
            ("1 0 0:1 / /x rw a b c d", "no '-' separator"),
            (
                "1 0 0:1 / /x rw a b - cgroup",
                "too few fields after the '-' separator",
            ),
            (
                "1 0 0:1 / /x\\04 rw - cgroup cgroup rw",
                "bad escape in the mount point",
            ),
        ] {
            let e = parse(&format!("\n{text}\n")).unwrap_err();
            assert_eq!(e, ParseError { line: 2, reason }, "{text}");
        }
    }
}
