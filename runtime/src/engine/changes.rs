//! Who waits for a task to change: the streams following its events or
//! its logs. Every committed change of a task (a new event, a new status)
//! wakes its followers, who then read what is new from the store; a task
//! nobody follows costs one map lookup per change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

#[derive(Default)]
pub struct Changes {
    by_task: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// One follower's registration; the task's entry goes with the last one.
pub struct Subscription {
    changes: Arc<Changes>,
    task_id: String,
    rx: watch::Receiver<u64>,
}

impl Changes {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // A plain map: a panic elsewhere cannot leave it half-updated.
        self.by_task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following `task_id`: every change committed from now on
    /// wakes [`Subscription::changed`]. Subscribe before reading the
    /// state, so nothing committed in between is missed.
    pub fn subscribe(self: &Arc<Self>, task_id: &str) -> Subscription {
        let rx = self
            .lock()
            .entry(task_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            changes: Arc::clone(self),
            task_id: task_id.to_string(),
            rx,
        }
    }

    /// A change of `task_id` was committed.
    pub fn changed(&self, task_id: &str) {
        let map = self.lock();
        if let Some(tx) = map.get(task_id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    #[cfg(test)]
    fn followed(&self) -> usize {
        self.lock().len()
    }
}

impl Subscription {
    /// Returns once a change was committed since the last call (or since
    /// the subscription, for the first).
    pub async fn changed(&mut self) {
        // The sender lives in the map for as long as this receiver does.
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.changes.lock();
        // This receiver still counts: it is the last when the count is 1.
        if map
            .get(&self.task_id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(s: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), s.changed())
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_change_wakes_the_followers_of_its_task_only() {
        let c = Arc::new(Changes::default());
        let mut a1 = c.subscribe("a");
        let mut a2 = c.subscribe("a");
        let mut b = c.subscribe("b");
        assert!(!woken(&mut a1).await, "nothing changed yet");
        c.changed("a");
        c.changed("a");
        assert!(woken(&mut a1).await);
        assert!(!woken(&mut a1).await, "two changes before a wait wake once");
        assert!(woken(&mut a2).await);
        assert!(!woken(&mut b).await);
        c.changed("nobody-follows");
        assert_eq!(c.followed(), 2);
        drop(a1);
        assert_eq!(c.followed(), 2);
        drop(a2);
        drop(b);
        assert_eq!(c.followed(), 0);
    }
}
