//! `execgo-runtime-helper`: the privileged half of execgo-runtime.
//!
//! It cleans itself up ([`startup`]), probes the host once ([`probe`]),
//! then serves the closed request set of the protocol ([`dispatch`]) on a
//! Unix socket ([`server`]): its own listener in standalone mode, or one
//! socketpair end inherited from `execgo-runtime serve` in embedded mode.
//! A launch becomes a detached per-task [`shim`], answered as soon as the
//! shim is started. Synchronous and single-threaded throughout (the shim's
//! fork relies on it); see `docs/helper.md`.
#![deny(unsafe_code)]

mod accept;
mod activation;
mod cgroup;
mod cli;
mod conn;
mod deadline;
mod dispatch;
mod fs_at;
mod identity;
mod launch;
mod listener;
mod logging;
mod namespaces;
mod os_error;
mod outbox;
mod peer;
mod prefork;
mod probe;
mod probe_child;
mod reap;
mod rlimits;
mod rootfs;
mod seccomp;
mod server;
mod shim;
mod sidecar;
mod startup;
mod sys;
mod uid_lease;

// Compiled once, in the library (src/lib.rs); `crate::validate` still
// names it here.
use execgo_runtime_helper::validate;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{getsockopt, sockopt::SockType as SockTypeOpt, SockType};
use nix::sys::stat::Mode;

