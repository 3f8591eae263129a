//! The database thread: it owns the one SQLite connection and runs the
//! callers' closures in arrival order, so no lock is contended and the
//! async executor never blocks on SQLite.
//!
//! Writes that allow it are group-committed: consecutive ones of the same
//! kind waiting in the queue run in one transaction, each inside a
//! savepoint of its own, and share one commit. Durable writes (a submit)
//! share a `synchronous=FULL` commit and its fsync; relaxed ones (a start,
//! a finish the shim recorded) a `synchronous=NORMAL` commit. None is
//! answered before that commit, so "answered" still means "committed"; one
//! that fails rolls back to its savepoint without touching the others; a
//! failed commit fails them all and runs each one's undo.

use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use rusqlite::{Connection, Transaction};

use super::{sql, StoreError};

/// At most this many writes share a commit.
const MAX_GROUP: usize = 64;

pub enum Job {
    /// Runs alone with the connection; manages its own transaction.
    Solo(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs inside a group transaction of its kind (see the module doc).
    Grouped(Commit, Box<dyn DurableJob>),
}

/// How a group's commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// `synchronous=FULL`: fsynced before anyone is answered.
    Durable,
    /// `synchronous=NORMAL`: durable with the next fsynced commit.
    Relaxed,
}

/// What a durable write hands back: its value, and what to undo outside
/// the database (files it created) should the group's commit fail.
pub struct Committed<T> {
    pub value: T,
    pub undo: Option<Box<dyn FnOnce() + Send>>,
}

/// Delivers a durable write's result once the group's commit is decided.
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

pub trait DurableJob: Send {
    /// Runs in the group transaction; `None` when it failed (and answered
    /// already), else how to answer after the commit.
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> Option<Finish>;
    /// The group transaction could not begin: answer with `e`.
    fn fail(self: Box<Self>, e: StoreError);
}

struct Durable<T, E, F> {
    f: F,
    reply: tokio::sync::oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> DurableJob for Durable<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<Committed<T>, E> + Send,
{
    fn run(self: Box<Self>, tx: &Transaction<'_>) -> Option<Finish> {
        let Durable { f, reply } = *self;
        if let Err(e) = super::exec_cached(tx, "SAVEPOINT job") {
            let _ = reply.send(Err(E::from(StoreError::Sqlite("opening a savepoint", e))));
            return None;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)))
            .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)));
        match ran {
            Ok(Committed { value, undo }) => {
                if let Err(e) = super::exec_cached(tx, "RELEASE job") {
                    if let Some(undo) = undo {
                        undo();
                    }
                    let _ =
                        reply.send(Err(E::from(StoreError::Sqlite("releasing a savepoint", e))));
                    return None;
                }
                Some(Box::new(
                    move |commit: Option<&rusqlite::Error>| match commit {
                        None => {
                            let _ = reply.send(Ok(value));
                        }
                        Some(e) => {
                            if let Some(undo) = undo {
                                undo();
                            }
                            let _ = reply.send(Err(E::from(StoreError::GroupCommit(
                                e.to_string(),
                                same_error(e),
                            ))));
                        }
                    },
                ))
            }
            Err(e) => {
                // Its writes go; the group's stay.
                let _ = tx.execute_batch("ROLLBACK TO job; RELEASE job");
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(E::from(e)));
    }
}

/// A copy of a commit error for each job of the group (rusqlite errors are
/// not `Clone`; the code is what callers classify by).
fn same_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => generic(other.to_string()),
    }
}

fn generic(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(message),
    )
}

pub fn grouped_job<T, E, F>(
    commit: Commit,
    f: F,
    reply: tokio::sync::oneshot::Sender<Result<T, E>>,
) -> Job
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&Transaction<'_>) -> Result<Committed<T>, E> + Send + 'static,
{
    Job::Grouped(commit, Box::new(Durable { f, reply }))
}

/// Starts the thread; it ends when the last sender is dropped.
pub fn start(conn: Connection) -> Result<Sender<Job>, StoreError> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("sqlite".into())
        .spawn(move || serve(conn, &queue))
        .map_err(|_| StoreError::WorkerGone)?;
    Ok(jobs)
}

fn serve(mut conn: Connection, queue: &Receiver<Job>) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match queue.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Solo(f) => f(&mut conn),
            Job::Grouped(commit, first) => next = group(&mut conn, commit, first, queue),
        }
    }
}

