//! Client subcommands: `submit`, `status`, `wait`, `kill`, `run`. Stdout
//! carries only the JSON they print; errors go to stderr; exit 1 for a
//! failed request or a `wait` timeout (usage errors exit 2 through clap).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use serde_json::Value;

const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Debug, Args)]
pub struct ServerArg {
    /// Root URL of the runtime (a trailing `/` is ignored).
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["json", "file"])))]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// The request as a JSON string.
    #[arg(long)]
    pub json: Option<String>,
    /// A file holding the request JSON.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Poll interval while waiting (`run`); accepted and unused by `submit`.
    #[arg(long, default_value_t = 500)]
    pub poll_interval_ms: u64,
    /// Give up waiting after this long (`run`); accepted and unused by `submit`.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub task_id: String,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub server: ServerArg,
    pub task_id: String,
    /// Give up after this long: exit 1 with nothing on stdout.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Time between status polls.
    #[arg(long, default_value_t = 500)]
    pub poll_interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Sent as `x-execgo-owner`; required when the task has an owner.
    #[arg(long, env = "EXECGO_RUNTIME_OWNER")]
    pub owner: Option<String>,
    pub task_id: String,
}

/// A client failure; `main` prints it and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request json: {0}")]
    BadJson(String),
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("request failed with status {0}")]
    Status(u16),
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("timed out waiting for task {0}")]
    WaitTimeout(String),
    #[error("server answered something that is not a task status: {0}")]
    BadResponse(String),
}

fn base(server: &ServerArg) -> String {
    server.server.trim_end_matches('/').to_string()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
}

/// Sends a request; 2xx returns the body, anything else prints the body on
/// stdout and fails with the status.
fn send(
    method: &str,
    url: &str,
    body: Option<&str>,
    owner: Option<&str>,
) -> Result<String, ClientError> {
    let mut req = agent().request(method, url);
    if let Some(o) = owner {
        req = req.set("x-execgo-owner", o);
    }
    let result = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None if method == "POST" => req.send_bytes(&[]),
        None => req.call(),
    };
    match result {
        Ok(resp) => resp.into_string().map_err(|e| ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        }),
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            println!("{text}");
            Err(ClientError::Status(code))
        }
        Err(e) => Err(ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        }),
    }
}

fn load_request(a: &SubmitArgs) -> Result<String, ClientError> {
    let text = match (&a.json, &a.file) {
        (Some(j), _) => j.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|source| ClientError::ReadFile {
                path: path.clone(),
                source,
            })?
        }
        (None, None) => String::new(),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| ClientError::BadJson(e.to_string()))?;
    if !v.is_object() {
        return Err(ClientError::BadJson(
            "the request must be a JSON object".into(),
        ));
    }
    Ok(text)
}

pub fn submit(a: &SubmitArgs) -> Result<String, ClientError> {
    let body = load_request(a)?;
    let out = send(
        "POST",
        &format!("{}/api/v1/tasks", base(&a.server)),
        Some(&body),
        None,
    )?;
    println!("{out}");
    Ok(out)
}

pub fn status(a: &StatusArgs) -> Result<(), ClientError> {
    let out = send(
        "GET",
        &format!("{}/api/v1/tasks/{}", base(&a.server), a.task_id),
        None,
        None,
    )?;
    println!("{out}");
    Ok(())
}

pub fn kill(a: &KillArgs) -> Result<(), ClientError> {
    let out = send(
        "POST",
        &format!("{}/api/v1/tasks/{}/kill", base(&a.server), a.task_id),
        None,
        a.owner.as_deref(),
    )?;
    println!("{out}");
    Ok(())
}

fn wait_for(
    server: &ServerArg,
    task_id: &str,
    poll_ms: u64,
    timeout_ms: Option<u64>,
) -> Result<(), ClientError> {
    let url = format!("{}/api/v1/tasks/{}", base(server), task_id);
    let start = Instant::now();
    loop {
        let text = send("GET", &url, None, None)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|_| ClientError::BadResponse(text.clone()))?;
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        if matches!(status, "success" | "failed" | "cancelled") {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text));
            return Ok(());
        }
        if let Some(t) = timeout_ms {
            if start.elapsed() >= Duration::from_millis(t) {
                return Err(ClientError::WaitTimeout(task_id.to_string()));
            }
        }
        std::thread::sleep(Duration::from_millis(poll_ms.max(1)));
    }
}

pub fn wait(a: &WaitArgs) -> Result<(), ClientError> {
    wait_for(&a.server, &a.task_id, a.poll_interval_ms, a.timeout_ms)
}

pub fn run(a: &SubmitArgs) -> Result<(), ClientError> {
    let body = load_request(a)?;
    let out = send(
        "POST",
        &format!("{}/api/v1/tasks", base(&a.server)),
        Some(&body),
        None,
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|_| ClientError::BadResponse(out.clone()))?;
    let id = v
        .get("task_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::BadResponse(out.clone()))?;
    wait_for(&a.server, id, a.poll_interval_ms, a.timeout_ms)
}