use crate::conn::Limits;
use crate::dispatch::{Context, Dispatcher};
use crate::peer::PeerPolicy;
use crate::server::Mode as ServeMode;

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("start-up clean-up failed")]
    Startup(#[from] startup::StartupError),
    #[error("the data dir {path} is unusable")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the inherited descriptor {fd} is not a usable unix stream socket")]
    InheritedFd {
        fd: i32,
        #[source]
        source: Errno,
    },
    #[error("setting up the listening socket failed")]
    Listen(#[from] listener::ListenError),
    #[error("serving failed")]
    Serve(#[from] server::ServeError),
    #[error("exactly one of --socket and --inherited-fd is required")]
    Usage,
    #[error(transparent)]
    Activation(#[from] activation::ActivationError),
    #[error(transparent)]
    ActivatedSocket(#[from] activation::AdoptError),
    #[error("socket activation passed a listening socket, but --inherited-fd asks for embedded mode; use --socket with the activated socket's path")]
    ActivatedEmbedded,
    #[error("--allowed-user {name:?}: no such user")]
    UnknownAllowedUser { name: String },
    #[error("--allowed-user {name:?}: looking the user up failed")]
    AllowedUserLookup {
        name: String,
        #[source]
        source: Errno,
    },
    #[error("--workdir-root {path}: cannot be opened as a directory")]
    WorkdirRoot {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("--rootfs-dir {path}: cannot be opened as a directory")]
    RootfsDir {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    TaskUser(#[from] identity::IdentityError),
    #[error(transparent)]
    Delegation(#[from] cgroup::delegate::DelegateError),
    #[error("--cgroup-root delegated: reading the cgroup layout failed")]
    Layout(#[source] cgroup::CgroupError),
    #[error("--cgroup-root delegated: moving the helper into its supervisor cgroup failed")]
    EnterSupervisor(#[source] cgroup::CgroupError),
    #[error("the task uid leases of --task-uid-range {range} are unusable")]
    Leases {
        range: identity::UidRange,
        #[source]
        source: uid_lease::LeaseError,
    },
}

fn main() -> ExitCode {
    // Read before start-up clears the environment (clap reads
    // EXECGO_RUNTIME_LOG_FORMAT while parsing, also before).
    let rust_log = std::env::var("RUST_LOG").ok();
    let journal_stream = std::env::var_os("JOURNAL_STREAM").is_some();
    // Socket activation: read (and removed) before anything else, so that
    // its descriptor survives the clean-up below only when announced.
    let activation = activation::parse(&activation::take_env(), std::process::id());
    // Packaging (packaging/build.sh): the man page, from the definition
    // clap parses, on stdout. Only as the sole argument.
    if std::env::args_os()
        .skip(1)
        .eq([std::ffi::OsStr::new("--print-man-page")])
    {
        return cli::print_man_page();
    }
    // clap exits 2 on a usage error and 0 for --help/--version.
    let args = cli::Args::parse();
    let format = logging::Format::resolve(args.log_format, journal_stream);
    // Logging starts after the clean-up, which closes every descriptor we
    // did not open since (journald's socket would be one); a failed
    // clean-up is reported as JSON on stderr.
    let keep = args
        .inherited_fd
        .or(activation.as_ref().ok().copied().flatten());
    let result = match startup::clean(keep) {
        Ok(()) => {
            logging::init(rust_log.as_deref(), format);
            activation
                .map_err(MainError::from)
                .and_then(|activated| run(args, activated))
        }
        Err(e) => {
            logging::init(rust_log.as_deref(), logging::Format::Json);
            Err(e.into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: logging::TARGET, error = %logging::chain(&e), "helper stopped");
            match e {
                MainError::Usage
                | MainError::TaskUser(_)
                | MainError::UnknownAllowedUser { .. }
                | MainError::ActivatedEmbedded
                | MainError::Delegation(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `activated`: the descriptor socket activation passed, if any.
fn run(args: cli::Args, activated: Option<i32>) -> Result<(), MainError> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let peers = match args.inherited_fd {
        Some(_) if activated.is_some() => return Err(MainError::ActivatedEmbedded),
        Some(_) => vec![own_uid],
        None => {
            let mut uids = args.allowed_uid.clone();
            for name in &args.allowed_user {
                uids.push(allowed_user_uid(name)?);
            }
            uids
        }
    };
    let requested = args
        .task_user
        .as_deref()
        .map(identity::resolve)
        .transpose()?;
    let range = args
        .task_uid_range
        .as_deref()
        .map(identity::UidRange::parse)
        .transpose()?;
    let task_users = identity::decide(requested, range, args.allow_root_tasks, own_uid, &peers)?;
    if let identity::TaskUsers::PerTask(range) = task_users {
        let host = identity::HostIds::read(std::path::Path::new("/etc"), range)?;
        identity::check_range_free(range, &host)?;
    }
    let task_identity = task_users.shared();
    let data_err = |source| MainError::DataDir {
        path: args.data_dir.clone(),
        source,
    };
    let data_dir = std::fs::canonicalize(&args.data_dir).map_err(data_err)?;
    let data_fd = sys::open(
        &data_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| data_err(e.into()))?;
    let mounts = PathBuf::from("/proc/self/mountinfo");
    // Before the probe: on v2 the delegated cgroup can enable controllers
    // for task cgroups only once the helper has left it.
    let (task_root, root_warning) = task_root(&args.cgroup_root, &mounts)?;
    let probe_config = probe::ProbeConfig {
        data_dir: data_dir.clone(),
        cgroup_root: task_root,
        mounts,
    };
    let mut capabilities = probe::probe(&probe_config, data_fd.as_fd());
    // The data dir's identity names its task cgroups' parent: runtimes
    // with other data dirs never see each other's tasks there.
    let data_stat = nix::sys::stat::fstat(data_fd.as_raw_fd()).map_err(|e| data_err(e.into()))?;
    let scope = cgroup::task::scope_name(data_stat.st_dev, data_stat.st_ino);
    capabilities.task_uid = task_identity.map_or(own_uid, |t| t.uid);
    capabilities.task_uid_range = task_users.range().map(|r| (r.first, r.last));
    let leases = match task_users.range() {
        Some(range) => Some(std::rc::Rc::new(
            uid_lease::Leases::open(
                std::path::Path::new(uid_lease::LEASE_DIR),
                &data_dir.display().to_string(),
                range,
            )
            .map_err(|source| MainError::Leases { range, source })?,
        )),
        None => None,
    };
    let (cgroups, cgroup_warnings) =
        match cgroup::Layout::detect(&probe_config.mounts, &cgroup::HostFs) {
            Ok(layout) => cgroup::task::Placement::prepare(
                &layout,
                &probe_config.cgroup_root,
                &scope,
                &cgroup::HostFs,
            ),
            Err(e) => (None, vec![format!("task cgroups: {}", logging::chain(&e))]),
        };
    capabilities.task_cgroups = cgroups.is_some();
    // A limit is offered only where task cgroups really have its
    // controller, whatever the probe cgroup could do.
    let placed = |c: &str| {
        cgroups
            .as_ref()
            .is_some_and(|p| p.roots.iter().any(|r| r.controllers.contains(&c)))
    };
    capabilities.memory_limit &= placed("memory");
    capabilities.pids_limit &= placed("pids");
    capabilities.cpu_quota &= placed("cpu");
    // Compiled once, each shim inherits them. Filters that do not compile
    // mean no seccomp for tasks: the runtime then offers no linux_sandbox
    // and tells process tasks' plans they run without their filter.
    let task_seccomp = if capabilities.seccomp {
        match seccomp::TaskFilters::compile() {
            Ok(filters) => Some(filters),
            Err(e) => {
                capabilities.seccomp = false;
                capabilities
                    .warnings
                    .push(format!("seccomp: {}", logging::chain(&e)));
                None
            }
        }
    } else {
        None
    };
    let mut rootfs_dirs = Vec::new();
    for dir in &args.rootfs_dir {
        let fd = sys::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| MainError::RootfsDir {
            path: dir.clone(),
            source,
        })?;
        let text = dir.display().to_string();
        capabilities.rootfs_dirs.push(text.clone());
        rootfs_dirs.push((text, fd));
    }
    // Opened now, like the rootfs dirs: a later rename of the path changes
    // nothing, and a task's workdir is resolved beneath the descriptor.
    let mut workdir_roots = Vec::new();
    for dir in &args.workdir_root {
        let fd = sys::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| MainError::WorkdirRoot {
            path: dir.clone(),
            source,
        })?;
        let text = dir.display().to_string();
        capabilities.workdir_roots.push(text.clone());
        workdir_roots.push((text, fd));
    }
    let mode = match (&args.socket, args.inherited_fd) {
        (Some(path), None) => {
            let first = *peers.first().ok_or(MainError::Usage)?;
            let policy = PeerPolicy {
                uids: peers,
                gid: args.allowed_gid,
            };
            // An activated socket was created, owned and given its mode
            // by systemd (SocketUser=, SocketGroup=, SocketMode=).
            let listener = match activated {
                Some(fd) => activation::adopt_listener(fd, path)?,
                None => {
                    let owner = capabilities.privileged.then_some((first, policy.gid));
                    listener::bind(path, owner, policy.gid)?
                }
            };
            ServeMode::Standalone { listener, policy }
        }
        (None, Some(fd)) => ServeMode::Embedded {
            stream: adopt_socket(fd)?,
            policy: PeerPolicy {
                uids: peers,
                gid: None,
            },
        },
        _ => return Err(MainError::Usage),
    };
    tracing::info!(
        target: logging::TARGET,
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        socket_activated = activated.is_some(),
        mode = match mode {
            ServeMode::Standalone { .. } => "standalone",
            ServeMode::Embedded { .. } => "embedded",
        },
        data_dir = %data_dir.display(),
        cgroup_root = %probe_config.cgroup_root,
        task_uid = task_identity.map_or(own_uid, |t| t.uid),
        task_gid = task_identity.map(|t| t.gid),
        task_uid_range = task_users.range().map(|r| r.to_string()),
        capabilities = serde_json::to_string(&capabilities).ok(),
        "helper started"
    );
    if let Some(w) = &root_warning {
        tracing::warn!(target: logging::TARGET, reason = w.as_str(), "task cgroups not delegated");
    }
    for w in &capabilities.warnings {
        tracing::warn!(target: logging::TARGET, reason = w.as_str(), "capability missing");
    }
    match &cgroups {
        Some(p) => tracing::info!(
            target: logging::TARGET,
            roots = ?p.roots.iter().map(|r| r.root.display().to_string()).collect::<Vec<_>>(),
            kill = ?p.kill,
            "tasks get cgroups of their own"
        ),
        None => tracing::warn!(
            target: logging::TARGET,
            "no usable cgroup hierarchy: tasks are contained by their process group only"
        ),
    }
    for w in &cgroup_warnings {
        tracing::warn!(target: logging::TARGET, reason = w.as_str(), "task cgroups limited");
    }
    let net_spare = sys::NetnsSpare::new(capabilities.privileged && capabilities.namespaces.net);
    let prefork = prefork::Prefork::new(
        prefork::Statics {
            privileged: capabilities.privileged,
            task_identity,
            leases: leases.clone(),
            cgroups: cgroups.clone(),
            seccomp: task_seccomp.clone(),
            max_log_bytes: args.max_log_bytes,
        },
        true,
    );
    let dispatcher = Dispatcher::new(Context {
        data_fd,
        net_spare,
        prefork,
        capabilities,
        task_identity,
        leases,
        cgroups,
        rootfs_dirs,
        workdir_roots,
        task_seccomp,
        max_log_bytes: args.max_log_bytes,
    });
    dispatcher.sweep_cgroups();
    // Embedded, the one connection is the runtime that started us, and its
    // end is ours: it is never closed for being idle.
    let limits = match mode {
        ServeMode::Standalone { .. } => Limits::standard(Some(
            args.idle_timeout_secs
                .map_or(conn::IDLE_TIMEOUT, std::time::Duration::from_secs),
        )),
        ServeMode::Embedded { .. } => Limits::standard(None),
    };
    let served = server::serve(mode, &dispatcher, limits);
    dispatcher.release_cgroups();
    served?;
    Ok(())
}

/// Where task cgroups go, from `--cgroup-root`; for `delegated`, after
/// moving the helper into its `supervisor` cgroup. The warning says why
/// `delegated` fell back to the default root.
fn task_root(
    arg: &cli::CgroupRoot,
    mounts: &std::path::Path,
) -> Result<(cgroup::TaskRoot, Option<String>), MainError> {
    let delegation = match arg {
        cli::CgroupRoot::Path(p) => return Ok((cgroup::TaskRoot::Path(p.clone()), None)),
        cli::CgroupRoot::Delegated => {
            cgroup::delegate::Delegation::detect(std::path::Path::new("/proc/self/cgroup"), mounts)?
        }
    };
    let layout = cgroup::Layout::detect(mounts, &cgroup::HostFs).map_err(MainError::Layout)?;
    let (root, warning) = cgroup::delegate::choose(delegation, &layout);
    if let cgroup::TaskRoot::Delegated(d) = &root {
        // Single-threaded here, and cgroup.procs moves every thread anyway.
        d.enter_supervisor(std::process::id(), &cgroup::HostFs)
            .map_err(MainError::EnterSupervisor)?;
        for s in &d.skipped {
            tracing::warn!(target: logging::TARGET, reason = s.as_str(), "cgroup hierarchy not delegated");
        }
    }
    Ok((root, warning))
}

/// `--allowed-user`: the uid of a user name, looked up after the clean-up
/// (the NSS modules it loads open descriptors of their own).
fn allowed_user_uid(name: &str) -> Result<u32, MainError> {
    nix::unistd::User::from_name(name)
        .map_err(|source| MainError::AllowedUserLookup {
            name: name.to_string(),
            source,
        })?
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| MainError::UnknownAllowedUser {
            name: name.to_string(),
        })
}

/// The embedded mode's socket: must be an open unix stream socket; made
/// close-on-exec so it can never leak further.
fn adopt_socket(fd: i32) -> Result<UnixStream, MainError> {
    let err = |source| MainError::InheritedFd { fd, source };
    let owned = sys::adopt_fd(fd).map_err(err)?;
    match getsockopt(&owned, SockTypeOpt).map_err(err)? {
        SockType::Stream => {}
        _ => return Err(err(Errno::EPROTOTYPE)),
    }
    nix::fcntl::fcntl(owned.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(err)?;
    let stream = UnixStream::from(owned);
    // A socket of another family fails here (ENOTSOCK is caught above).
    stream.local_addr().map_err(|e| {
        err(e
            .raw_os_error()
            .map(Errno::from_raw)
            .unwrap_or(Errno::EINVAL))
    })?;
    Ok(stream)
}