/// Runs `first` and the jobs of its kind queued right behind it in one
/// transaction; returns the first other job met, to run next.
fn group(
    conn: &mut Connection,
    commit: Commit,
    first: Box<dyn DurableJob>,
    queue: &Receiver<Job>,
) -> Option<Job> {
    let began = match commit {
        Commit::Durable => super::begin(conn),
        Commit::Relaxed => super::begin_relaxed(conn),
    };
    let tx = match began {
        Ok(tx) => tx,
        Err(e) => {
            first.fail(e);
            return None;
        }
    };
    let mut finishes = Vec::new();
    let mut job = Some(first);
    let mut taken = 0;
    let mut after = None;
    while let Some(j) = job.take() {
        finishes.extend(j.run(&tx));
        taken += 1;
        if taken >= MAX_GROUP {
            break;
        }
        match queue.try_recv() {
            Ok(Job::Grouped(c, j)) if c == commit => job = Some(j),
            Ok(other) => after = Some(other),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
    }
    let err = match tx.commit().map_err(sql("committing")) {
        Ok(()) => None,
        Err(StoreError::Sqlite(_, e)) => Some(e),
        Err(other) => Some(generic(other.to_string())),
    };
    for finish in finishes {
        finish(err.as_ref());
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    type Reply = tokio::sync::oneshot::Receiver<Result<(), StoreError>>;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id TEXT PRIMARY KEY);
             CREATE TABLE t (id TEXT PRIMARY KEY,
                 parent TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        c
    }

    /// A durable job inserting `id` (with a dangling deferred reference when
    /// `dangling`), failing instead when `fail`; its undo bumps `undone`.
    fn insert(
        id: &'static str,
        dangling: bool,
        fail: bool,
        undone: &Arc<AtomicUsize>,
    ) -> (Job, Reply) {
        insert_as(Commit::Durable, id, dangling, fail, undone)
    }

    fn insert_as(
        commit: Commit,
        id: &'static str,
        dangling: bool,
        fail: bool,
        undone: &Arc<AtomicUsize>,
    ) -> (Job, Reply) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let undone = Arc::clone(undone);
        let job = grouped_job(
            commit,
            move |t: &Transaction<'_>| -> Result<Committed<()>, StoreError> {
                let parent = dangling.then_some("nobody");
                t.execute(
                    "INSERT INTO t VALUES (?1, ?2)",
                    rusqlite::params![id, parent],
                )
                .map_err(|e| StoreError::Sqlite("insert", e))?;
                if fail {
                    return Err(StoreError::Panicked);
                }
                Ok(Committed {
                    value: (),
                    undo: Some(Box::new(move || {
                        undone.fetch_add(1, Ordering::SeqCst);
                    })),
                })
            },
            tx,
        );
        (job, rx)
    }

    fn ids(c: &Connection) -> Vec<String> {
        let mut st = c.prepare("SELECT id FROM t ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Queues `jobs` and then a probe reading the table, and serves them all.
    fn run(jobs: Vec<Job>) -> Vec<String> {
        let (send, queue) = std::sync::mpsc::channel();
        for j in jobs {
            send.send(j).unwrap();
        }
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        send.send(Job::Solo(Box::new(move |c| *s.lock().unwrap() = ids(c))))
            .unwrap();
        drop(send);
        serve(conn(), &queue);
        let v = seen.lock().unwrap().clone();
        v
    }

    #[test]
    fn a_failing_job_rolls_back_alone() {
        let undone = Arc::new(AtomicUsize::new(0));
        let (a, mut ra) = insert("a", false, false, &undone);
        let (b, mut rb) = insert("b", false, true, &undone);
        let (c, mut rc) = insert("c", false, false, &undone);
        assert_eq!(run(vec![a, b, c]), ["a", "c"]);
        assert!(ra.try_recv().unwrap().is_ok());
        assert!(rb.try_recv().unwrap().is_err());
        assert!(rc.try_recv().unwrap().is_ok());
        assert_eq!(undone.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queued_jobs_share_one_commit_and_fail_together() {
        // c's dangling reference is only checked at COMMIT: a and c failing
        // together shows they were one transaction; both undo.
        let undone = Arc::new(AtomicUsize::new(0));
        let (a, mut ra) = insert("a", false, false, &undone);
        let (c, mut rc) = insert("c", true, false, &undone);
        assert_eq!(run(vec![a, c]), Vec::<String>::new());
        for r in [ra.try_recv().unwrap(), rc.try_recv().unwrap()] {
            match r {
                Err(StoreError::GroupCommit(msg, _)) => {
                    assert!(msg.contains("FOREIGN KEY"), "{msg}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(undone.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn relaxed_jobs_group_among_themselves_only() {
        // a (durable) commits alone; b and c (relaxed) share a commit that
        // c's dangling reference fails.
        let undone = Arc::new(AtomicUsize::new(0));
        let (a, mut ra) = insert("a", false, false, &undone);
        let (b, mut rb) = insert_as(Commit::Relaxed, "b", false, false, &undone);
        let (c, mut rc) = insert_as(Commit::Relaxed, "c", true, false, &undone);
        assert_eq!(run(vec![a, b, c]), ["a"]);
        assert!(ra.try_recv().unwrap().is_ok());
        assert!(matches!(
            rb.try_recv().unwrap(),
            Err(StoreError::GroupCommit(..))
        ));
        assert!(matches!(
            rc.try_recv().unwrap(),
            Err(StoreError::GroupCommit(..))
        ));
        assert_eq!(undone.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_solo_job_ends_the_group() {
        // The solo job between them sees a committed, and b is a group of
        // its own: its failure to commit leaves a in place.
        let undone = Arc::new(AtomicUsize::new(0));
        let (a, mut ra) = insert("a", false, false, &undone);
        let (b, mut rb) = insert("b", true, false, &undone);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let solo = Job::Solo(Box::new(move |c| *s.lock().unwrap() = ids(c)));
        assert_eq!(run(vec![a, solo, b]), ["a"]);
        assert_eq!(*seen.lock().unwrap(), ["a"]);
        assert!(ra.try_recv().unwrap().is_ok());
        assert!(rb.try_recv().unwrap().is_err());
        assert_eq!(undone.load(Ordering::SeqCst), 1);
    }
}
