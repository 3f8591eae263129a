//! Command line. Exactly one mode: `--socket` (standalone, with the peer
//! allowed to connect) or `--inherited-fd` (embedded, internal to
//! `execgo-runtime serve`). Anything else is a usage error, exit 2.

use std::path::PathBuf;

use clap::{ArgGroup, Parser};

#[derive(Debug, Parser)]
#[command(
    name = "execgo-runtime-helper",
    version,
    about = "Privileged helper of execgo-runtime: probes the host and launches per-task shims",
    long_about = "Privileged helper of execgo-runtime.\n\n\
        It serves a small, closed set of requests (ping, probe, launch) from \
        execgo-runtime over a Unix stream socket, checking the peer's \
        credentials (SO_PEERCRED) on every connection. A launch starts a \
        detached per-task shim that runs and monitors the task and writes \
        <data-dir>/tasks/<task_id>/result.json.\n\n\
        Standalone: --socket PATH --allowed-uid UID [--allowed-gid GID].\n\
        Embedded: started by `execgo-runtime serve` itself over a socketpair.\n\n\
        Logs are JSON lines on stderr; RUST_LOG sets the level.",
    override_usage = "execgo-runtime-helper --data-dir <PATH> --socket <PATH> --allowed-uid <UID> \
        [--allowed-gid <GID>]"
)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .multiple(false)
        .args(["socket", "inherited_fd"])
))]
pub struct Args {
    /// The runtime's data directory; task directories are
    /// <PATH>/tasks/<task_id>/. Must exist.
    #[arg(long, value_name = "PATH")]
    pub data_dir: PathBuf,

    /// Standalone mode: listen on a Unix stream socket at PATH (a stale
    /// socket there is replaced; any other file is an error). The socket is
    /// created with mode 0660 and, when running as root, owned by the
    /// allowed uid/gid.
    #[arg(long, value_name = "PATH", requires = "allowed_uid")]
    pub socket: Option<PathBuf>,

    /// Standalone mode: the only uid allowed to connect (checked with
    /// SO_PEERCRED; uid 0 is not implicitly allowed).
    #[arg(
        long,
        value_name = "UID",
        requires = "socket",
        conflicts_with = "inherited_fd"
    )]
    pub allowed_uid: Option<u32>,

    /// Standalone mode: also require this gid of every peer.
    #[arg(
        long,
        value_name = "GID",
        requires = "socket",
        conflicts_with = "inherited_fd"
    )]
    pub allowed_gid: Option<u32>,

    /// Internal (embedded mode, set up by `execgo-runtime serve`): serve
    /// exactly one already-connected socket at this descriptor; the peer
    /// must have our own uid. Exits 0 when the peer closes.
    #[arg(long, value_name = "FD", hide = true)]
    pub inherited_fd: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("execgo-runtime-helper").chain(args.iter().copied()))
    }

    #[test]
    fn modes() {
        let a = parse(&["--data-dir", "d", "--socket", "s", "--allowed-uid", "7"]).unwrap();
        assert_eq!(a.allowed_uid, Some(7));
        let a = parse(&["--data-dir", "d", "--inherited-fd", "5"]).unwrap();
        assert_eq!(a.inherited_fd, Some(5));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--data-dir", "d"][..],
            &["--data-dir", "d", "--socket", "s"],
            &[
                "--data-dir",
                "d",
                "--socket",
                "s",
                "--allowed-uid",
                "1",
                "--inherited-fd",
                "4",
            ],
            &[
                "--data-dir",
                "d",
                "--inherited-fd",
                "4",
                "--allowed-uid",
                "1",
            ],
            &["--socket", "s", "--allowed-uid", "1"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_ne!(e.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
