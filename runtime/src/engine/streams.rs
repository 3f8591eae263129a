//! Following a task as it goes: its events as they are committed, its
//! logs as the task writes them. A stream is pulled by the HTTP body that
//! sends it, one item at a time, so a slow reader holds one chunk and no
//! more (back-pressure, not buffering). Followers wake on the task's
//! committed changes (`changes`) and on writes to the log file (an
//! inotify watch while someone follows), never on a timer; a follower
//! counts against `--max-streams` until its stream is dropped, and every
//! stream ends when the server shuts down.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use execgo_runtime_protocol::TaskStatus;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::arrivals::Arrival;
use super::changes::Subscription;
use super::files::{open_regular, STDERR, STDOUT};
use super::{view, Engine, EngineError};
use crate::model::EventRecord;
use crate::store;

/// Largest piece of a log sent at once.
const CHUNK: usize = 64 * 1024;

/// An idle event stream sends a comment this often, so a proxy keeps it
/// open and a vanished client is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogName {
    Stdout,
    Stderr,
}

impl LogName {
    pub fn parse(s: &str) -> Option<LogName> {
        match s {
            "stdout" => Some(LogName::Stdout),
            "stderr" => Some(LogName::Stderr),
            _ => None,
        }
    }

    fn file(self) -> &'static str {
        match self {
            LogName::Stdout => STDOUT,
            LogName::Stderr => STDERR,
        }
    }
}

/// What an event stream sends.
#[derive(Debug)]
pub enum EventItem {
    Event(EventRecord),
    KeepAlive,
}

/// A log read: its bytes from `start` to `end` (exclusive), or on for as
/// long as the task may write when following.
pub struct LogRead {
    /// The file's length when it was opened.
    pub len: u64,
    pub start: u64,
    /// Where a bounded read stops; `None` when following.
    pub end: Option<u64>,
    pub body: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>,
}

/// Where a log read starts and stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSpan {
    /// From `offset`, to the end as it is now.
    From(u64),
    /// From `offset`, and on as the task writes, until the task is over
    /// and the file drained.
    Follow(u64),
    /// A byte range `first..=last` (`last` clipped to the length).
    Range { first: u64, last: Option<u64> },
    /// The last `n` bytes.
    Suffix(u64),
}

impl Engine {
    /// A place among the concurrent streams, or `resource_limit_exceeded`.
    pub fn stream_permit(&self) -> Result<OwnedSemaphorePermit, EngineError> {
        Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| EngineError::TooManyStreams(self.cfg.args.max_streams))
    }

    /// Whether the task is over (or gone), and its events after `after`.
    async fn new_events(
        &self,
        task_id: &str,
        after: i64,
    ) -> Result<(bool, Vec<EventRecord>), EngineError> {
        let id = task_id.to_string();
        self.store
            .read(move |c| -> Result<_, EngineError> {
                // The status first: an event is committed with its status,
                // so a terminal status read here has its event below.
                let over = store::status_of(c, &id)?.is_none_or(TaskStatus::is_terminal);
                let events = store::events_after(c, &id, after)?;
                Ok((over, events.into_iter().map(view::event_record).collect()))
            })
            .await
    }

    async fn is_over(&self, task_id: &str) -> Result<bool, EngineError> {
        let id = task_id.to_string();
        self.store
            .read(move |c| -> Result<_, EngineError> {
                Ok(store::status_of(c, &id)?.is_none_or(TaskStatus::is_terminal))
            })
            .await
    }

    /// The task's events after `after` (a `Last-Event-ID`), then each one
    /// as it is committed; ends after the task's terminal event.
    pub async fn follow_events(
        self: &Arc<Self>,
        task_id: &str,
        after: i64,
        permit: OwnedSemaphorePermit,
    ) -> Result<impl Stream<Item = EventItem> + Send + 'static, EngineError> {
        let sub = self.changes.subscribe(task_id);
        if !self.exists(task_id).await? {
            return Err(EngineError::NotFound(task_id.to_string()));
        }
        let state = EventFollow {
            engine: Arc::clone(self),
            task_id: task_id.to_string(),
            last: after,
            sub,
            pending: VecDeque::new(),
            read: true,
            over: false,
            stop: self.stopping.subscribe(),
            _permit: permit,
        };
        Ok(futures_util::stream::unfold(state, EventFollow::next))
    }

    async fn exists(&self, task_id: &str) -> Result<bool, EngineError> {
        let id = task_id.to_string();
        self.store
            .read(move |c| store::exists(c, &id).map_err(EngineError::from))
            .await
    }

    /// Reads one of the task's logs over `span`. Following holds `permit`
    /// until the stream is dropped.
    pub async fn read_log(
        self: &Arc<Self>,
        task_id: &str,
        name: LogName,
        span: LogSpan,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<LogRead, EngineError> {
        let sub = self.changes.subscribe(task_id);
        if !self.exists(task_id).await? {
            return Err(EngineError::NotFound(task_id.to_string()));
        }
        let path = self.task_dir(task_id).path(name.file());
        // A watch before the first read: no write after it goes unseen.
        let watch = match (&span, &self.arrivals) {
            (LogSpan::Follow(_), Some(a)) => match a.watch_writes(&path) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "watching a log failed; polling it");
                    None
                }
            },
            _ => None,
        };
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
            let f = open_regular(&path)?;
            let len = f.metadata()?.len();
            Ok((f, len))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("opening the log: {e}")))?
        .map_err(|e| EngineError::Internal(format!("opening the task's {name:?} log: {e}")))?;
        let (file, len) = file;
        let (start, end) = match span {
            LogSpan::From(o) => (o, Some(len.max(o))),
            LogSpan::Follow(o) => (o, None),
            LogSpan::Range { first, last } => {
                if first >= len {
                    return Err(EngineError::RangeNotSatisfiable(len));
                }
                let last = last.map_or(len - 1, |l| l.min(len - 1));
                if last < first {
                    return Err(EngineError::RangeNotSatisfiable(len));
                }
                (first, Some(last + 1))
            }
            LogSpan::Suffix(n) => {
                if n == 0 {
                    return Err(EngineError::RangeNotSatisfiable(len));
                }
                (len.saturating_sub(n), Some(len))
            }
        };
        let over = match span {
            LogSpan::Follow(_) => self.is_over(task_id).await?,
            _ => true,
        };
        let state = LogFollow {
            engine: Arc::clone(self),
            task_id: task_id.to_string(),
            file: Arc::new(file),
            offset: start,
            end,
            sub,
            watch,
            over,
            done: false,
            stop: self.stopping.subscribe(),
            _permit: permit,
        };
        Ok(LogRead {
            len,
            start,
            end,
            body: Box::pin(futures_util::stream::unfold(state, LogFollow::next)),
        })
    }

    /// Ends every stream (the server is stopping: its graceful shutdown
    /// waits for open responses).
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }
}

