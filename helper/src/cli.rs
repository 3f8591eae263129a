//! Command line. Exactly one mode: `--socket` (standalone, with the peer
//! allowed to connect) or `--inherited-fd` (embedded, internal to
//! `execgo-runtime serve`). Anything else is a usage error, exit 2.

use std::path::{Component, Path, PathBuf};

use clap::{ArgGroup, Parser};

/// The default `--max-log-bytes`: 64 MiB, the runtime's default too.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 64 << 20;

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
        Standalone: --socket PATH --allowed-uid UID|--allowed-user NAME \
        [--allowed-gid GID]. Under systemd the socket may be passed by socket \
        activation (LISTEN_FDS=1, LISTEN_PID=the helper): it must then be a \
        listening Unix stream socket bound to the --socket path.\n\
        Embedded: started by `execgo-runtime serve` itself over a socketpair.\n\n\
        Tasks never run as root by accident: as root the helper gives every \
        task a uid of its own from --task-uid-range, or, with --task-user, \
        runs them all as that one user (uid 0 only with --allow-root-tasks, \
        never a uid allowed to connect). Unprivileged, it runs tasks as \
        itself.\n\n\
        Logs are JSON lines on stderr, or journald entries with --log-format \
        journald (the default when JOURNAL_STREAM is set); RUST_LOG sets the \
        level.",
    override_usage = "execgo-runtime-helper --data-dir <PATH> --socket <PATH> (--allowed-uid <UID> | --allowed-user <NAME>)... \
        [--allowed-gid <GID>] [--task-uid-range <FIRST-LAST> | --task-user <USER>] [--allow-root-tasks] [--cgroup-root <PATH|delegated>] \
        [--log-format <FORMAT>]"
)]
#[command(group(
    ArgGroup::new("mode")
        .required(true)
        .multiple(false)
        .args(["socket", "inherited_fd"])
))]
#[command(group(ArgGroup::new("peers").multiple(true).args(["allowed_uid", "allowed_user"])))]
pub struct Args {
    /// The runtime's data directory; task directories are
    /// <PATH>/tasks/<task_id>/. Must exist.
    #[arg(long, value_name = "PATH")]
    pub data_dir: PathBuf,

    /// Standalone mode: listen on a Unix stream socket at PATH (a stale
    /// socket there is replaced; any other file is an error). The socket is
    /// created with mode 0660 and, when running as root, owned by the
    /// allowed uid/gid.
    #[arg(long, value_name = "PATH", requires = "peers")]
    pub socket: Option<PathBuf>,

