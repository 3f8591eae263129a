//! `execgo-runtime`: the HTTP service (`serve`) and its CLI client
//! (`submit`, `status`, `wait`, `kill`, `run`, `list`, `logs`, `events`).

mod api;
mod cli;
mod config;
mod data_lock;
mod engine;
mod helper_link;
mod ledger;
mod metrics;
mod model;
mod notify;
mod opensandbox;
mod packaging;
mod peer_gate;
mod peer_uid;
mod plan;
mod platform;
mod serve;
mod store;
mod sys;
mod task;
mod views;

use clap::{Parser, Subcommand};

/// Durable, isolated, cancellable execution of commands and scripts for AI
/// agents and the ExecGo control plane.
#[derive(Debug, Parser)]
#[command(name = "execgo-runtime", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (starts the embedded helper unless --helper-socket).
    Serve(Box<config::ServeArgs>),
    /// Submit a task; prints the server's answer.
    Submit(cli::SubmitArgs),
    /// Print a task's status.
    Status(cli::StatusArgs),
    /// Poll until a task is terminal; prints its final status.
    Wait(cli::WaitArgs),
    /// Kill a task (cancel it if it has not started).
    Kill(cli::KillArgs),
    /// Submit, then wait: prints the final status (with --follow, streams
    /// the task's output first).
    Run(cli::SubmitArgs),
    /// List tasks, newest first, one page (JSON).
    List(cli::ListArgs),
    /// Print a task's stdout (or --stream stderr); -f follows it.
    Logs(cli::LogsArgs),
    /// Print a task's events; -f prints each as it is recorded.
    Events(cli::EventsArgs),
    /// Packaging (packaging/build.sh): writes the man pages and shell
    /// completions into DIR.
    #[command(hide = true)]
    GeneratePackagingFiles {
        #[arg(long, value_name = "DIR")]
        out_dir: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            if let Some(t) = config::duplicate_tenant(&args.tenant_quota) {
                use clap::CommandFactory;
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--tenant-quota given twice for tenant '{t}'"),
                    )
                    .exit();
            }
            serve::init_logging("info", serve::LogFormat::resolve(args.log_format));
            match serve::serve(*args) {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "serve failed");
                    eprintln!("execgo-runtime: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Submit(a) => cli::submit(&a).map(|_| ()),
        Command::Status(a) => cli::status(&a),
        Command::Wait(a) => cli::wait(&a),
        Command::Kill(a) => cli::kill(&a),
        Command::Run(a) => cli::run(&a),
        Command::List(a) => cli::list(&a),
        Command::Logs(a) => cli::logs(&a),
        Command::Events(a) => cli::events(&a),
        Command::GeneratePackagingFiles { out_dir } => {
            use clap::CommandFactory;
            if let Err(e) = packaging::generate(Cli::command(), &out_dir) {
                eprintln!("execgo-runtime: {e:#}");
                std::process::exit(1);
            }
            return;
        }
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
