//! Tasks may not use the runtime's listeners. A task that shares the
//! host's network (every `process` task, and `linux_sandbox` tasks without
//! a network namespace of their own) can connect to the runtime's ports
//! like any local program; without this gate it could list every tenant's
//! tasks and output, kill any of them and submit more.
//!
//! Each accepted connection is judged once, before its first request is
//! read: the kernel names the owner of the peer's socket
//! ([`crate::peer_uid`]), and a connection whose socket belongs to a task's
//! uid ([`TaskUids`]) is answered 403 on every request. What cannot be
//! established is refused too (fail closed), as long as the peer is on
//! this host: a lookup that errs or times out, a peer socket the kernel
//! no longer has an owner for, or an owner the runtime's user namespace
//! does not map. A peer on another host has no socket here, is never a
//! task, and is served.
//!
//! The gate is off, and costs nothing, while tasks run as the runtime's
//! own uid (an unprivileged runtime's embedded helper): then the kernel
//! cannot tell a task from the runtime's own clients. It is also off until
//! the helper has been reached once, since only its probe says which uids
//! are tasks'.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helper_link::HelperLink;
use crate::peer_uid::{self, Owner};

/// The uids tasks run as, as a predicate: a shared task user, and a range
/// of uids leased one per task. Never the runtime's own uid, nor root: a
/// task running as either (an unprivileged runtime's embedded helper;
/// `--allow-root-tasks` with the root task user) cannot be told from the
/// runtime's own clients or the operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskUids {
    shared: Option<u32>,
    per_task_range: Option<(u32, u32)>,
    runtime_uid: u32,
}

impl TaskUids {
    /// `shared_uid`: the uid every task without a leased uid runs as
    /// (`HelperCapabilities::task_uid`); `per_task_range`: the inclusive
    /// `(FIRST, LAST)` of uids the helper leases to tasks one each, when it
    /// has such a range; `runtime_uid`: the runtime's effective uid, which
    /// is never counted as a task's.
    pub fn new(
        shared_uid: Option<u32>,
        per_task_range: Option<(u32, u32)>,
        runtime_uid: u32,
    ) -> TaskUids {
        TaskUids {
            shared: shared_uid,
            per_task_range: per_task_range.filter(|(first, last)| first <= last),
            runtime_uid,
        }
    }

    /// Whether `uid` is never counted as a task's.
    fn exempt(&self, uid: u32) -> bool {
        uid == self.runtime_uid || uid == 0
    }

    /// Whether a socket owned by `uid` belongs to a task.
    pub fn contains(&self, uid: u32) -> bool {
        !self.exempt(uid)
            && (self.shared == Some(uid)
                || self
                    .per_task_range
                    .is_some_and(|(first, last)| (first..=last).contains(&uid)))
    }

    /// No uid but exempt ones: tasks cannot be told apart, and the gate is
    /// off.
    pub fn is_empty(&self) -> bool {
        let shared = self.shared.is_some_and(|u| !self.exempt(u));
        let range = self
            .per_task_range
            .is_some_and(|(first, last)| (first..=last).any(|u| !self.exempt(u)));
        !(shared || range)
    }
}

impl std::fmt::Display for TaskUids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(u) = self.shared.filter(|u| !self.exempt(*u)) {
            parts.push(u.to_string());
        }
        if let Some((first, last)) = self.per_task_range {
            parts.push(format!("{first}-{last}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// How a connection is to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Every request gets 403.
    Refuse(Refusal),
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's socket belongs to a task's uid.
    Task { uid: u32 },
    /// The peer is on this host, but its socket's owner could not be
    /// established.
    Unknown(String),
}

impl Refusal {
    /// What the client is told (after the envelope's `permission denied: `).
    pub fn message(&self) -> String {
        match self {
            Refusal::Task { uid } => format!(
                "this connection comes from a task (uid {uid}); tasks may not use the runtime's API"
            ),
            Refusal::Unknown(why) => format!(
                "the owner of this local connection could not be established ({why}); \
                 it is refused as a task's would be"
            ),
        }
    }

    /// The `reason` label of `execgo_runtime_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Task { .. } => "task",
            Refusal::Unknown(_) => "unknown_owner",
        }
    }
}

/// Judges accepted connections, for every listener of the runtime.
pub struct PeerGate {
    helper: Arc<HelperLink>,
    runtime_uid: u32,
    /// The uid the kernel reports for an owner the runtime's user
    /// namespace does not map, if that namespace leaves any uid unmapped.
    unmapped_uid: Option<u32>,
    addresses: HostAddresses,
    refused: prometheus::IntCounterVec,
}