    /// Standalone mode: a uid allowed to connect (checked with
    /// SO_PEERCRED; uid 0 is not implicitly allowed). Repeatable.
    #[arg(
        long,
        value_name = "UID",
        requires = "socket",
        conflicts_with = "inherited_fd"
    )]
    pub allowed_uid: Vec<u32>,

    /// Standalone mode: a user allowed to connect, by name (its uid is
    /// looked up at start, so a unit file need not know it). Repeatable;
    /// adds to --allowed-uid.
    #[arg(
        long,
        value_name = "NAME",
        requires = "socket",
        conflicts_with = "inherited_fd"
    )]
    pub allowed_user: Vec<String>,

    /// Standalone mode: also require this gid of every peer.
    #[arg(
        long,
        value_name = "GID",
        requires = "socket",
        conflicts_with = "inherited_fd"
    )]
    pub allowed_gid: Option<u32>,

    /// One user for every task: NAME (with its primary group), UID (with
    /// the group of its passwd entry, else the same number) or UID:GID. An
    /// explicit choice: as root, without it, every task gets a uid of its
    /// own (--task-uid-range). It may not be uid 0 (see
    /// --allow-root-tasks) nor a uid allowed to connect. Unprivileged, the
    /// helper runs tasks as itself and accepts only its own uid here.
    #[arg(long, value_name = "USER", conflicts_with = "task_uid_range")]
    pub task_user: Option<String>,

    /// The most bytes a task's `stdout.log` or `stderr.log` may hold on
    /// disk; past it the task's output is dropped. A launch asking for
    /// more gets this (the runtime's own `--max-log-bytes` asks).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_LOG_BYTES,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_log_bytes: u64,

    /// Root only: the uids tasks are given, one of its own per task (its
    /// gid the same number), leased in <data-dir>/task-uids/ and given
    /// back when the task is over. Start-up refuses a range that holds a
    /// user or group of /etc/passwd or /etc/group or overlaps an
    /// allocation of /etc/subuid or /etc/subgid (exit 2).
    /// [default: 1879048192-1879113727]
    #[arg(long, value_name = "FIRST-LAST")]
    pub task_uid_range: Option<String>,

    /// Allow --task-user to be uid 0. Root tasks still run with every
    /// capability set empty and no new privileges.
    #[arg(long)]
    pub allow_root_tasks: bool,

    /// A directory whose subdirectories `linux_sandbox` tasks may use as
    /// their root (`sandbox.rootfs` with `chroot: true`). Absolute and
    /// normalised; repeatable. Without one, no task gets a rootfs.
    #[arg(long, value_name = "DIR", value_parser = parse_cgroup_root)]
    pub rootfs_dir: Vec<PathBuf>,

    /// A directory under which a `process` task may be given an absolute
    /// working directory (OpenSandbox's `workingDir`): the directory itself
    /// or any below it, opened without following symlinks. Absolute and
    /// normalised; repeatable. Without one, every task starts in its
    /// workspace.
    #[arg(long, value_name = "DIR", value_parser = parse_cgroup_root)]
    pub workdir_root: Vec<PathBuf>,

    /// Parent cgroup of per-task cgroups: a PATH, or `delegated`.
    ///
    /// PATH: where the unified (v2) hierarchy is mounted at or above PATH
    /// it is used as given; in any other hierarchy (every v1 one, a hybrid
    /// host's /sys/fs/cgroup/unified) the parent is <mount point>/<basename
    /// of PATH>. Must be absolute and normalised (no ".", ".." or empty
    /// components).
    ///
    /// `delegated` (for a systemd service with Delegate=yes): task cgroups
    /// go in the helper's own cgroup, as read from /proc/self/cgroup. At
    /// start the helper moves itself into <own cgroup>/supervisor (made if
    /// missing) in every hierarchy systemd delegates to it (the unified
    /// one; memory, pids, cpu on v1) and replicates that path in v1
    /// hierarchies systemd leaves alone (freezer); task cgroups are
    /// siblings of supervisor. Started in a cgroup named supervisor
    /// (DelegateSubgroup=supervisor, systemd >= 254), it stays there. The
    /// root cgroup, or one that is not a systemd service's or scope's, is a
    /// start-up error. Where the unified hierarchy serves the task
    /// controllers and systemd did not start the helper in supervisor
    /// (systemd < 254 on a pure v2 host), a restart would fail with tasks
    /// running, so the default PATH is used instead, with a warning.
    ///
    /// Given more than once, the last one counts (a unit's
    /// EXECGO_RUNTIME_HELPER_OPTS can override the unit's own).
    #[arg(
        long,
        value_name = "PATH|delegated",
        default_value = "/sys/fs/cgroup/execgo-runtime",
        value_parser = parse_cgroup_root_arg,
        overrides_with = "cgroup_root"
    )]
    pub cgroup_root: CgroupRoot,

    /// Log destination: JSON lines on stderr, or journald's native protocol
    /// (fields upper-cased: `journalctl TASK_ID=<id>`) [default: journald
    /// when JOURNAL_STREAM is set, else json]. Read, like the environment
    /// variable, before start-up clears the environment.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "EXECGO_RUNTIME_LOG_FORMAT",
        value_enum
    )]
    pub log_format: Option<crate::logging::Format>,

    /// Internal (embedded mode, set up by `execgo-runtime serve`): serve
    /// exactly one already-connected socket at this descriptor; the peer
    /// must have our own uid. Exits 0 when the peer closes.
    #[arg(long, value_name = "FD", hide = true)]
    pub inherited_fd: Option<i32>,

    /// Internal (tests): close a handshaken standalone connection after
    /// this many seconds without input, instead of the documented 10
    /// minutes (`conn::IDLE_TIMEOUT`).
    #[arg(
        long,
        value_name = "SECS",
        hide = true,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_secs: Option<u64>,
}

/// Writes the man page, rendered from [`Args`], to stdout (the hidden
/// `--print-man-page`, used by packaging/build.sh).
pub fn print_man_page() -> std::process::ExitCode {
    use clap::CommandFactory;
    let man = clap_mangen::Man::new(Args::command()).title("EXECGO-RUNTIME-HELPER");
    match man.render(&mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("execgo-runtime-helper: writing the man page failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--cgroup-root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    Path(PathBuf),
    /// The helper's own delegated cgroup
    /// (`crate::cgroup::delegate`).
    Delegated,
}

impl std::fmt::Display for CgroupRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupRoot::Path(p) => write!(f, "{}", p.display()),
            CgroupRoot::Delegated => f.write_str(crate::cgroup::delegate::DELEGATED),
        }
    }
}

/// `--cgroup-root`: `delegated`, or a path as [`parse_cgroup_root`] takes.
fn parse_cgroup_root_arg(s: &str) -> Result<CgroupRoot, String> {
    if s == crate::cgroup::delegate::DELEGATED {
        return Ok(CgroupRoot::Delegated);
    }
    parse_cgroup_root(s)
        .map(CgroupRoot::Path)
        .map_err(|e| format!("{e}, or be the word \"delegated\""))
}

