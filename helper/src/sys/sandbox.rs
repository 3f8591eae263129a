//! The start of a `linux_sandbox` task: a child cloned into the namespaces
//! asked for (a copy of the shim's memory, not shared: it may run while the
//! shim goes on, and may allocate, being a process of its own), which joins the task's cgroups, sets up its mounts,
//! hostname and loopback, and then either becomes the task or, with a pid
//! namespace, is that namespace's init: it forks the task, reaps every
//! process that ends up in the namespace, and once the task is reaped kills
//! the rest, reports the task's wait status and usage to the shim, and
//! exits.
//!
//! Mounts, in a mount namespace: every mount private; the workspace cloned
//! as a detached mount (`open_tree`) while it is still writable; the whole
//! tree made read-only (`mount_setattr`, recursive); the workspace clone
//! attached on top of the workspace by descriptor (`move_mount`, never by
//! path) and made the task's working directory; a tmpfs on `/tmp`; with a
//! pid namespace, a fresh `/proc`.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::process::exit_now;
use super::task_child::{child_fail, exec_child, ChildSetup, ChildStep};

/// The hostname inside a new UTS namespace.
pub const HOSTNAME: &CStr = c"execgo-sandbox";

/// What the sandbox child sets up, beyond the task child's own steps.
#[derive(Debug, Clone, Copy)]
pub struct SandboxSetup {
    pub mount: bool,
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    /// Write end (close-on-exec) of the pipe the namespace's init sends
    /// its [`Report`] on.
    pub report_fd: RawFd,
    /// The directory to make the task's root, opened by the helper.
    pub rootfs: Option<RawFd>,
    /// A spare network namespace the helper made (`lo` up), joined instead
    /// of cloning one (see [`super::netns`]); only with `net`.
    pub netns: Option<RawFd>,
    /// The claim's gate, (read end, write end) of a pipe: the child sets up
    /// the sandbox while the shim makes the task's claim durable, and
    /// starts the task only once the shim has written one byte to it. End
    /// of file (the fsync failed, or the shim is gone) stops it.
    pub gate: Option<(RawFd, RawFd)>,
}

impl SandboxSetup {
    fn clone_flags(&self) -> libc::c_int {
        [
            (self.mount, libc::CLONE_NEWNS),
            (self.pid, libc::CLONE_NEWPID),
            (self.uts, libc::CLONE_NEWUTS),
            (self.ipc, libc::CLONE_NEWIPC),
            (self.net && self.netns.is_none(), libc::CLONE_NEWNET),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, f)| acc | f)
    }
}

/// Clones the sandbox child (fork-like: its own copy of our memory, every
/// signal blocked across the clone and in it until the task's exec).
/// Returns its pid in our namespace: the task itself, or the init of its
/// pid namespace.
pub fn spawn_sandboxed(setup: &ChildSetup<'_>, sb: &SandboxSetup) -> nix::Result<Pid> {
    let flags = (sb.clone_flags() | libc::SIGCHLD) as libc::c_ulong;
    super::signals::clone_with_signals_blocked(|| {
        // SAFETY: clone(2) without CLONE_VM and without a new stack behaves
        // as fork(2) with namespace flags: the child gets a copy of our
        // memory and goes on from here. We have one thread (the shim's
        // rule), so no lock can be held by a thread that does not exist in
        // the child.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_int>(),
                std::ptr::null_mut::<libc::c_int>(),
                0usize,
            )
        };
        if pid == 0 {
            sandbox_child(setup, sb);
        }
        pid
    })
}

