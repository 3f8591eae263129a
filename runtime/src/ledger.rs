//! The resource ledger: what this runtime can hold (task slots, memory,
//! pids), what running tasks have reserved, per-tenant quotas, and the
//! admission policy of the dispatcher.
//!
//! Policy: tasks start in submission order. A task that does not fit now is
//! passed over and later tasks may start ahead of it (backfill), but once it
//! has been passed over for [`STARVATION_LIMIT`], nothing that competes for
//! the same pool (the runtime's, or its tenant's) starts before it. So a
//! large task waits at most for running tasks to end, never forever.
//! Backfill looks at most [`BACKFILL_WINDOW`] tasks past the free slots, so
//! a dispatch pass costs the same with ten or ten thousand tasks queued.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::TenantQuota;

pub const STARVATION_LIMIT: Duration = Duration::from_secs(30);

/// How many waiting tasks past the number of free slots one dispatch pass
/// considers (the oldest first).
pub const BACKFILL_WINDOW: u64 = 64;

/// What one task holds while it is launched: a task slot plus its own
/// `limits.memory_bytes` and `limits.pids_max`. `{task_slots,
/// memory_bytes?, pids?}` on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub task_slots: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Reservation {
    /// The reservation of a task with these limits.
    pub fn for_limits(memory_bytes: Option<u64>, pids_max: Option<u64>) -> Reservation {
        Reservation {
            task_slots: 1,
            memory_bytes,
            pids: pids_max,
        }
    }
}

/// Amounts of each resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    pub task_slots: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Amounts {
    fn add(&mut self, r: &Reservation) {
        self.task_slots += r.task_slots;
        if let Some(m) = r.memory_bytes {
            *self.memory_bytes.get_or_insert(0) += m;
        }
        if let Some(p) = r.pids {
            *self.pids.get_or_insert(0) += p;
        }
    }

    fn sub(&mut self, r: &Reservation) {
        self.task_slots = self.task_slots.saturating_sub(r.task_slots);
        if let (Some(have), Some(m)) = (self.memory_bytes.as_mut(), r.memory_bytes) {
            *have = have.saturating_sub(m);
        }
        if let (Some(have), Some(p)) = (self.pids.as_mut(), r.pids) {
            *have = have.saturating_sub(p);
        }
    }

    /// Whether `used + r` stays within `self` (a missing limit is unlimited).
    fn admits(&self, used: &Amounts, r: &Reservation) -> bool {
        let within = |limit: Option<u64>, used: Option<u64>, want: Option<u64>| match (limit, want)
        {
            (Some(l), Some(w)) => used.unwrap_or(0).saturating_add(w) <= l,
            _ => true,
        };
        used.task_slots + r.task_slots <= self.task_slots
            && within(self.memory_bytes, used.memory_bytes, r.memory_bytes)
            && within(self.pids, used.pids, r.pids)
    }

    /// `self - used`, per key present in `self`.
    fn minus(&self, used: &Amounts) -> Amounts {
        Amounts {
            task_slots: self.task_slots.saturating_sub(used.task_slots),
            memory_bytes: self
                .memory_bytes
                .map(|l| l.saturating_sub(used.memory_bytes.unwrap_or(0))),
            pids: self.pids.map(|l| l.saturating_sub(used.pids.unwrap_or(0))),
        }
    }
}

/// An active reservation.
#[derive(Debug, Clone)]
pub struct Held {
    pub tenant: Option<String>,
    pub reservation: Reservation,
}

/// A task waiting to start.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub task_id: String,
    pub tenant: Option<String>,
    pub reservation: Reservation,
}

/// Why a candidate cannot start now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pool {
    Runtime,
    Tenant(String),
}

pub struct Ledger {
    pub capacity: Amounts,
    quotas: BTreeMap<String, Amounts>,
    held: HashMap<String, Held>,
    reserved: Amounts,
    tenant_reserved: HashMap<String, Amounts>,
    /// When each passed-over task was first passed over.
    passed_over: HashMap<String, Instant>,
}

impl Ledger {
    pub fn new(capacity: Amounts, quotas: &[TenantQuota]) -> Self {
        Ledger {
            capacity,
            quotas: quotas
                .iter()
                .map(|q| {
                    (
                        q.tenant.clone(),
                        Amounts {
                            task_slots: q.slots,
                            memory_bytes: q.memory_bytes,
                            pids: q.pids,
                        },
                    )
                })
                .collect(),
            held: HashMap::new(),
            reserved: Amounts {
                task_slots: 0,
                memory_bytes: capacity.memory_bytes.map(|_| 0),
                pids: capacity.pids.map(|_| 0),
            },
            tenant_reserved: HashMap::new(),
            passed_over: HashMap::new(),
        }
    }

