//! The task's descriptors: stdin on /dev/null, stdout and stderr pipes
//! the shim relays into the `stdout.log` and `stderr.log` the runtime
//! created at submit, up to `max_log_bytes` each (see [`super::relay`];
//! the logs must already exist and be plain, singly-linked files, see
//! [`crate::fs_at`]), and for a script task a private copy of its
//! `script`, which it gets as descriptor 3: the interpreter opens it as
//! `/proc/self/fd/3`, needing no path into the data dir, which tasks
//! cannot search. The copy is a memfd, readable by whoever holds it, so
//! the task's uid needs no right on the runtime's file.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::relay::{Relay, Stream};
use crate::fs_at::{self, Access, AtError};
use crate::sys;

pub use execgo_runtime_protocol::taskdir::{SCRIPT, STDERR as STDERR_LOG, STDOUT as STDOUT_LOG};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening /dev/null for stdin failed")]
    DevNull(#[source] Errno),
    #[error("opening the output log failed")]
    Log(#[source] AtError),
    #[error("creating the output pipe failed")]
    Pipe(#[source] Errno),
    #[error("opening the task's script failed")]
    Script(#[source] AtError),
    #[error("copying the task's script for the task failed")]
    ScriptCopy(#[source] std::io::Error),
}

pub struct TaskStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// A script task's script (`LaunchSpec::script_fd`), to become its
    /// descriptor [`execgo_runtime_protocol::SCRIPT_FD`].
    pub script: Option<OwnedFd>,
}

/// The task's descriptors, and the relay of its output into the logs,
/// each capped at `max_log_bytes`.
pub fn open(
    task_dir: BorrowedFd<'_>,
    script: bool,
    max_log_bytes: u64,
) -> Result<(TaskStdio, Relay), StdioError> {
    let stdin = sys::open(
        Path::new("/dev/null"),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(StdioError::DevNull)?;
    let log = |name| fs_at::open_file(task_dir, name, Access::Write).map_err(StdioError::Log);
    let (out, stdout) = Stream::new(log(STDOUT_LOG)?, max_log_bytes).map_err(StdioError::Pipe)?;
    let (err, stderr) = Stream::new(log(STDERR_LOG)?, max_log_bytes).map_err(StdioError::Pipe)?;
    let script = if script {
        Some(copy_script(task_dir)?)
    } else {
        None
    };
    Ok((
        TaskStdio {
            stdin,
            stdout,
            stderr,
            script,
        },
        Relay {
            streams: vec![out, err],
        },
    ))
}

/// The task directory's `script`, copied into a close-on-exec memfd and
/// rewound (the task child puts it at descriptor 3 without the flag).
fn copy_script(task_dir: BorrowedFd<'_>) -> Result<OwnedFd, StdioError> {
    use std::io::{Seek, Write};
    let mut file = fs_at::open_file(task_dir, SCRIPT, Access::Read).map_err(StdioError::Script)?;
    let memfd = nix::sys::memfd::memfd_create(
        c"execgo-script",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| StdioError::ScriptCopy(e.into()))?;
    let mut copy = std::fs::File::from(memfd);
    std::io::copy(&mut file, &mut copy).map_err(StdioError::ScriptCopy)?;
    copy.flush().map_err(StdioError::ScriptCopy)?;
    copy.rewind().map_err(StdioError::ScriptCopy)?;
    Ok(copy.into())
}