/// The sandbox child. Never returns: it execs the task, or exits.
fn sandbox_child(s: &ChildSetup<'_>, sb: &SandboxSetup) -> ! {
    // First: die with the shim. As a pid namespace's init, our death takes
    // every process of the namespace with it, so a shim killed with
    // `kill -9` leaves nothing of the sandbox running. (In a new pid
    // namespace getppid(2) says 0, so the shim's dying just before this
    // cannot be told; outside one it can.)
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || (!sb.pid && nix::unistd::getppid().as_raw() != s.parent)
    {
        child_fail(s.status_fd, ChildStep::ParentDeath);
    }
    if let Some((_, write_end)) = sb.gate {
        // Only the shim may open the gate; without our copy of its end, the
        // shim's death is an end of file.
        // SAFETY: closing our copy of a descriptor the shim keeps.
        unsafe { libc::close(write_end) };
    }
    if let Err(step) = super::task_child::join_cgroups(s) {
        child_fail(s.status_fd, step);
    }
    // One group for the namespace: a signal to it reaches the task, which
    // stays in it (init itself ignores what it has no handler for).
    if nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
        child_fail(s.status_fd, ChildStep::SetPgid);
    }
    let mut cwd = s.cwd;
    if sb.mount {
        match mounts(s.cwd, sb.pid, sb.rootfs) {
            Ok(workspace) => cwd = workspace,
            Err(step) => child_fail(s.status_fd, step),
        }
    }
    if sb.uts {
        // SAFETY: a NUL-terminated static string and its length.
        let r = unsafe { libc::sethostname(HOSTNAME.as_ptr(), HOSTNAME.to_bytes().len()) };
        if r != 0 {
            child_fail(s.status_fd, ChildStep::Hostname);
        }
    }
    if sb.net {
        match sb.netns {
            Some(fd) => {
                if super::netns::enter(fd).is_err() {
                    child_fail(s.status_fd, ChildStep::NetNamespace);
                }
                // SAFETY: closing the descriptor we were given, now joined.
                unsafe { libc::close(fd) };
            }
            None => {
                if super::netns::loopback_up().is_err() {
                    child_fail(s.status_fd, ChildStep::Loopback);
                }
            }
        }
    }
    if let Some((read_end, _)) = sb.gate {
        if !gate_opened(read_end) {
            child_fail(s.status_fd, ChildStep::ClaimGate);
        }
    }
    let task = ChildSetup {
        cgroup_join: &[],
        own_group: false,
        cwd,
        // In a new pid namespace our pid is 1; else we are the task, and
        // the shim is the parent.
        parent: if sb.pid { 1 } else { s.parent },
        ..*s
    };
    if !sb.pid {
        exec_child(&task);
    }
    // The task starts as in the process profile (vfork-style, sharing our
    // memory until its exec: no copy of it is made).
    match super::task_child::spawn_task(&task) {
        Ok(child) => init(child.as_raw(), s.status_fd, sb.report_fd),
        Err(_) => child_fail(s.status_fd, ChildStep::Fork),
    }
}

/// Waits at the claim's gate: true once the shim wrote its byte, false on
/// end of file or an error. The descriptor is closed either way.
fn gate_opened(fd: RawFd) -> bool {
    let mut byte = 0u8;
    let opened = loop {
        // SAFETY: read(2) of one byte into a live local.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 && Errno::last_raw() == libc::EINTR {
            continue;
        }
        break n == 1;
    };
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
    opened
}

/// The pid namespace's init: reaps everything until the task is reaped,
/// then kills and reaps whatever else is left in the namespace, reports
/// the task's status and the namespace's usage, and exits. Nothing of the
/// task is alive when the report is written, so the shim may record the
/// result on it while the kernel still tears the namespaces down.
fn init(task: libc::pid_t, status_fd: RawFd, report_fd: RawFd) -> ! {
    // The shim learns of the exec when every write end is closed: ours too.
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(status_fd) };
    let status = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(2) with a live local for the status.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == task {
            break status;
        }
        if pid < 0 && Errno::last_raw() != libc::EINTR {
            exit_now(0);
        }
    };
    // As the namespace's pid 1, kill(-1) reaches every other process in
    // it, and nothing can enter it from outside.
    // SAFETY: kill(2) and waitpid(2) with a live local for the status.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        let mut ignored: libc::c_int = 0;
        while libc::waitpid(-1, &mut ignored, 0) > 0 || Errno::last_raw() == libc::EINTR {}
    }
    // SAFETY: rusage is plain old data; getrusage(2) fills the local.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let bytes = Report {
        status,
        usage: super::wait::usage_of(&ru),
    }
    .encode();
    // SAFETY: write(2) of a live local array.
    unsafe { libc::write(report_fd, bytes.as_ptr().cast(), bytes.len()) };
    exit_now(0)
}

/// What a pid namespace's init reports when its task is reaped: the
/// task's raw wait status and the usage of every process of the namespace
/// but the init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub status: i32,
    pub usage: super::Rusage,
}

impl Report {
    /// Its size on the pipe: one write, well under `PIPE_BUF`, so it is
    /// read whole or not at all.
    pub const LEN: usize = 4 + 3 * 8;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.status.to_le_bytes());
        let u = &self.usage;
        for (i, v) in [u.user_cpu_ms, u.system_cpu_ms, u.max_rss_bytes]
            .into_iter()
            .enumerate()
        {
            b[4 + i * 8..12 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Report {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[4 + i * 8..12 + i * 8]);
            u64::from_le_bytes(w)
        };
        Report {
            status: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            usage: super::Rusage {
                user_cpu_ms: word(0),
                system_cpu_ms: word(1),
                max_rss_bytes: word(2),
            },
        }
    }
}