    /// Whether `r` could ever fit, with nothing else running: `Err` names the
    /// pool and resource that is too small.
    pub fn could_ever_fit(&self, tenant: Option<&str>, r: &Reservation) -> Result<(), String> {
        let empty = Amounts::default();
        if !self.capacity.admits(&empty, r) {
            return Err("runtime capacity".to_string());
        }
        if let Some(q) = tenant.and_then(|t| self.quotas.get(t)) {
            if !q.admits(&empty, r) {
                return Err(format!("the quota of tenant '{}'", tenant.unwrap_or("")));
            }
        }
        Ok(())
    }

    fn blocked_on(&self, c: &Candidate) -> Option<Pool> {
        if !self.capacity.admits(&self.reserved, &c.reservation) {
            return Some(Pool::Runtime);
        }
        if let Some(t) = &c.tenant {
            if let Some(q) = self.quotas.get(t) {
                let used = self.tenant_reserved.get(t).copied().unwrap_or_default();
                if !q.admits(&used, &c.reservation) {
                    return Some(Pool::Tenant(t.clone()));
                }
            }
        }
        None
    }

    /// Picks, in order, the candidates that start now and reserves for them.
    /// Candidates are taken one at a time and none once every slot is
    /// used, so a lazy scan of the queue reads only what a pass needs.
    pub fn admit(
        &mut self,
        candidates: impl IntoIterator<Item = Candidate>,
        now: Instant,
    ) -> Vec<Candidate> {
        let mut chosen = Vec::new();
        let mut held_back: Vec<Pool> = Vec::new();
        let mut candidates = candidates.into_iter();
        // No slot left: nothing further could start, so nothing further is
        // being passed over (or read).
        while self.slots_free() > 0 {
            let Some(c) = candidates.next() else {
                break;
            };
            let tenant_pool = c.tenant.clone().map(Pool::Tenant);
            let competes = |p: &Pool| *p == Pool::Runtime || Some(p) == tenant_pool.as_ref();
            if held_back.iter().any(competes) {
                continue;
            }
            match self.blocked_on(&c) {
                None => {
                    self.reserve(&c.task_id, c.tenant.clone(), c.reservation.clone());
                    self.passed_over.remove(&c.task_id);
                    chosen.push(c);
                }
                Some(pool) => {
                    let since = *self.passed_over.entry(c.task_id.clone()).or_insert(now);
                    if now.duration_since(since) >= STARVATION_LIMIT {
                        held_back.push(pool);
                    }
                }
            }
        }
        chosen
    }

    pub fn reserve(&mut self, task_id: &str, tenant: Option<String>, r: Reservation) {
        if self.held.contains_key(task_id) {
            return;
        }
        self.reserved.add(&r);
        if let Some(t) = &tenant {
            self.tenant_reserved.entry(t.clone()).or_default().add(&r);
        }
        self.held.insert(
            task_id.to_string(),
            Held {
                tenant,
                reservation: r,
            },
        );
    }

    /// Releases a task's reservation; `false` when it held none.
    pub fn release(&mut self, task_id: &str) -> bool {
        self.passed_over.remove(task_id);
        let Some(h) = self.held.remove(task_id) else {
            return false;
        };
        self.reserved.sub(&h.reservation);
        if let Some(t) = &h.tenant {
            if let Some(tr) = self.tenant_reserved.get_mut(t) {
                tr.sub(&h.reservation);
                if tr.task_slots == 0 {
                    self.tenant_reserved.remove(t);
                }
            }
        }
        true
    }

    /// Forgets a task that left the queue without starting.
    pub fn forget_waiting(&mut self, task_id: &str) {
        self.passed_over.remove(task_id);
    }

    pub fn reserved(&self) -> Amounts {
        self.reserved
    }

    pub fn available(&self) -> Amounts {
        self.capacity.minus(&self.reserved)
    }

    /// How many waiting tasks a dispatch pass should look at.
    pub fn scan_limit(&self, max_queued: u64) -> u64 {
        max_queued.min(self.slots_free().saturating_add(BACKFILL_WINDOW))
    }

    pub fn slots_free(&self) -> u64 {
        self.capacity
            .task_slots
            .saturating_sub(self.reserved.task_slots)
    }

