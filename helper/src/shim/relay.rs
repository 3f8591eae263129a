//! The task's output, relayed into its logs up to a cap
//! (`LaunchLimits::max_log_bytes`).
//!
//! The task's stdout and stderr are the write ends of two pipes, not the
//! log files: a file handed to the task would take whatever it writes
//! (many processes, `O_APPEND` or not, children that inherit it), and no
//! limit of ours could hold against a descriptor it owns. The shim reads
//! the pipes in its poll loop and moves the bytes into `stdout.log` and
//! `stderr.log`, with splice(2) (no copy through user space) while a log
//! is below the cap, and reads and drops them past it, so the task never
//! blocks on a full pipe nor gets `EPIPE`: its output simply stops
//! reaching the disk. A log that cannot be written (`ENOSPC`, `EDQUOT`)
//! is treated as capped from then on, for the same reason.
//!
//! A log is written at an explicit offset (splice's `off_out`, pwrite(2)):
//! splice refuses a file opened `O_APPEND`, and the shim is the log's only
//! writer. The pipes are asked for 4 MiB of buffer (`F_SETPIPE_SZ`), else
//! 1 MiB (the default `pipe-max-size`, all an unprivileged shim may ask
//! for), else the kernel's 64 KiB serve: with 64 KiB the task and the shim
//! take turns every 64 KiB; with 4 MiB they overlap on two CPUs, and a
//! task writing 256 MiB ran as fast as onto the file directly
//! (`docs/benchmarks.md`). The price is kernel memory while a pipe is
//! full: up to 8 MiB per task whose shim falls behind.
//!
//! The relay ends when every writer has closed its end (end of file on
//! both pipes): the shim's own copies go right after the spawn, the task's
//! with its processes. After the task's end the shim drains what is left
//! ([`Relay::drain`]), waiting a bounded time for writers that outlive the
//! clean-up (a process that escaped a task without cgroups).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::deadline;

/// Bytes moved per splice or read call (at most what a pipe holds).
const CHUNK: usize = 4 << 20;
/// Bytes moved from one pipe before the poll loop looks at its other
/// descriptors again (signals, the kill FIFO): a task that writes without
/// pause must not starve them.
const BUDGET: u64 = 8 << 20;
/// The pipe buffers asked for, largest first: 4 MiB where the shim may
/// exceed `/proc/sys/fs/pipe-max-size` (root), else that default limit.
const PIPE_BYTES: [i32; 2] = [4 << 20, 1 << 20];

/// One output stream: a pipe the task writes, a log the shim writes.
#[derive(Debug)]
pub struct Stream {
    pipe: OwnedFd,
    log: File,
    /// Bytes in the log, which is where the next write goes.
    written: u64,
    cap: u64,
    /// Output was dropped: past the cap, or after the log failed.
    dropped: bool,
    /// Writing the log failed; everything is dropped from then on.
    failed: Option<Errno>,
    /// splice works for this log (else read and pwrite).
    splice: bool,
    /// Every writer has closed the pipe.
    eof: bool,
}

