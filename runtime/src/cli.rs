//! Client subcommands: `submit`, `status`, `wait`, `kill`, `run`, `list`,
//! `logs`, `events`. Stdout carries only the JSON they print (or, for
//! `logs` and `run --follow`, the task's output); errors go to stderr;
//! exit 1 for a failed request or a `wait` timeout (usage errors exit 2
//! through clap).

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
    /// `run` only: copy the task's stdout and stderr to ours as it writes
    /// them, then print the final status on stderr.
    #[arg(long)]
    pub follow: bool,
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

/// Where the terminal status is printed.
#[derive(Clone, Copy)]
enum Out {
    Stdout,
    Stderr,
}

fn wait_for(
    server: &ServerArg,
    task_id: &str,
    poll_ms: u64,
    timeout_ms: Option<u64>,
    out: Out,
) -> Result<(), ClientError> {
    let url = format!("{}/api/v1/tasks/{}", base(server), task_id);
    let start = Instant::now();
    loop {
        let text = send("GET", &url, None, None)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|_| ClientError::BadResponse(text.clone()))?;
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        if matches!(status, "success" | "failed" | "cancelled") {
            let pretty = serde_json::to_string_pretty(&v).unwrap_or(text);
            match out {
                Out::Stdout => println!("{pretty}"),
                Out::Stderr => eprintln!("{pretty}"),
            }
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
    wait_for(
        &a.server,
        &a.task_id,
        a.poll_interval_ms,
        a.timeout_ms,
        Out::Stdout,
    )
}

/// Submits the request; the new task's id.
fn submit_for_id(a: &SubmitArgs) -> Result<String, ClientError> {
    let body = load_request(a)?;
    let out = send(
        "POST",
        &format!("{}/api/v1/tasks", base(&a.server)),
        Some(&body),
        None,
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|_| ClientError::BadResponse(out.clone()))?;
    v.get("task_id")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or(ClientError::BadResponse(out))
}

pub fn run(a: &SubmitArgs) -> Result<(), ClientError> {
    if a.follow {
        return run_follow(a);
    }
    let id = submit_for_id(a)?;
    wait_for(
        &a.server,
        &id,
        a.poll_interval_ms,
        a.timeout_ms,
        Out::Stdout,
    )
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Only tasks in this status (repeatable, or comma-separated).
    #[arg(long)]
    pub status: Vec<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub owner: Option<String>,
    /// Only tasks with this label, as key:value (repeatable; all must hold).
    #[arg(long)]
    pub label: Vec<String>,
    /// Tasks per page (1 to 1000; the server's default is 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The page after a previous answer's `next_cursor`.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Keep printing as the task writes, until it is over.
    #[arg(short, long)]
    pub follow: bool,
    /// Which log.
    #[arg(long, value_enum, default_value = "stdout")]
    pub stream: LogStream,
    /// Start at this byte.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    pub task_id: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub server: ServerArg,
    /// Print each event as it is recorded (one JSON object a line), until
    /// the task is over; a dropped connection is resumed where it stopped.
    #[arg(short, long)]
    pub follow: bool,
    pub task_id: String,
}

/// Percent-encodes a query value.
fn q(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

pub fn list(a: &ListArgs) -> Result<(), ClientError> {
    let mut params: Vec<String> = Vec::new();
    params.extend(a.status.iter().map(|s| format!("status={}", q(s))));
    params.extend(a.tenant.iter().map(|s| format!("tenant={}", q(s))));
    params.extend(a.owner.iter().map(|s| format!("owner={}", q(s))));
    params.extend(a.label.iter().map(|s| format!("label={}", q(s))));
    params.extend(a.limit.iter().map(|n| format!("limit={n}")));
    params.extend(a.cursor.iter().map(|s| format!("cursor={}", q(s))));
    let mut url = format!("{}/api/v1/tasks", base(&a.server));
    if !params.is_empty() {
        url = format!("{url}?{}", params.join("&"));
    }
    println!("{}", send("GET", &url, None, None)?);
    Ok(())
}

/// An agent for answers that stay open: no overall deadline.
fn streaming_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .build()
}

/// Opens a streamed answer; a non-2xx answer prints its body and fails.
fn open_stream(url: &str, headers: &[(&str, String)]) -> Result<ureq::Response, ClientError> {
    let mut req = streaming_agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(code, resp)) => {
            println!("{}", resp.into_string().unwrap_or_default());
            Err(ClientError::Status(code))
        }
        Err(e) => Err(ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Copies a log to `out`: what is there, or on as the task writes.
fn copy_log(
    server: &ServerArg,
    task_id: &str,
    stream: LogStream,
    offset: u64,
    follow: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), ClientError> {
    let url = format!(
        "{}/api/v1/tasks/{task_id}/logs/{}?offset={offset}&follow={follow}",
        base(server),
        stream.as_str()
    );
    let resp = open_stream(&url, &[])?;
    let mut reader = resp.into_reader();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        // A closed stdout (a pager quit) ends the copy quietly.
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

pub fn logs(a: &LogsArgs) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    copy_log(
        &a.server, &a.task_id, a.stream, a.offset, a.follow, &mut out,
    )
}

fn task_over(server: &ServerArg, task_id: &str) -> Result<bool, ClientError> {
    let url = format!("{}/api/v1/tasks/{task_id}", base(server));
    let text = send("GET", &url, None, None)?;
    let v: Value = serde_json::from_str(&text).map_err(|_| ClientError::BadResponse(text))?;
    Ok(matches!(
        v.get("status").and_then(Value::as_str),
        Some("success" | "failed" | "cancelled")
    ))
}

pub fn events(a: &EventsArgs) -> Result<(), ClientError> {
    let url = format!("{}/api/v1/tasks/{}/events", base(&a.server), a.task_id);
    if !a.follow {
        println!("{}", send("GET", &url, None, None)?);
        return Ok(());
    }
    let follow_url = format!("{url}?follow=true");
    let mut last: Option<String> = None;
    loop {
        print_events(&follow_url, &mut last)?;
        // The server ends the stream after the task's last event; a restart
        // or a dropped connection ends it early. Either way one more pass
        // from `last` prints what is left (at once, once the task is over).
        if task_over(&a.server, &a.task_id)? {
            return print_events(&follow_url, &mut last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the `data` of each event the stream sends after `last`, one a
/// line, and moves `last` along.
fn print_events(url: &str, last: &mut Option<String>) -> Result<(), ClientError> {
    let headers: Vec<(&str, String)> = last
        .iter()
        .map(|id| ("Last-Event-ID", id.clone()))
        .collect();
    let resp = open_stream(url, &headers)?;
    let reader = std::io::BufReader::new(resp.into_reader());
    for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("id: ") {
            *last = Some(id.to_string());
        } else if let Some(data) = line.strip_prefix("data: ") {
            println!("{data}");
        }
    }
    Ok(())
}

/// `run --follow`: submit, copy the task's stdout and stderr to ours as it
/// writes them, then print the final status on stderr.
pub fn run_follow(a: &SubmitArgs) -> Result<(), ClientError> {
    let id = submit_for_id(a)?;
    let server = ServerArg {
        server: a.server.server.clone(),
    };
    let err_id = id.clone();
    let stderr_copy = std::thread::spawn(move || {
        let mut err = std::io::stderr();
        copy_log(&server, &err_id, LogStream::Stderr, 0, true, &mut err)
    });
    let mut stdout = std::io::stdout().lock();
    copy_log(&a.server, &id, LogStream::Stdout, 0, true, &mut stdout)?;
    drop(stdout);
    stderr_copy
        .join()
        .map_err(|_| ClientError::BadResponse("the stderr copy panicked".into()))??;
    wait_for(
        &a.server,
        &id,
        a.poll_interval_ms,
        a.timeout_ms,
        Out::Stderr,
    )
}