    /// Tenants to show: every configured one, and any holding a reservation.
    pub fn tenants(&self) -> Vec<TenantView> {
        let mut names: Vec<&String> = self.quotas.keys().collect();
        for t in self.tenant_reserved.keys() {
            if !self.quotas.contains_key(t) {
                names.push(t);
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|t| {
                let reserved = self.tenant_reserved.get(t).copied().unwrap_or_default();
                let quota = self.quotas.get(t).copied();
                TenantView {
                    tenant: t.clone(),
                    available: quota.map(|q| q.minus(&reserved)),
                    quota,
                    reserved,
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Amounts>,
    pub reserved: Amounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<Amounts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(mem: Option<u64>) -> Reservation {
        Reservation {
            task_slots: 1,
            memory_bytes: mem,
            pids: None,
        }
    }

    fn cand(id: &str, tenant: Option<&str>, mem: Option<u64>) -> Candidate {
        Candidate {
            task_id: id.into(),
            tenant: tenant.map(Into::into),
            reservation: res(mem),
        }
    }

    fn ledger(slots: u64, mem: u64, quotas: &[TenantQuota]) -> Ledger {
        Ledger::new(
            Amounts {
                task_slots: slots,
                memory_bytes: Some(mem),
                pids: Some(1000),
            },
            quotas,
        )
    }

    fn ids(v: &[Candidate]) -> Vec<&str> {
        v.iter().map(|c| c.task_id.as_str()).collect()
    }

    #[test]
    fn a_pass_reads_only_the_candidates_it_needs() {
        let mut l = ledger(3, 100, &[]);
        let queue: Vec<Candidate> = (0..64)
            .map(|i| cand(&format!("t{i}"), None, Some(if i == 1 { 500 } else { 1 })))
            .collect();
        let mut pulled = 0;
        let chosen = l.admit(
            queue.iter().cloned().inspect(|_| pulled += 1),
            Instant::now(),
        );
        // t1 never fits and is passed over; the third slot goes to t3, and
        // nothing past it is read.
        assert_eq!(ids(&chosen), ["t0", "t2", "t3"]);
        assert_eq!(pulled, 4);
        let mut pulled = 0;
        assert!(l
            .admit(
                queue.iter().cloned().inspect(|_| pulled += 1),
                Instant::now()
            )
            .is_empty());
        assert_eq!(pulled, 0, "no slot free: nothing read");
    }

    #[test]
    fn fifo_within_slots() {
        let mut l = ledger(2, 100, &[]);
        let now = Instant::now();
        let c = [
            cand("a", None, None),
            cand("b", None, None),
            cand("c", None, None),
        ];
        assert_eq!(ids(&l.admit(c.clone(), now)), ["a", "b"]);
        assert_eq!(l.slots_free(), 0);
        assert!(l.release("a"));
        assert!(!l.release("a"));
        assert_eq!(ids(&l.admit(c[2..].to_vec(), now)), ["c"]);
    }

    #[test]
    fn a_full_pool_passes_nobody_over_and_the_scan_is_bounded() {
        let mut l = ledger(1, 100, &[]);
        let now = Instant::now();
        let c = [cand("a", None, None), cand("b", None, None)];
        assert_eq!(ids(&l.admit(c.clone(), now)), ["a"]);
        // b could not have started: it is not "passed over", so no
        // starvation clock runs for it.
        assert!(l.passed_over.is_empty());
        assert_eq!(l.scan_limit(10_000), BACKFILL_WINDOW);
        assert!(l.release("a"));
        assert_eq!(l.scan_limit(10_000), 1 + BACKFILL_WINDOW);
        assert_eq!(l.scan_limit(5), 5);
    }

    #[test]
    fn tenant_quota_blocks_only_that_tenant() {
        let q = TenantQuota {
            tenant: "a".into(),
            slots: 1,
            memory_bytes: None,
            pids: None,
        };
        let mut l = ledger(4, 100, &[q]);
        let now = Instant::now();
        let c = [
            cand("a1", Some("a"), None),
            cand("a2", Some("a"), None),
            cand("b1", Some("b"), None),
        ];
        assert_eq!(ids(&l.admit(c.clone(), now)), ["a1", "b1"]);
        let views = l.tenants();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].tenant, "a");
        assert_eq!(views[0].available.unwrap().task_slots, 0);
        assert!(views[1].quota.is_none());
    }

    #[test]
    fn large_task_is_not_starved() {
        let mut l = ledger(4, 100, &[]);
        let t0 = Instant::now();
        l.reserve("running", None, res(Some(60)));
        let big = cand("big", None, Some(80));
        let small = cand("small", None, Some(10));
        // Within the limit, small tasks backfill past the big one.
        assert_eq!(ids(&l.admit([big.clone(), small.clone()], t0)), ["small"]);
        l.release("small");
        // After the limit, nothing competing starts before it.
        let later = t0 + STARVATION_LIMIT;
        assert!(l.admit([big.clone(), small.clone()], later).is_empty());
        l.release("running");
        assert_eq!(ids(&l.admit([big, small], later)), ["big", "small"]);
        assert_eq!(l.reserved().memory_bytes, Some(90));
        assert_eq!(l.available().memory_bytes, Some(10));
    }

    #[test]
    fn never_fits() {
        let q = TenantQuota {
            tenant: "a".into(),
            slots: 1,
            memory_bytes: Some(10),
            pids: None,
        };
        let l = ledger(4, 100, &[q]);
        assert!(l.could_ever_fit(None, &res(Some(101))).is_err());
        assert!(l.could_ever_fit(Some("a"), &res(Some(11))).is_err());
        assert!(l.could_ever_fit(Some("b"), &res(Some(11))).is_ok());
    }
}
