//! Who tasks run as. A root helper gives every task a uid and gid of its
//! own, leased from `--task-uid-range` (see [`crate::uid_lease`]), unless
//! the operator chose one shared `--task-user`. Either way it never runs a
//! task as root by accident and never as the runtime: uid 0 needs
//! `--allow-root-tasks`, a uid allowed to connect is refused (a task
//! acting as the runtime could drive the helper), and a range must not
//! hold anyone the host already knows (a passwd or group entry, a
//! subordinate id allocation). An unprivileged helper runs tasks as
//! itself; it cannot switch to anyone else.

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("--task-user {0:?}: expected NAME, UID or UID:GID")]
    Syntax(String),
    #[error("--task-user {0:?}: no such user")]
    UnknownUser(String),
    #[error("--task-user {spec:?}: looking the user up failed: {errno}")]
    Lookup {
        spec: String,
        errno: nix::errno::Errno,
    },
    #[error("--task-user resolves to uid 0; add --allow-root-tasks to run tasks as root")]
    Root,
    #[error("--task-user resolves to uid {0}, which may connect to the helper (--allowed-uid or the runtime's own uid); a task must not be able to act as the runtime")]
    RuntimeUid(u32),
    #[error("--task-user resolves to uid {uid}, but the helper runs unprivileged as uid {own} and can run tasks only as itself")]
    Unprivileged { uid: u32, own: u32 },
    #[error(
        "--task-uid-range {0:?}: expected FIRST-LAST, two uids with 0 < FIRST <= LAST < 4294967295"
    )]
    RangeSyntax(String),
    #[error("--task-uid-range and --task-user exclude each other: a range gives every task its own uid, --task-user one shared user")]
    RangeAndUser,
    #[error("--task-uid-range {range} needs a root helper; unprivileged, tasks run as the helper's own uid {own}")]
    RangeUnprivileged { range: UidRange, own: u32 },
    #[error("--task-uid-range {range} holds {what}; choose a range no user, group or subordinate id allocation uses")]
    RangeTaken { range: UidRange, what: String },
    #[error("--task-uid-range {range}: reading {path} failed: {error}")]
    RangeRead {
        range: UidRange,
        path: String,
        error: String,
    },
}

/// An inclusive range of uids (each also used as the task's gid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

/// The default `--task-uid-range`: 65536 ids just above the range systemd
/// gives containers (524288-1879048191) and far below its foreign range,
/// where no distribution allocates users, groups or subordinate ids.
pub const DEFAULT_TASK_UID_RANGE: UidRange = UidRange {
    first: 1_879_048_192,
    last: 1_879_113_727,
};

impl UidRange {
    /// `FIRST-LAST`, decimal.
    pub fn parse(spec: &str) -> Result<UidRange, IdentityError> {
        let syntax = || IdentityError::RangeSyntax(spec.to_string());
        let (a, b) = spec.split_once('-').ok_or_else(syntax)?;
        let num = |t: &str| {
            (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse::<u32>().ok())
                .flatten()
        };
        let (first, last) = (num(a).ok_or_else(syntax)?, num(b).ok_or_else(syntax)?);
        // 0 is root; u32::MAX is (uid_t)-1, "no change" to setresuid.
        if first == 0 || first > last || last == u32::MAX {
            return Err(syntax());
        }
        Ok(UidRange { first, last })
    }

