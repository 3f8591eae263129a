//! `execgo-runtime serve`: opens the store, connects the helper, recovers,
//! then runs the dispatcher, the GC and the HTTP server until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, ServeArgs};
use crate::engine::Engine;
use crate::helper_link::{EmbeddedHelper, HelperLink, HelperMode};
use crate::store::Store;

/// Logs filtered by `RUST_LOG` (default `default`): JSON lines on stderr,
/// or journald's native protocol, where fields keep their names upper-cased
/// (`task_id` becomes `TASK_ID`, so `journalctl TASK_ID=<id>` finds a
/// task's lines). Journald falls back to JSON when its socket is missing.
pub fn init_logging(default: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    let json = || {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                // Syslog levels as the helper uses them: info 6, debug 7.
                let priorities = tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                };
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("execgo-runtime".to_string())
                    .with_priority_mappings(priorities);
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(json())
                    .try_init();
                tracing::warn!(error = %e, "journald is not reachable; logging JSON to stderr");
                return;
            }
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(json())
        .try_init();
}

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Journald,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        }
    }

    /// The explicit choice, else journald when systemd connected our
    /// stderr to the journal (`JOURNAL_STREAM` is set), else JSON.
    pub fn resolve(explicit: Option<LogFormat>) -> LogFormat {
        explicit.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
            LogFormat::Journald
        } else {
            LogFormat::Json
        })
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Read while single-threaded (it removes the variable).
    let notify = crate::notify::from_env().context("systemd readiness notification")?;
    let cfg = Config::from_args(args)?;
    // Before the store opens: a second runtime on this data dir stops here.
    let _lock = crate::data_lock::acquire(&cfg.data_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("execgo-runtime")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cfg, notify))
}

async fn run(cfg: Config, notify: Option<crate::notify::Target>) -> anyhow::Result<()> {
    let store = Arc::new(
        Store::open(&cfg.db_path())
            .with_context(|| format!("opening {}", cfg.db_path().display()))?,
    );
    let mode = match &cfg.args.helper_socket {
        Some(path) => HelperMode::Socket(path.clone()),
        None => HelperMode::Embedded(EmbeddedHelper {
            binary: cfg
                .args
                .helper_path
                .clone()
                .unwrap_or_else(HelperLink::default_binary),
            data_dir: cfg.data_dir.clone(),
            cgroup_root: cfg.args.cgroup_root.clone(),
            log_format: LogFormat::resolve(cfg.args.log_format).as_str(),
            task_user: cfg.args.task_user.clone(),
            task_uid_range: cfg.args.task_uid_range.clone(),
            max_log_bytes: cfg.args.max_log_bytes,
            allow_root_tasks: cfg.args.allow_root_tasks,
            rootfs_dirs: cfg.args.rootfs_dir.clone(),
            workdir_roots: cfg.args.opensandbox_workdir_root.clone(),
        }),
    };
    let embedded = matches!(mode, HelperMode::Embedded(_));
    let helper = Arc::new(HelperLink::new(mode));
    match helper.capabilities().await {
        Ok(_) => {}
        Err(e) if embedded => {
            return Err(anyhow::Error::new(e).context("starting the embedded helper"));
        }
        Err(e) => {
            tracing::warn!(error = %crate::engine::error_chain(&e),
                "helper not reachable yet; tasks wait until it is");
        }
    }
    let listen = cfg.args.listen_addr;
    let engine = Arc::new(Engine::new(cfg, store, helper));
    engine
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovering tasks: {}", crate::engine::error_chain(&e)))?;
    tokio::spawn(Arc::clone(&engine).dispatch_loop());
    tokio::spawn(Arc::clone(&engine).gc_loop());

    // Deletions a previous run left in progress resume whether or not the
    // OpenSandbox listener is on this time.
    let osbx = crate::opensandbox::OpenSandbox::start(
        Arc::clone(&engine),
        engine.cfg.args.opensandbox_tenant.clone(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "starting the opensandbox api: {}",
            crate::engine::error_chain(&e)
        )
    })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let osbx_listener = match engine.cfg.args.opensandbox_listen_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the opensandbox listener {addr}"))?,
        ),
        None => None,
    };
    // Both listeners refuse connections from tasks.
    let gate = Arc::new(crate::peer_gate::PeerGate::new(
        Arc::clone(&engine.helper),
        engine.metrics.connections_refused_total.clone(),
    ));
    tracing::info!(listen = %listen, runtime_id = %engine.cfg.runtime_id,
        task_connections = %gate.describe(), "execgo-runtime serving");
    if let Some(target) = notify.clone() {
        tokio::spawn(notify_ready(Arc::clone(&engine), target));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let main_api = crate::api::server::run(
        Arc::clone(&engine),
        Arc::clone(&gate),
        listener,
        stopped(stop_rx.clone()),
    );
    match osbx_listener {
        Some(l) => {
            tracing::info!(listen = %engine.cfg.args.opensandbox_listen_addr.map(|a| a.to_string()).unwrap_or_default(),
                tenant = %engine.cfg.args.opensandbox_tenant, "opensandbox task-executor api serving");
            let osbx_api = crate::opensandbox::routes::serve(osbx, gate, l, stopped(stop_rx));
            tokio::join!(main_api, osbx_api);
        }
        None => main_api.await,
    }
    if let Some(target) = &notify {
        let _ = crate::notify::send(target, "STOPPING=1");
    }
    tracing::info!("execgo-runtime stopped; running tasks continue under their shims");
    Ok(())
}

/// Under systemd's `Type=notify`: `READY=1` as soon as the check behind
/// `/readyz` passes (storage and helper answer), retried until it does.
/// Until then systemd keeps the unit "activating", and units ordered after
/// it wait.
async fn notify_ready(engine: Arc<Engine>, target: crate::notify::Target) {
    let mut logged = false;
    loop {
        match engine.ready().await {
            Ok(()) => break,
            Err(e) if !logged => {
                tracing::info!(reason = %crate::engine::error_chain(&e), "not ready yet; systemd is told once ready");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    match crate::notify::send(&target, "READY=1\nSTATUS=serving") {
        Ok(()) => tracing::info!("ready; told systemd"),
        Err(e) => tracing::warn!(error = %e, "telling systemd we are ready failed"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
