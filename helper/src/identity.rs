//! Who tasks run as. A root helper never runs a task as root by accident
//! and never as the runtime: `--task-user` names the uid and gid, uid 0
//! needs `--allow-root-tasks`, and a uid allowed to connect is refused (a
//! task acting as the runtime could drive the helper). An unprivileged
//! helper runs tasks as itself; it cannot switch to anyone else.

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the helper runs as root, so it needs --task-user NAME|UID[:GID] (the unprivileged user tasks run as, e.g. --task-user nobody)")]
    Missing,
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

/// What start-up decides: `Some` when the shim switches tasks to that
/// identity, `None` when tasks run as the helper itself (unprivileged).
/// `own_uid` is the helper's euid; `peers` the uids allowed to connect.
pub fn decide(
    requested: Option<TaskIdentity>,
    allow_root: bool,
    own_uid: u32,
    peers: &[u32],
) -> Result<Option<TaskIdentity>, IdentityError> {
    if own_uid != 0 {
        return match requested {
            Some(id) if id.uid != own_uid => Err(IdentityError::Unprivileged {
                uid: id.uid,
                own: own_uid,
            }),
            _ => Ok(None),
        };
    }
    let id = requested.ok_or(IdentityError::Missing)?;
    if id.uid == 0 && !allow_root {
        return Err(IdentityError::Root);
    }
    if peers.contains(&id.uid) {
        return Err(IdentityError::RuntimeUid(id.uid));
    }
    Ok(Some(id))
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
        assert_eq!(decide(None, false, 0, &[1000]), Err(IdentityError::Missing));
        assert_eq!(decide(Some(nobody), false, 0, &[1000]), Ok(Some(nobody)));
        assert_eq!(
            decide(Some(root), false, 0, &[1000]),
            Err(IdentityError::Root)
        );
        assert_eq!(decide(Some(root), true, 0, &[1000]), Ok(Some(root)));
        assert_eq!(
            decide(Some(nobody), false, 0, &[1000, 65534]),
            Err(IdentityError::RuntimeUid(65534))
        );
        // Root as the runtime (embedded as root) and root tasks allowed:
        // the rule about the runtime's uid cannot be met, and is kept.
        assert_eq!(
            decide(Some(root), true, 0, &[0]),
            Err(IdentityError::RuntimeUid(0))
        );
    }

    #[test]
    fn unprivileged_helper_runs_tasks_as_itself() {
        assert_eq!(decide(None, false, 1000, &[1000]), Ok(None));
        let me = TaskIdentity {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(decide(Some(me), false, 1000, &[1000]), Ok(None));
        let other = TaskIdentity {
            uid: 1001,
            gid: 1001,
        };
        assert_eq!(
            decide(Some(other), false, 1000, &[1000]),
            Err(IdentityError::Unprivileged {
                uid: 1001,
                own: 1000
            })
        );
    }
}