    pub fn contains(self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// How many ids it holds.
    pub fn len(self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// The id `n` places after `first`, wrapping around.
    pub fn nth(self, n: u64) -> u32 {
        // Less than len() fits a u32 offset from first.
        self.first + (n % self.len()) as u32
    }

    fn overlaps(self, first: u64, count: u64) -> bool {
        count > 0 && first <= u64::from(self.last) && first + count > u64::from(self.first)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Who tasks run as, as start-up decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskUsers {
    /// Unprivileged: as the helper itself.
    Own,
    /// Every task as this one user (`--task-user`, an explicit choice).
    Shared(TaskIdentity),
    /// Every task a uid of its own from this range, its gid the same number.
    PerTask(UidRange),
}

impl TaskUsers {
    /// The shared identity, if every task has the same one.
    pub fn shared(self) -> Option<TaskIdentity> {
        match self {
            TaskUsers::Shared(id) => Some(id),
            _ => None,
        }
    }

    pub fn range(self) -> Option<UidRange> {
        match self {
            TaskUsers::PerTask(r) => Some(r),
            _ => None,
        }
    }
}

/// The host's own users, groups and subordinate id allocations, as text
/// (`/etc/passwd`, `/etc/group`, `/etc/subuid`, `/etc/subgid`; a missing
/// file is empty).
#[derive(Debug, Default)]
pub struct HostIds {
    pub passwd: String,
    pub group: String,
    pub subuid: String,
    pub subgid: String,
}

impl HostIds {
    /// Reads the four files under `etc`.
    pub fn read(etc: &std::path::Path, range: UidRange) -> Result<HostIds, IdentityError> {
        let read = |name: &str| {
            let path = etc.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(IdentityError::RangeRead {
                    range,
                    path: path.display().to_string(),
                    error: e.to_string(),
                }),
            }
        };
        Ok(HostIds {
            passwd: read("passwd")?,
            group: read("group")?,
            subuid: read("subuid")?,
            subgid: read("subgid")?,
        })
    }
}

/// Refuses a range that holds a known user or group or overlaps a
/// subordinate id allocation: a task must never share an id with anyone
/// else on the host. Names come from the files only (a directory service
/// behind NSS is not asked; docs/security.md says so).
pub fn check_range_free(range: UidRange, host: &HostIds) -> Result<(), IdentityError> {
    let taken = |what: String| Err(IdentityError::RangeTaken { range, what });
    for (file, text) in [("/etc/passwd", &host.passwd), ("/etc/group", &host.group)] {
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), _, Some(id)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let Ok(id) = id.trim().parse::<u32>() {
                if range.contains(id) {
                    return taken(format!("{name:?} ({id}) of {file}"));
                }
            }
        }
    }
    for (file, text) in [("/etc/subuid", &host.subuid), ("/etc/subgid", &host.subgid)] {
        for line in text.lines() {
            let mut f = line.trim().split(':');
            let (Some(name), Some(first), Some(count)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) {
                if range.overlaps(first, count) {
                    return taken(format!("the allocation {name}:{first}:{count} of {file}"));
                }
            }
        }
    }
    Ok(())
}

/// The uid and gid a task runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// Parses `--task-user`: a user name (its primary group), a numeric uid
/// (the group of its passwd entry, or the same number when it has none),
/// or `UID:GID`.
pub fn resolve(spec: &str) -> Result<TaskIdentity, IdentityError> {
    let syntax = || IdentityError::Syntax(spec.to_string());
    if let Some((u, g)) = spec.split_once(':') {
        let uid = u.parse::<u32>().map_err(|_| syntax())?;
        let gid = g.parse::<u32>().map_err(|_| syntax())?;
        return Ok(TaskIdentity { uid, gid });
    }
    if spec.is_empty() {
        return Err(syntax());
    }
    let lookup = |errno| IdentityError::Lookup {
        spec: spec.to_string(),
        errno,
    };
    if let Ok(uid) = spec.parse::<u32>() {
        let gid = User::from_uid(Uid::from_raw(uid))
            .map_err(lookup)?
            .map_or(uid, |u| u.gid.as_raw());
        return Ok(TaskIdentity { uid, gid });
    }
    let user = User::from_name(spec)
        .map_err(lookup)?
        .ok_or_else(|| IdentityError::UnknownUser(spec.to_string()))?;
    Ok(TaskIdentity {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// What start-up decides from `--task-user` (`requested`) and
/// `--task-uid-range` (`range`): a root helper gives each task its own uid
/// (from `range`, else [`DEFAULT_TASK_UID_RANGE`]) unless a shared user
/// was asked for; unprivileged, tasks run as the helper itself. `own_uid`
/// is the helper's euid; `peers` the uids allowed to connect. The range's
/// overlap with the host's ids is [`check_range_free`]'s.
pub fn decide(
    requested: Option<TaskIdentity>,
    range: Option<UidRange>,
    allow_root: bool,
    own_uid: u32,
    peers: &[u32],
) -> Result<TaskUsers, IdentityError> {
    if own_uid != 0 {
        if let Some(range) = range {
            return Err(IdentityError::RangeUnprivileged {
                range,
                own: own_uid,
            });
        }
        return match requested {
            Some(id) if id.uid != own_uid => Err(IdentityError::Unprivileged {
                uid: id.uid,
                own: own_uid,
            }),
            _ => Ok(TaskUsers::Own),
        };
    }
    let Some(id) = requested else {
        let range = range.unwrap_or(DEFAULT_TASK_UID_RANGE);
        if let Some(&peer) = peers.iter().find(|p| range.contains(**p)) {
            return Err(IdentityError::RangeTaken {
                range,
                what: format!("uid {peer}, which may connect to the helper"),
            });
        }
        return Ok(TaskUsers::PerTask(range));
    };
    if range.is_some() {
        return Err(IdentityError::RangeAndUser);
    }
    if id.uid == 0 && !allow_root {
        return Err(IdentityError::Root);
    }
    if peers.contains(&id.uid) {
        return Err(IdentityError::RuntimeUid(id.uid));
    }
    Ok(TaskUsers::Shared(id))
}

impl TaskIdentity {
    /// As nix's types, for `fchown`.
    pub fn nix(self) -> (Uid, Gid) {
        (Uid::from_raw(self.uid), Gid::from_raw(self.gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_pairs() {
        assert_eq!(
            resolve("1234:5678").unwrap(),
            TaskIdentity {
                uid: 1234,
                gid: 5678
            }
        );
        let root = resolve("root").unwrap();
        assert_eq!(root, TaskIdentity { uid: 0, gid: 0 });
        assert_eq!(resolve("0").unwrap(), root);
        // A uid without a passwd entry takes its own number as the gid.
        assert_eq!(
            resolve("4000000000").unwrap(),
            TaskIdentity {
                uid: 4_000_000_000,
                gid: 4_000_000_000
            }
        );
        for bad in ["", ":", "1:", ":1", "a:1", "1:b", "-1", "1:2:3"] {
            assert!(
                matches!(
                    resolve(bad),
                    Err(IdentityError::Syntax(_)) | Err(IdentityError::UnknownUser(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            resolve("no-such-user-here"),
            Err(IdentityError::UnknownUser("no-such-user-here".into()))
        );
    }

    #[test]
    fn root_helper_rules() {
        let nobody = TaskIdentity {
            uid: 65534,
            gid: 65534,
        };
        let root = TaskIdentity { uid: 0, gid: 0 };
        let r = UidRange {
            first: 100_000,
            last: 100_009,
        };
        // Without --task-user: a uid per task, from the default range or
        // the one given.
        assert_eq!(
            decide(None, None, false, 0, &[1000]),
            Ok(TaskUsers::PerTask(DEFAULT_TASK_UID_RANGE))
        );
        assert_eq!(
            decide(None, Some(r), false, 0, &[1000]),
            Ok(TaskUsers::PerTask(r))
        );
        assert!(matches!(
            decide(None, Some(r), false, 0, &[100_005]),
            Err(IdentityError::RangeTaken { .. })
        ));
        assert_eq!(
            decide(Some(nobody), Some(r), false, 0, &[1000]),
            Err(IdentityError::RangeAndUser)
        );
        assert_eq!(
            decide(Some(nobody), None, false, 0, &[1000]),
            Ok(TaskUsers::Shared(nobody))
        );
        assert_eq!(
            decide(Some(root), None, false, 0, &[1000]),
            Err(IdentityError::Root)
        );
        assert_eq!(
            decide(Some(root), None, true, 0, &[1000]),
            Ok(TaskUsers::Shared(root))
        );
        assert_eq!(
            decide(Some(nobody), None, false, 0, &[1000, 65534]),
            Err(IdentityError::RuntimeUid(65534))
        );
        // Root as the runtime (embedded as root) and root tasks allowed:
        // the rule about the runtime's uid cannot be met, and is kept.
        assert_eq!(
            decide(Some(root), None, true, 0, &[0]),
            Err(IdentityError::RuntimeUid(0))
        );
    }

    #[test]
    fn unprivileged_helper_runs_tasks_as_itself() {
        assert_eq!(decide(None, None, false, 1000, &[1000]), Ok(TaskUsers::Own));
        let me = TaskIdentity {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(
            decide(Some(me), None, false, 1000, &[1000]),
            Ok(TaskUsers::Own)
        );
        let other = TaskIdentity {
            uid: 1001,
            gid: 1001,
        };
        assert_eq!(
            decide(Some(other), None, false, 1000, &[1000]),
            Err(IdentityError::Unprivileged {
                uid: 1001,
                own: 1000
            })
        );
        assert!(matches!(
            decide(None, Some(DEFAULT_TASK_UID_RANGE), false, 1000, &[1000]),
            Err(IdentityError::RangeUnprivileged { .. })
        ));
    }

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(
            UidRange::parse("100000-165535"),
            Ok(UidRange {
                first: 100_000,
                last: 165_535
            })
        );
        assert_eq!(UidRange::parse("7-7").map(UidRange::len), Ok(1));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "0-10",
            "10-9",
            "1-4294967295",
            "a-b",
            "1 - 2",
            "+1-2",
            "1-2-3",
            "1-99999999999",
        ] {
            assert!(
                matches!(UidRange::parse(bad), Err(IdentityError::RangeSyntax(_))),
                "{bad:?}"
            );
        }
        let r = UidRange {
            first: 10,
            last: 12,
        };
        assert_eq!((r.nth(0), r.nth(2), r.nth(3), r.nth(7)), (10, 12, 10, 11));
        assert_eq!(DEFAULT_TASK_UID_RANGE.len(), 65536);
    }

    #[test]
    fn a_range_holding_a_host_id_is_refused_and_names_it() {
        let r = UidRange {
            first: 100_000,
            last: 165_535,
        };
        let host = |passwd: &str, group: &str, subuid: &str, subgid: &str| HostIds {
            passwd: passwd.into(),
            group: group.into(),
            subuid: subuid.into(),
            subgid: subgid.into(),
        };
        let clean = host(
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
            "root:x:0:\n",
            "alice:165536:65536\n",
            "alice:36000:64000\n",
        );
        assert_eq!(check_range_free(r, &clean), Ok(()));
        for (h, needle) in [
            (
                host("svc:x:100500:1:::\n", "", "", ""),
                "\"svc\" (100500) of /etc/passwd",
            ),
            (
                host("", "grp:x:165535:\n", "", ""),
                "\"grp\" (165535) of /etc/group",
            ),
            (
                host("", "", "bob:100000:65536\n", ""),
                "bob:100000:65536 of /etc/subuid",
            ),
            (
                host("", "", "", "bob:99999:2\n"),
                "bob:99999:2 of /etc/subgid",
            ),
        ] {
            let e = check_range_free(r, &h).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("100000-165535"), "names the range: {e}");
        }
        // Comments and malformed lines are passed over.
        let odd = host("# x\n::\nbad\n", "g:x:abc:\n", "b:1\n", "c:x:y\n");
        assert_eq!(check_range_free(r, &odd), Ok(()));
    }
}