impl PeerGate {
    pub fn new(helper: Arc<HelperLink>, refused: prometheus::IntCounterVec) -> PeerGate {
        let unmapped_uid = unmapped_uid(
            std::fs::read_to_string("/proc/self/uid_map")
                .ok()
                .as_deref(),
            std::fs::read_to_string("/proc/sys/kernel/overflowuid")
                .ok()
                .as_deref(),
        );
        PeerGate {
            helper,
            runtime_uid: nix::unistd::geteuid().as_raw(),
            unmapped_uid,
            addresses: HostAddresses::default(),
            refused,
        }
    }

    /// The uids refused now, or `None` while the gate is off.
    pub fn task_uids(&self) -> Option<TaskUids> {
        self.helper
            .task_uids(self.runtime_uid)
            .filter(|u| !u.is_empty())
    }

    /// A line for the start-up log: what the gate does.
    pub fn describe(&self) -> String {
        match self.task_uids() {
            Some(uids) => format!("connections from task uids {uids} are refused"),
            None => "off: tasks run as the runtime's own uid or root, or the helper has not answered yet"
                .to_string(),
        }
    }

    /// The verdict for one accepted connection: `local` is its local
    /// address, `peer` the remote one.
    pub async fn check(&self, peer: SocketAddr, local: SocketAddr) -> Verdict {
        let Some(uids) = self.task_uids() else {
            return Verdict::Serve;
        };
        let verdict = match peer_uid::owner(peer, local).await {
            Ok(Owner::Uid(uid)) => judge(&uids, self.unmapped_uid, uid),
            Ok(Owner::Unknown(why)) => self.unless_remote(peer, local, why.as_str()).await,
            Err(e) => {
                let why = crate::engine::error_chain(&e);
                tracing::warn!(peer = %peer, error = %why, "looking up a connection's owner failed");
                self.unless_remote(peer, local, &why).await
            }
        };
        if let Verdict::Refuse(r) = &verdict {
            self.refused.with_label_values(&[r.label()]).inc();
            tracing::warn!(peer = %peer, local = %local, reason = %r.message(),
                "refused a connection to the runtime's API");
        }
        verdict
    }

    /// Serve a peer on another host; refuse one on this host.
    async fn unless_remote(&self, peer: SocketAddr, local: SocketAddr, why: &str) -> Verdict {
        match self.addresses.is_local(peer.ip(), local.ip()).await {
            Ok(false) => Verdict::Serve,
            Ok(true) => Verdict::Refuse(Refusal::Unknown(why.to_string())),
            Err(e) => Verdict::Refuse(Refusal::Unknown(format!(
                "{why}; listing this host's addresses failed: {e}"
            ))),
        }
    }
}

/// The verdict on a peer socket owned by `uid`.
fn judge(uids: &TaskUids, unmapped_uid: Option<u32>, uid: u32) -> Verdict {
    if uids.exempt(uid) {
        Verdict::Serve
    } else if uids.contains(uid) {
        Verdict::Refuse(Refusal::Task { uid })
    } else if unmapped_uid == Some(uid) {
        Verdict::Refuse(Refusal::Unknown(format!(
            "uid {uid} stands for every owner the runtime's user namespace does not map"
        )))
    } else {
        Verdict::Serve
    }
}

/// How long a listing of this host's addresses is reused. Tasks cannot
/// add addresses (they hold no capability), so a listing a second old
/// misses none a task could send from.
const ADDRESSES_TTL: Duration = Duration::from_secs(1);

/// This host's interface addresses, listed again at most every
/// [`ADDRESSES_TTL`] (a listing costs about 0.1 ms; a remote client's
/// every connection asks).
#[derive(Default)]
struct HostAddresses {
    cached: Mutex<Option<(Instant, Arc<HashSet<IpAddr>>)>>,
}

impl HostAddresses {
    /// Whether `peer` is an address of this host: loopback, the address
    /// the connection came in on, or an address of any interface (a task
    /// may send from any of them).
    async fn is_local(&self, peer: IpAddr, local: IpAddr) -> std::io::Result<bool> {
        let peer = peer.to_canonical();
        if peer.is_loopback() || peer == local.to_canonical() {
            return Ok(true);
        }
        Ok(self.current().await?.contains(&peer))
    }

    async fn current(&self) -> std::io::Result<Arc<HashSet<IpAddr>>> {
        let fresh = |c: &Option<(Instant, Arc<HashSet<IpAddr>>)>| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < ADDRESSES_TTL)
                .map(|(_, a)| Arc::clone(a))
        };
        if let Some(a) = fresh(&self.cached.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(a);
        }
        let addrs = Arc::new(
            tokio::task::spawn_blocking(host_addresses)
                .await
                .map_err(std::io::Error::other)??,
        );
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), Arc::clone(&addrs)));
        Ok(addrs)
    }
}

/// The addresses of this host's interfaces, getifaddrs(3).
fn host_addresses() -> std::io::Result<HashSet<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6()
                    .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
            }
        })
        .collect())
}

