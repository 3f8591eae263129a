//! Every `unsafe` call of the helper and the shim, one module per concern;
//! everything else goes through nix's safe wrappers.
//!
//! * [`fd`]: owning opened descriptors, adopting an inherited one, closing
//!   every inherited one.
//! * [`process`]: fork and `_exit`.
//! * [`wait`]: wait4 with the child's resource usage.
//! * [`signals`]: the dispositions start-up resets and the helper sets.
//! * [`detach`]: the shim's detached start (clone, `setsid`, `_Fork`).
//! * [`task_child`]: the task's vfork-style start and its code until
//!   execve.
//! * [`sandbox`]: a `linux_sandbox` task's start: namespaces, mounts, the
//!   namespace's init.
//! * [`stack`]: the stacks those two clones run on.
//!
//! Neither the helper nor the shim ever starts a thread: the forks and
//! clones here rely on it (see each module).

pub mod detach;
pub mod fd;
pub mod netns;
pub mod process;
pub mod sandbox;
pub mod signals;
mod stack;
pub mod task_child;
pub mod wait;

pub use detach::{spawn_detached, DetachError};
pub use fd::{adopt_fd, close_fds_except, open, open_dir_beneath, openat, Mounts};
pub use netns::NetnsSpare;
pub use process::{drop_bounding_set, exit_now, fork, thread_count, Forked};
pub use sandbox::{spawn_sandboxed, Report, SandboxSetup};
pub use signals::{ignore_sigpipe, unignore_inherited_signals};
pub use task_child::{spawn_task, ChildSetup, ChildStep, ExecImage, CHILD_STATUS_LEN};
pub use wait::{wait4, Rusage};