/// `--cgroup-root`, `--rootfs-dir` and `--workdir-root`: absolute,
/// normalised, not `/`.
/// Rejected, never repaired.
fn parse_cgroup_root(s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err("must be an absolute path".into());
    }
    // `components()` silently drops "." and doubled slashes; compare the
    // text instead.
    let rest = &s[1..];
    if rest.is_empty() || rest.ends_with('/') {
        return Err("must name a directory below / without a trailing slash".into());
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must not contain '.', '..' or empty components".into());
    }
    debug_assert!(p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
    Ok(p.to_path_buf())
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
        assert_eq!(a.allowed_uid, vec![7]);
        let a = parse(&[
            "--data-dir",
            "d",
            "--socket",
            "s",
            "--allowed-uid",
            "7",
            "--allowed-uid",
            "8",
            "--task-user",
            "nobody",
            "--allow-root-tasks",
        ])
        .unwrap();
        assert_eq!(a.allowed_uid, vec![7, 8]);
        assert_eq!(a.task_user.as_deref(), Some("nobody"));
        assert!(a.allow_root_tasks);
        let a = parse(&["--data-dir", "d", "--socket", "s", "--allowed-user", "rt"]).unwrap();
        assert_eq!(a.allowed_user, vec!["rt".to_string()]);
        assert!(a.allowed_uid.is_empty());
        let a = parse(&["--data-dir", "d", "--inherited-fd", "5"]).unwrap();
        assert_eq!(a.inherited_fd, Some(5));
        assert_eq!(a.idle_timeout_secs, None);
        let a = parse(&[
            "--data-dir",
            "d",
            "--socket",
            "s",
            "--allowed-uid",
            "7",
            "--idle-timeout-secs",
            "2",
        ])
        .unwrap();
        assert_eq!(a.idle_timeout_secs, Some(2));
        assert!(parse(&[
            "--data-dir",
            "d",
            "--inherited-fd",
            "5",
            "--idle-timeout-secs",
            "0"
        ])
        .is_err());
        assert_eq!(
            a.cgroup_root,
            CgroupRoot::Path(PathBuf::from("/sys/fs/cgroup/execgo-runtime"))
        );
        let a = parse(&[
            "--data-dir",
            "d",
            "--inherited-fd",
            "5",
            "--cgroup-root",
            "/sys/fs/cgroup/x/y",
        ])
        .unwrap();
        assert_eq!(
            a.cgroup_root,
            CgroupRoot::Path(PathBuf::from("/sys/fs/cgroup/x/y"))
        );
        let a = parse(&[
            "--data-dir",
            "d",
            "--inherited-fd",
            "5",
            "--cgroup-root",
            "delegated",
        ])
        .unwrap();
        assert_eq!(a.cgroup_root, CgroupRoot::Delegated);
        // The unit's value, then the operator's: the last counts.
        let a = parse(&[
            "--data-dir",
            "d",
            "--inherited-fd",
            "5",
            "--cgroup-root",
            "delegated",
            "--cgroup-root",
            "/sys/fs/cgroup/execgo-runtime",
        ])
        .unwrap();
        assert_eq!(
            a.cgroup_root,
            CgroupRoot::Path(PathBuf::from("/sys/fs/cgroup/execgo-runtime"))
        );
    }

    #[test]
    fn log_format() {
        use crate::logging::Format;
        for (value, want) in [("json", Format::Json), ("journald", Format::Journald)] {
            let a = parse(&[
                "--data-dir",
                "d",
                "--inherited-fd",
                "5",
                "--log-format",
                value,
            ])
            .unwrap();
            assert_eq!(a.log_format, Some(want));
        }
        let e = parse(&[
            "--data-dir",
            "d",
            "--inherited-fd",
            "5",
            "--log-format",
            "syslog",
        ])
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn cgroup_root_is_validated() {
        for bad in [
            "",
            "/",
            "rel/x",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
            "/..",
            "delegate",
            "Delegated",
            "auto",
        ] {
            assert!(parse_cgroup_root_arg(bad).is_err(), "{bad:?}");
            let e = parse(&[
                "--data-dir",
                "d",
                "--inherited-fd",
                "5",
                "--cgroup-root",
                bad,
            ])
            .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        // The message says what is accepted.
        let e = parse_cgroup_root_arg("delegate").unwrap_err();
        assert_eq!(e, "must be an absolute path, or be the word \"delegated\"");
        // --rootfs-dir takes paths only.
        assert!(parse_cgroup_root("delegated").is_err());
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
            &[
                "--data-dir",
                "d",
                "--inherited-fd",
                "4",
                "--allowed-user",
                "rt",
            ],
            &["--socket", "s", "--allowed-uid", "1"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_ne!(e.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