/// The overflow uid when `uid_map` (`/proc/self/uid_map`) leaves some uid
/// unmapped, else `None` (the initial namespace maps all 2³² − 1 uids to
/// themselves in one line). Unreadable: taken as the initial namespace.
fn unmapped_uid(uid_map: Option<&str>, overflow_uid: Option<&str>) -> Option<u32> {
    let map = uid_map?;
    let mapped: u64 = map
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum();
    if mapped >= u64::from(u32::MAX) {
        return None;
    }
    Some(
        overflow_uid
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65534),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 990;

    #[test]
    fn a_shared_task_user_is_refused_and_the_runtime_never() {
        let u = TaskUids::new(Some(65534), None, ME);
        assert!(u.contains(65534));
        assert!(!u.contains(ME));
        assert!(!u.contains(0));
        assert!(!u.is_empty());
        assert_eq!(u.to_string(), "65534");
    }

    #[test]
    fn a_per_task_range_is_inclusive_and_skips_the_runtime() {
        let u = TaskUids::new(Some(65534), Some((200_000, 200_009)), 200_005);
        for uid in [200_000, 200_009, 65534] {
            assert!(u.contains(uid), "{uid}");
        }
        for uid in [199_999, 200_010, 200_005, 0] {
            assert!(!u.contains(uid), "{uid}");
        }
        assert_eq!(u.to_string(), "65534, 200000-200009");
    }

    #[test]
    fn tasks_running_as_the_runtime_or_root_turn_the_gate_off() {
        assert!(TaskUids::new(Some(ME), None, ME).is_empty());
        // `--allow-root-tasks --task-user root`.
        assert!(TaskUids::new(Some(0), None, ME).is_empty());
        assert!(!TaskUids::new(Some(0), None, ME).contains(0));
        assert!(TaskUids::new(Some(0), Some((0, 0)), 0).is_empty());
        assert!(!TaskUids::new(Some(0), Some((0, 1)), 0).is_empty());
        assert!(TaskUids::new(None, None, ME).is_empty());
        assert!(TaskUids::new(Some(ME), Some((ME, ME)), ME).is_empty());
        assert!(!TaskUids::new(Some(ME), Some((ME, ME + 1)), ME).is_empty());
        // An inverted range holds nothing.
        assert!(TaskUids::new(None, Some((10, 9)), ME).is_empty());
    }

    #[test]
    fn judging_an_owner() {
        let u = TaskUids::new(Some(65534), Some((1000, 1999)), 0);
        assert_eq!(
            judge(&u, None, 65534),
            Verdict::Refuse(Refusal::Task { uid: 65534 })
        );
        assert_eq!(
            judge(&u, None, 1500),
            Verdict::Refuse(Refusal::Task { uid: 1500 })
        );
        assert_eq!(judge(&u, None, 0), Verdict::Serve);
        assert_eq!(judge(&u, None, 2000), Verdict::Serve);
        // In a user namespace that maps few uids, the overflow uid could
        // be anyone, a task included.
        let u = TaskUids::new(Some(5000), None, 0);
        assert!(matches!(
            judge(&u, Some(65534), 65534),
            Verdict::Refuse(Refusal::Unknown(_))
        ));
        assert_eq!(judge(&u, None, 65534), Verdict::Serve);
    }

    #[test]
    fn the_initial_user_namespace_maps_every_uid() {
        let initial = "         0          0 4294967295\n";
        assert_eq!(unmapped_uid(Some(initial), Some("65534\n")), None);
        // systemd's PrivateUsers=yes: root and the service's user only.
        let private = "0 0 1\n990 990 1\n";
        assert_eq!(unmapped_uid(Some(private), Some("65534\n")), Some(65534));
        assert_eq!(unmapped_uid(Some(private), None), Some(65534));
        assert_eq!(unmapped_uid(None, None), None);
    }

    #[test]
    fn refusals_read_as_the_contract_wants() {
        let r = Refusal::Task { uid: 65534 };
        assert_eq!(
            r.message(),
            "this connection comes from a task (uid 65534); tasks may not use the runtime's API"
        );
        assert_eq!(r.label(), "task");
        assert_eq!(Refusal::Unknown("x".into()).label(), "unknown_owner");
    }

    #[tokio::test]
    async fn loopback_and_own_addresses_are_local() {
        let h = HostAddresses::default();
        let lo4: IpAddr = "127.0.0.9".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let doc: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(h.is_local(lo4, lo4).await.unwrap());
        assert!(h.is_local(lo6, lo6).await.unwrap());
        assert!(h.is_local(mapped, lo4).await.unwrap());
        // A documentation-range address is on no interface of a test host.
        assert!(!h.is_local(doc, lo4).await.unwrap());
        // The address the connection came in on is ours.
        assert!(h.is_local(doc, doc).await.unwrap());
        // So is every interface's address.
        for a in host_addresses().unwrap() {
            assert!(h.is_local(a, lo4).await.unwrap(), "{a}");
        }
    }
}
