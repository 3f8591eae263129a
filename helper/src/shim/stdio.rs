//! The task's stdio: stdin on /dev/null, stdout and stderr appended to the
//! `stdout.log` and `stderr.log` the runtime created at submit. They must
//! already exist and be plain, singly-linked files (see [`crate::fs_at`]).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::fs_at::{self, Access, AtError};
use crate::sys;

pub use execgo_runtime_protocol::taskdir::{STDERR as STDERR_LOG, STDOUT as STDOUT_LOG};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("opening /dev/null for stdin failed")]
    DevNull(#[source] Errno),
    #[error("opening the output log failed")]
    Log(#[source] AtError),
}

pub struct TaskStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub fn open(task_dir: BorrowedFd<'_>) -> Result<TaskStdio, StdioError> {
    let stdin = sys::open(
        Path::new("/dev/null"),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(StdioError::DevNull)?;
    let stdout = fs_at::open_file(task_dir, STDOUT_LOG, Access::Append).map_err(StdioError::Log)?;
    let stderr = fs_at::open_file(task_dir, STDERR_LOG, Access::Append).map_err(StdioError::Log)?;
    Ok(TaskStdio {
        stdin,
        stdout: stdout.into(),
        stderr: stderr.into(),
    })
}
