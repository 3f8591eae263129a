//! The shim's identity for the runtime: its pid plus its start time in
//! clock ticks since boot (field 22 of `/proc/<pid>/stat`, see proc(5)), so
//! a recycled pid is never mistaken for the shim.

use std::io::Read;

use execgo_runtime_protocol::taskdir::parse_start_ticks;

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
    fn own_ticks_are_known() {
        assert!(own_start_ticks() > 0);
    }
}
