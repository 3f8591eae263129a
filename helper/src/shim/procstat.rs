//! The shim's identity for the runtime: its pid plus its start time in
//! clock ticks since boot (field 22 of `/proc/<pid>/stat`, see proc(5)), so
//! a recycled pid is never mistaken for the shim.

use std::io::Read;

/// Parses field 22 of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last
/// `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come field 3 (state) onwards; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The calling process's start ticks; 0 when /proc cannot say.
pub fn own_start_ticks() -> u64 {
    // One read: the kernel hands over the whole line (a few hundred bytes,
    // at most ~1.2 KiB) in a single read when the buffer holds it; a line
    // without its final newline is not trusted.
    let mut buf = [0u8; 4096];
    std::fs::File::open("/proc/self/stat")
        .and_then(|mut f| f.read(&mut buf))
        .ok()
        .and_then(|n| buf[..n].strip_suffix(b"\n"))
        .and_then(|line| std::str::from_utf8(line).ok())
        .and_then(parse_start_ticks)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_the_last_paren() {
        let line =
            "42 (we(ird) )name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 555123 1000 10";
        assert_eq!(parse_start_ticks(line), Some(555123));
        assert_eq!(parse_start_ticks("42 (x) S 1 2"), None);
        assert_eq!(parse_start_ticks("no paren at all"), None);
        assert_eq!(parse_start_ticks(""), None);
    }

    #[test]
    fn own_ticks_are_known() {
        assert!(own_start_ticks() > 0);
    }
}