/// `mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// The mount steps (see the module header). Returns the descriptor of the
/// writable workspace mount, the task's working directory.
fn mounts(workspace: RawFd, fresh_proc: bool, rootfs: Option<RawFd>) -> Result<RawFd, ChildStep> {
    let check = |r: libc::c_long| if r < 0 { Err(ChildStep::Mounts) } else { Ok(r) };
    // SAFETY: each call is a system call on static NUL-terminated strings,
    // descriptors we own and live locals.
    unsafe {
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) as libc::c_long)?;
        // The descriptor names the workspace in the shim's mount namespace,
        // where the new mount calls refuse to work: the same directory is
        // opened again here, by its path, and must be the same inode.
        let workspace = reopen_here(workspace)?;
        let tree = clone_tree(workspace)?;
        if let Some(root) = rootfs {
            switch_root(root)?;
        }
        let ro = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check(libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &ro as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))?;
        // Over the workspace itself, or at /workspace in a rootfs.
        let (to, to_path, to_flags) = match rootfs {
            None => (workspace, c"", MOVE_MOUNT_T_EMPTY_PATH),
            Some(_) => (libc::AT_FDCWD, c"/workspace", 0),
        };
        check(libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            to,
            to_path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | to_flags,
        ))?;
        if rootfs.is_some() {
            minimal_dev()?;
        }
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777".as_ptr().cast(),
        ) as libc::c_long)?;
        if fresh_proc {
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) as libc::c_long)?;
        }
        Ok(tree)
    }
}

/// Makes `root` (a rootfs directory, opened by the helper) the root of our
/// mount namespace: reopened here and checked, cloned as a mount of its own
/// attached over itself, entered, `pivot_root(".", ".")`, the old root
/// detached.
fn switch_root(root: RawFd) -> Result<(), ChildStep> {
    let check = |r: libc::c_long| if r < 0 { Err(ChildStep::Mounts) } else { Ok(r) };
    let here = reopen_here(root)?;
    let tree = clone_tree(here)?;
    // SAFETY: each call is a system call on static NUL-terminated strings,
    // descriptors we own and live locals.
    unsafe {
        check(libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            here,
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        ))?;
        check(libc::fchdir(tree) as libc::c_long)?;
        check(libc::syscall(
            libc::SYS_pivot_root,
            c".".as_ptr(),
            c".".as_ptr(),
        ))?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as libc::c_long)?;
        check(libc::chdir(c"/".as_ptr()) as libc::c_long)?;
    }
    Ok(())
}

/// A detached, close-on-exec clone of the mount tree at `dir`
/// (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`), to attach elsewhere.
fn clone_tree(dir: RawFd) -> Result<RawFd, ChildStep> {
    // SAFETY: open_tree(2) on a descriptor we own and an empty static path.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir,
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(ChildStep::Mounts);
    }
    Ok(tree as RawFd)
}

/// A tmpfs on `/dev` with only null, zero, full, random, urandom and tty.
fn minimal_dev() -> Result<(), ChildStep> {
    const NODES: [(&CStr, u32, u32); 6] = [
        (c"/dev/null", 1, 3),
        (c"/dev/zero", 1, 5),
        (c"/dev/full", 1, 7),
        (c"/dev/random", 1, 8),
        (c"/dev/urandom", 1, 9),
        (c"/dev/tty", 5, 0),
    ];
    // SAFETY: mount(2), mknod(2) and chmod(2) on static NUL-terminated
    // strings.
    unsafe {
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"mode=755".as_ptr().cast(),
        ) != 0
        {
            return Err(ChildStep::Mounts);
        }
        for (path, major, minor) in NODES {
            let dev = libc::makedev(major, minor);
            if libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev) != 0
                || libc::chmod(path.as_ptr(), 0o666) != 0
            {
                return Err(ChildStep::Mounts);
            }
        }
    }
    Ok(())
}

/// `fd`'s directory, opened by path in our (new) mount namespace; refused
/// unless it is the same inode (a path swapped meanwhile is not followed).
fn reopen_here(fd: RawFd) -> Result<RawFd, ChildStep> {
    use std::os::unix::ffi::OsStrExt;
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| ChildStep::Mounts)?;
    let path =
        std::ffi::CString::new(link.as_os_str().as_bytes()).map_err(|_| ChildStep::Mounts)?;
    // SAFETY: open(2) of a NUL-terminated path we own.
    let here = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if here < 0 {
        return Err(ChildStep::Mounts);
    }
    let same = match (nix::sys::stat::fstat(fd), nix::sys::stat::fstat(here)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    };
    if !same {
        Errno::set_raw(libc::ESTALE);
        return Err(ChildStep::Mounts);
    }
    Ok(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_pipe() {
        let r = Report {
            status: 3 << 8,
            usage: crate::sys::Rusage {
                user_cpu_ms: 12,
                system_cpu_ms: u64::MAX,
                max_rss_bytes: 4096,
            },
        };
        assert_eq!(Report::decode(&r.encode()), r);
    }
}
