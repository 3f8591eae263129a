//! What kind of host this is: OS, architecture, and whether it runs in a
//! container or under Kubernetes, detected from the host's own markers.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
    pub containerized: bool,
    pub kubernetes: bool,
}

impl Platform {
    pub fn detect() -> Self {
        let cgroup = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
        let pid1_env = std::fs::read("/proc/1/environ").unwrap_or_default();
        Platform {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            containerized: containerized(
                Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists(),
                &cgroup,
                &pid1_env,
            ),
            kubernetes: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                || Path::new("/var/run/secrets/kubernetes.io").exists()
                || cgroup.contains("kubepods"),
        }
    }
}

/// A container runtime leaves one of: a marker file, its name in PID 1's
/// cgroup paths, or `container=` in PID 1's environment (systemd's
/// convention, set by podman, lxc, systemd-nspawn).
fn containerized(marker_file: bool, pid1_cgroup: &str, pid1_environ: &[u8]) -> bool {
    marker_file
        || ["docker", "kubepods", "containerd", "libpod", "lxc"]
            .iter()
            .any(|m| pid1_cgroup.contains(m))
        || pid1_environ
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(b"container="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_markers() {
        assert!(!containerized(
            false,
            "0::/init.scope\n",
            b"HOME=/\0TERM=linux\0"
        ));
        assert!(containerized(true, "", b""));
        assert!(containerized(false, "12:pids:/docker/abc\n", b""));
        assert!(containerized(
            false,
            "0::/\n",
            b"HOME=/\0container=podman\0"
        ));
    }
}