struct EventFollow {
    engine: Arc<Engine>,
    task_id: String,
    last: i64,
    sub: Subscription,
    pending: VecDeque<EventRecord>,
    /// Something may have been committed since the last read.
    read: bool,
    over: bool,
    stop: tokio::sync::watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl EventFollow {
    async fn next(mut self) -> Option<(EventItem, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((EventItem::Event(e), self));
            }
            if self.over || *self.stop.borrow() {
                return None;
            }
            if self.read {
                self.read = false;
                match self.engine.new_events(&self.task_id, self.last).await {
                    Ok((over, events)) => {
                        self.over = over;
                        if let Some(e) = events.last() {
                            self.last = e.seq;
                        }
                        self.pending.extend(events);
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %self.task_id, error = %super::error_chain(&e), "an event stream ended: reading events failed");
                        return None;
                    }
                }
                continue;
            }
            let idle = tokio::select! {
                () = self.sub.changed() => false,
                () = tokio::time::sleep(KEEP_ALIVE) => true,
                _ = self.stop.wait_for(|s| *s) => return None,
            };
            if idle {
                return Some((EventItem::KeepAlive, self));
            }
            self.read = true;
        }
    }
}

/// The largest offset a file can have (`loff_t`): the most a log offset
/// may be.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

struct LogFollow {
    engine: Arc<Engine>,
    task_id: String,
    file: Arc<File>,
    offset: u64,
    end: Option<u64>,
    sub: Subscription,
    watch: Option<Arrival>,
    /// The task was over before the last read began.
    over: bool,
    done: bool,
    stop: tokio::sync::watch::Receiver<bool>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl LogFollow {
    async fn next(mut self) -> Option<(std::io::Result<bytes::Bytes>, Self)> {
        loop {
            if self.done || *self.stop.borrow() {
                return None;
            }
            let want = match self.end {
                Some(end) if self.offset >= end => return None,
                Some(end) => CHUNK.min((end - self.offset) as usize),
                None => CHUNK,
            };
            // A read whose end would pass the largest file offset is
            // EINVAL, not end of file; nothing can be there anyway.
            let want = want
                .min(usize::try_from(MAX_OFFSET.saturating_sub(self.offset)).unwrap_or(usize::MAX));
            let over_before_read = self.over;
            let (file, offset) = (Arc::clone(&self.file), self.offset);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = file.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match read {
                Ok(buf) if !buf.is_empty() => {
                    self.offset += buf.len() as u64;
                    return Some((Ok(bytes::Bytes::from(buf)), self));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
            // At the end of what is there.
            if self.end.is_some() || over_before_read {
                return None;
            }
            self.wait().await;
        }
    }

    /// Until the file may have grown or the task may be over.
    async fn wait(&mut self) {
        enum Woke {
            Written,
            WatchGone,
            Changed,
            Stop,
        }
        let poll = Duration::from_millis(self.engine.cfg.args.dispatch_poll_interval_ms);
        let LogFollow {
            watch, sub, stop, ..
        } = self;
        let written = async {
            match watch.as_mut() {
                Some(w) => match w.arrived().await {
                    Ok(()) => Woke::Written,
                    Err(_) => Woke::WatchGone,
                },
                // No inotify: look again now and then.
                None => {
                    tokio::time::sleep(poll).await;
                    Woke::Written
                }
            }
        };
        let woke = tokio::select! {
            w = written => w,
            () = sub.changed() => Woke::Changed,
            _ = stop.wait_for(|s| *s) => Woke::Stop,
        };
        match woke {
            Woke::Written => {}
            Woke::WatchGone => self.watch = None,
            Woke::Changed => {
                self.over = self.engine.is_over(&self.task_id).await.unwrap_or(true);
            }
            Woke::Stop => self.done = true,
        }
    }
}
