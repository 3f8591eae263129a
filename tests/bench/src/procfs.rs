//! What the figures read from /proc: memory of a process, the machine.

/// Resident memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    /// Proportional set size (shared pages divided among their users);
    /// `None` when smaps_rollup is unreadable.
    pub pss: Option<u64>,
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

pub fn rss(pid: i32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| kib_field(&s, "Pss"));
    Some(Rss {
        vm_rss: kib_field(&status, "VmRSS")?,
        rss_anon: kib_field(&status, "RssAnon").unwrap_or(0),
        rss_file: kib_field(&status, "RssFile").unwrap_or(0),
        rss_shmem: kib_field(&status, "RssShmem").unwrap_or(0),
        pss,
    })
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Rss {
    pub fn line(&self, label: &str) -> String {
        format!(
            "  {label:<34} VmRSS {:7.2} MiB  (RssAnon {:6.2}, RssFile {:6.2}, RssShmem {:5.2}, Pss {})",
            mib(self.vm_rss),
            mib(self.rss_anon),
            mib(self.rss_file),
            mib(self.rss_shmem),
            self.pss
                .map(|p| format!("{:6.2}", mib(p)))
                .unwrap_or_else(|| "n/a".into())
        )
    }
}

/// The host, for the header: cores, kernel, CPU model, memory.
pub fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = kib_field(&meminfo, "MemTotal").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let virt = if cpuinfo.contains(" hypervisor") {
        "virtualised"
    } else {
        "bare metal or unknown"
    };
    vec![
        format!(
            "cores: {} ({virt})",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
        format!(
            "cpu: {} (family {}, model {}, {} MHz)",
            field("model name"),
            field("cpu family"),
            field("model\t"),
            field("cpu MHz")
        ),
        format!("memory: {:.1} GiB", mem_total as f64 / 1024.0 / 1024.0),
        format!("kernel: {}", kernel.trim()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        let r = rss(std::process::id() as i32).expect("own status");
        assert!(r.vm_rss > 0);
        assert!(r.rss_anon + r.rss_file + r.rss_shmem >= r.vm_rss - 4);
    }

    #[test]
    fn kib_fields() {
        assert_eq!(kib_field("VmRSS:\t  1234 kB\n", "VmRSS"), Some(1234));
        assert_eq!(kib_field("VmRSSx: 1 kB\n", "VmRSS"), None);
    }
}