impl Stream {
    /// The relay of `log` (opened for writing, without `O_APPEND`, its
    /// size where the task's output starts) and the pipe's write end for
    /// the task.
    pub fn new(log: File, cap: u64) -> Result<(Stream, OwnedFd), Errno> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Only the shim's end: the task's is another open file description
        // and stays blocking, as a task expects its stdout to be.
        fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        for size in PIPE_BYTES {
            if fcntl(read.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size)).is_ok() {
                break;
            }
        }
        let written = log.metadata().map_err(io_errno)?.len();
        Ok((
            Stream {
                pipe: read,
                log,
                written,
                cap,
                dropped: false,
                failed: None,
                splice: true,
                eof: false,
            },
            write,
        ))
    }

    /// Whether output was dropped (the log reached its cap, or could not
    /// be written).
    pub fn capped(&self) -> bool {
        self.dropped
    }

    pub fn is_open(&self) -> bool {
        !self.eof
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Moves what the pipe holds into the log (or drops it past the cap),
    /// up to `budget` bytes, without blocking. Returns the bytes taken
    /// from the pipe; `eof` is set when every writer is gone.
    pub fn pump(&mut self, budget: u64) -> u64 {
        let mut moved = 0;
        while moved < budget && !self.eof {
            match self.step() {
                Ok(0) => self.eof = true,
                Ok(n) => moved += n as u64,
                Err(Errno::EINTR) => {}
                Err(_) => break, // EAGAIN: empty for now
            }
        }
        moved
    }

    /// One transfer: into the log while there is room, else dropped.
    fn step(&mut self) -> Result<usize, Errno> {
        let room = usize::try_from(self.cap.saturating_sub(self.written)).unwrap_or(usize::MAX);
        if room == 0 || self.failed.is_some() {
            return self.discard();
        }
        let len = room.min(CHUNK);
        if self.splice {
            let mut off = i64::try_from(self.written).map_err(|_| Errno::EFBIG)?;
            match splice(
                &self.pipe,
                None,
                &self.log,
                Some(&mut off),
                len,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(n) => {
                    self.written += n as u64;
                    return Ok(n);
                }
                // A file system without splice support.
                Err(Errno::EINVAL | Errno::ENOSYS) => self.splice = false,
                Err(e @ (Errno::EAGAIN | Errno::EINTR)) => return Err(e),
                Err(e) => {
                    // The bytes are still in the pipe: dropped next time.
                    self.fail(e);
                    return self.discard();
                }
            }
        }
        self.copy(len)
    }

    /// read(2) then pwrite(2): the fallback where splice does not work.
    fn copy(&mut self, len: usize) -> Result<usize, Errno> {
        let mut buf = vec![0u8; len.min(64 << 10)];
        let n = nix::unistd::read(self.pipe.as_raw_fd(), &mut buf)?;
        let mut done = 0;
        while done < n {
            let off = i64::try_from(self.written).map_err(|_| Errno::EFBIG)?;
            match nix::sys::uio::pwrite(&self.log, &buf[done..n], off) {
                Ok(w) => {
                    done += w;
                    self.written += w as u64;
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    self.fail(e);
                    self.dropped = true;
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Reads and drops what the pipe holds.
    fn discard(&mut self) -> Result<usize, Errno> {
        let mut buf = [0u8; 64 << 10];
        let n = nix::unistd::read(self.pipe.as_raw_fd(), &mut buf)?;
        if n > 0 {
            self.dropped = true;
        }
        Ok(n)
    }

    fn fail(&mut self, e: Errno) {
        if self.failed.is_none() {
            tracing::warn!(
                target: crate::logging::TARGET,
                error = %e,
                written = self.written,
                "writing a task log failed; dropping the rest of this output"
            );
        }
        self.failed = Some(e);
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Both streams of a task, `[stdout, stderr]`.
#[derive(Debug, Default)]
pub struct Relay {
    pub streams: Vec<Stream>,
}

impl Relay {
    /// Open pipes, with their index, for a poll set.
    pub fn open_fds(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>)> {
        self.streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_open())
            .map(|(i, s)| (i, s.fd()))
    }

    /// Pumps stream `i` up to the per-pass budget.
    pub fn pump(&mut self, i: usize) {
        if let Some(s) = self.streams.get_mut(i) {
            s.pump(BUDGET);
        }
    }

    /// Pumps every open stream until its pipe is empty, without waiting.
    pub fn pump_all(&mut self) {
        for s in &mut self.streams {
            while s.pump(BUDGET) > 0 {}
        }
    }

    /// Relays until every writer has closed its end, or until `patience`
    /// passes without any byte arriving (a writer outlived the task's
    /// clean-up: what it writes later is lost when the shim exits).
    pub fn drain(&mut self, patience: Duration) {
        let mut quiet_since = Instant::now();
        loop {
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            let mut idx = Vec::new();
            for (i, fd) in self.open_fds() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                idx.push(i);
            }
            if fds.is_empty() {
                return;
            }
            let now = Instant::now();
            let timeout = deadline::poll_timeout_ms(now, deadline::after(quiet_since, patience));
            if timeout == 0 {
                return;
            }
            let ready: Vec<usize> = match poll(
                &mut fds,
                PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE),
            ) {
                Ok(0) => return,
                Ok(_) => fds
                    .iter()
                    .zip(&idx)
                    .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(_, i)| *i)
                    .collect(),
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            drop(fds);
            for i in ready {
                if self.streams[i].pump(BUDGET) > 0 {
                    quiet_since = Instant::now();
                }
            }
        }
    }

    /// Whether stream `i` dropped output.
    pub fn capped(&self, i: usize) -> bool {
        self.streams.get(i).is_some_and(Stream::capped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stream(cap: u64) -> (Stream, File, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("stdout.log")).unwrap();
        let (s, w) = Stream::new(log, cap).unwrap();
        (s, File::from(w), dir)
    }

    fn log(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("stdout.log")).unwrap()
    }

    #[test]
    fn below_the_cap_everything_is_kept() {
        let (mut s, mut w, dir) = stream(1 << 20);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        while s.is_open() {
            s.pump(BUDGET);
        }
        assert_eq!(log(&dir), b"hello\n");
        assert!(!s.capped());
    }

    #[test]
    fn past_the_cap_output_is_dropped_and_the_writer_never_blocks() {
        let (mut s, mut w, dir) = stream(1000);
        // More than the pipe holds: the writer only finishes if the relay
        // keeps draining past the cap.
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let expect = data[..1000].to_vec();
        let writer = std::thread::spawn(move || w.write_all(&data));
        while s.is_open() {
            s.pump(BUDGET);
            std::thread::yield_now();
        }
        writer.join().unwrap().unwrap();
        assert_eq!(log(&dir), expect);
        assert!(s.capped());
    }

    #[test]
    fn exactly_the_cap_is_not_capped() {
        let (mut s, mut w, dir) = stream(5);
        w.write_all(b"12345").unwrap();
        drop(w);
        while s.is_open() {
            s.pump(BUDGET);
        }
        assert_eq!(log(&dir), b"12345");
        assert!(!s.capped(), "nothing was dropped");
    }

    #[test]
    fn the_fallback_copy_honours_the_cap() {
        let (mut s, mut w, dir) = stream(3);
        s.splice = false;
        w.write_all(b"abcdef").unwrap();
        drop(w);
        while s.is_open() {
            s.pump(BUDGET);
        }
        assert_eq!(log(&dir), b"abc");
        assert!(s.capped());
    }

    #[test]
    fn an_unwritable_log_drops_output_without_blocking() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let (mut s, w) = Stream::new(full, 1 << 20).unwrap();
        let mut w = File::from(w);
        let writer = std::thread::spawn(move || w.write_all(&vec![7u8; 3 << 20]));
        while s.is_open() {
            s.pump(BUDGET);
            std::thread::yield_now();
        }
        writer.join().unwrap().unwrap();
        assert!(s.capped());
        assert!(s.failed.is_some());
    }

    #[test]
    fn drain_waits_for_writers_but_not_forever() {
        let (s, mut w, dir) = stream(1 << 20);
        let mut relay = Relay { streams: vec![s] };
        w.write_all(b"late").unwrap();
        let started = Instant::now();
        relay.drain(Duration::from_millis(100));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(log(&dir), b"late", "what was there is taken");
        assert!(relay.streams[0].is_open(), "a writer is still there");
        drop(w);
        relay.drain(Duration::from_secs(10));
        assert!(!relay.streams[0].is_open());
    }
}
