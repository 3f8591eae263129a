//! OpenSandbox task-executor compatibility: the HTTP API OpenSandbox's
//! BatchSandbox controller drives (`POST /tasks`, `GET|DELETE
//! /tasks/{name}`, `POST /setTasks`, `GET /getTasks`, `GET /health`),
//! served on a second listener (`serve --opensandbox-listen-addr`).
//!
//! A task created here is an ordinary task of the store: `name` is its
//! `task_id`, its tenant is `--opensandbox-tenant`, and it is visible,
//! durable and recovered like any other. What this API adds lives in its
//! own table ([`store`]): the process as given (echoed in every answer)
//! and the deletion. Two launch options differ from `/api/v1` tasks, to
//! behave as the peer does: the task's base environment is the runtime's
//! whole environment, and processes the main process leaves running (the
//! bootstrap pattern, `sh -c 'daemon &'`) are kept until the task is
//! deleted instead of being killed when it exits. A third is taken when
//! asked: an absolute `workingDir` under a `--opensandbox-workdir-root`
//! becomes the task's working directory (checked again, and opened, by the
//! helper).
//!
//! A deletion stops the task (a kill: SIGTERM, grace, SIGKILL of the whole
//! task, by its shim; for a task that ended with processes left behind, the
//! same to those), waits until its shim is gone, then marks it removed. The
//! task answers with `deletionTimestamp` meanwhile, and is gone from this
//! API afterwards; its row and events stay in the store until retention GC.
//! A deletion in progress survives a restart: [`OpenSandbox::start`]
//! resumes it.

pub mod routes;
pub mod store;
pub mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use execgo_runtime_protocol::taskdir;

use crate::engine::{now, Engine, EngineError, SubmitExtras};
use crate::store::{self as tasks, LaunchOptions, NewEvent, StoreError, TaskRow};
use wire::{NewTask, Process, TaskOut, WireError};

/// How often a deletion in progress looks at its task.
const STOP_POLL: Duration = Duration::from_millis(100);

/// A failure of this API, mapped to an HTTP status by [`routes`].
#[derive(Debug, thiserror::Error)]
pub enum OsbxError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the stored process of task {0} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),
}

impl From<StoreError> for OsbxError {
    fn from(e: StoreError) -> Self {
        OsbxError::Engine(EngineError::Store(e))
    }
}

/// The task-executor API on top of the engine.
pub struct OpenSandbox {
    engine: Arc<Engine>,
    tenant: String,
    /// `--enable-sidecar-mode`.
    sidecar_mode: bool,
    /// `--opensandbox-workdir-root`s: where an absolute `workingDir` may
    /// lie.
    workdir_roots: Vec<String>,
    /// Tasks whose stop is being followed by this process.
    stopping: Mutex<HashSet<String>>,
}

impl OpenSandbox {
    /// Creates the table if needed and resumes the deletions a previous
    /// run left in progress.
    pub async fn start(engine: Arc<Engine>, tenant: String) -> Result<Arc<Self>, OsbxError> {
        let pending = engine
            .store
            .call(|conn| -> Result<Vec<String>, StoreError> {
                store::create_schema(conn)?;
                Ok(store::live(conn)?
                    .into_iter()
                    .filter(|e| e.deletion_requested_at.is_some())
                    .map(|e| e.task_id)
                    .collect())
            })
            .await?;
        let me = Arc::new(OpenSandbox {
            sidecar_mode: engine.cfg.args.enable_sidecar_mode,
            workdir_roots: engine
                .cfg
                .args
                .opensandbox_workdir_root
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            engine,
            tenant,
            stopping: Mutex::default(),
        });
        for id in pending {
            tracing::info!(task_id = %id, "resuming an opensandbox deletion");
            me.follow_stop(id);
        }
        Ok(me)
    }

    /// `POST /tasks`.
    pub async fn create(self: &Arc<Self>, t: NewTask) -> Result<TaskOut, OsbxError> {
        let req = wire::to_submit(&t, &self.tenant);
        crate::api::validate::submit(&req).map_err(|e| WireError::Invalid(e.message))?;
        let sidecar = wire::runs_in_sidecar(&t.process, self.sidecar_mode)?;
        let workdir = wire::absolute_workdir(&t.process, &self.workdir_roots, sidecar)?;
        let process_json = serde_json::to_string(&t.process)
            .map_err(|e| EngineError::Internal(format!("encoding the process: {e}")))?;
        self.purge_removed(&t.name).await?;
        let id = t.name.clone();
        let extras = SubmitExtras {
            launch: LaunchOptions {
                full_env: true,
                keep_descendants: true,
                sidecar,
                workdir,
            },
            also: Some(Box::new(move |tx| {
                store::insert(tx, &id, &process_json, &now())?;
                Ok(())
            })),
        };
        self.engine.submit_with(req, extras).await?;
        tracing::info!(task_id = %t.name, "opensandbox task created");
        self.get(&t.name)
            .await?
            .ok_or_else(|| EngineError::Internal(format!("task {} vanished", t.name)).into())
    }

    /// A name whose task was removed is free again: the old task's audit
    /// trail goes now rather than at retention GC.
    async fn purge_removed(&self, name: &str) -> Result<(), OsbxError> {
        let id = name.to_string();
        let td = self.engine.task_dir(name);
        self.engine
            .store
            .call(move |conn| -> Result<(), StoreError> {
                let removed = store::get(conn, &id)?.is_some_and(|e| e.removed_at.is_some());
                if removed {
                    let tx = tasks::begin(conn)?;
                    tasks::delete(&tx, &id)?;
                    tasks::commit(tx)?;
                    if let Err(e) = td.remove() {
                        tracing::warn!(task_id = %id, error = %e, "removing a purged task dir failed");
                    }
                    tracing::info!(task_id = %id, "removed opensandbox task purged for a new one");
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// `GET /tasks/{name}`: `None` for an unknown or removed name.
    pub async fn get(&self, name: &str) -> Result<Option<TaskOut>, OsbxError> {
        let id = name.to_string();
        let found = self
            .engine
            .store
            .call(
                move |conn| -> Result<Option<(store::Entry, TaskRow)>, StoreError> {
                    let Some(e) = store::get(conn, &id)? else {
                        return Ok(None);
                    };
                    if e.removed_at.is_some() {
                        return Ok(None);
                    }
                    Ok(tasks::get(conn, &id)?.map(|row| (e, row)))
                },
            )
            .await?;
        found.map(|(e, row)| task_out(&e, &row)).transpose()
    }

    /// `GET /getTasks`: every task not removed, oldest first.
    pub async fn list(&self) -> Result<Vec<TaskOut>, OsbxError> {
        let found = self
            .engine
            .store
            .call(|conn| -> Result<Vec<(store::Entry, TaskRow)>, StoreError> {
                let mut out = Vec::new();
                for e in store::live(conn)? {
                    if let Some(row) = tasks::get(conn, &e.task_id)? {
                        out.push((e, row));
                    }
                }
                Ok(out)
            })
            .await?;
        found.iter().map(|(e, row)| task_out(e, row)).collect()
    }

    /// `DELETE /tasks/{name}`: records the deletion (once) and starts
    /// stopping the task; an unknown or removed name changes nothing.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), OsbxError> {
        let id = name.to_string();
        let requested = self
            .engine
            .store
            .durable(move |tx| -> Result<tasks::Committed<bool>, StoreError> {
                let ts = now();
                let fresh = store::request_deletion(tx, &id, &ts)?;
                if fresh {
                    tasks::append_event(
                        tx,
                        &id,
                        &ts,
                        &NewEvent::new("deletion_requested")
                            .message("opensandbox delete: stopping the task, then removing it"),
                    )?;
                }
                let pending = fresh
                    || store::get(tx, &id)?.is_some_and(|e| {
                        e.deletion_requested_at.is_some() && e.removed_at.is_none()
                    });
                Ok(tasks::Committed {
                    value: pending,
                    undo: None,
                })
            })
            .await?;
        self.engine.changed(name);
        if requested {
            self.follow_stop(name.to_string());
        }
        Ok(())
    }

    /// `POST /setTasks`: creates the names that are new, deletes the live
    /// ones the list does not hold, leaves the rest as they are (their spec
    /// is not updated). Every body is validated before anything changes.
    pub async fn set(self: &Arc<Self>, desired: Vec<NewTask>) -> Result<Vec<TaskOut>, OsbxError> {
        for t in &desired {
            crate::api::validate::submit(&wire::to_submit(t, &self.tenant))
                .map_err(|e| WireError::Invalid(format!("task '{}': {}", t.name, e.message)))?;
            let sidecar = wire::runs_in_sidecar(&t.process, self.sidecar_mode)
                .map_err(|e| WireError::Invalid(format!("task '{}': {e}", t.name)))?;
            wire::absolute_workdir(&t.process, &self.workdir_roots, sidecar)
                .map_err(|e| WireError::Invalid(format!("task '{}': {e}", t.name)))?;
        }
        let live: HashSet<String> = self
            .engine
            .store
            .call(|conn| -> Result<HashSet<String>, StoreError> {
                Ok(store::live(conn)?.into_iter().map(|e| e.task_id).collect())
            })
            .await?;
        let wanted: HashSet<&str> = desired.iter().map(|t| t.name.as_str()).collect();
        for name in live.iter().filter(|n| !wanted.contains(n.as_str())) {
            self.delete(name).await?;
        }
        for t in desired {
            if !live.contains(&t.name) {
                self.create(t).await?;
            }
        }
        self.list().await
    }

    /// Follows one deletion to its end in the background (once per task).
    fn follow_stop(self: &Arc<Self>, id: String) {
        {
            let mut s = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
            if !s.insert(id.clone()) {
                return;
            }
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.stop_and_remove(&id).await {
                tracing::error!(task_id = %id, error = %crate::engine::error_chain(&e),
                    "opensandbox deletion failed; it resumes at the next start");
            }
            me.stopping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// Kills the task and whatever it left running, waits until its shim
    /// is gone, then marks it removed.
    async fn stop_and_remove(&self, id: &str) -> Result<(), OsbxError> {
        let mut killed = false;
        loop {
            let key = id.to_string();
            let row = self
                .engine
                .store
                .call(move |conn| tasks::get(conn, &key))
                .await?;
            let Some(row) = row else {
                // Collected by retention GC meanwhile: nothing to stop.
                return Ok(());
            };
            let terminal = crate::task::Phase::of(&row) == crate::task::Phase::Terminal;
            let shim_alive = row
                .shim_pid
                .zip(row.shim_start_ticks)
                .is_some_and(|(pid, ticks)| taskdir::is_alive(pid, ticks));
            if terminal && !shim_alive {
                break;
            }
            if !killed {
                if terminal {
                    // Ended, with processes left behind that its shim keeps:
                    // the shim kills them on this byte.
                    let _ = self.engine.task_dir(id).send_kill();
                } else {
                    match self.engine.kill(id, None).await {
                        Ok(_) | Err(EngineError::NotOwner(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                killed = true;
            } else if terminal {
                // A shim that ended the task after our kill now keeps only
                // leftovers (or is exiting): a repeat is harmless.
                let _ = self.engine.task_dir(id).send_kill();
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        let key = id.to_string();
        self.engine
            .store
            .durable(move |tx| -> Result<tasks::Committed<()>, StoreError> {
                let ts = now();
                if store::mark_removed(tx, &key, &ts)? {
                    tasks::append_event(
                        tx,
                        &key,
                        &ts,
                        &NewEvent::new("removed")
                            .message("opensandbox delete: the task is stopped and removed"),
                    )?;
                }
                Ok(tasks::Committed {
                    value: (),
                    undo: None,
                })
            })
            .await?;
        self.engine.changed(id);
        tracing::info!(task_id = %id, "opensandbox task removed");
        Ok(())
    }
}

fn task_out(e: &store::Entry, row: &TaskRow) -> Result<TaskOut, OsbxError> {
    let process: Process = serde_json::from_str(&e.process_json)
        .map_err(|err| OsbxError::Corrupt(e.task_id.clone(), err))?;
    Ok(TaskOut {
        name: row.task_id.clone(),
        deletion_timestamp: e.deletion_requested_at.as_deref().map(wire::k8s_time),
        process,
        process_status: wire::process_status(&wire::StatusFacts::from(row)),
    })
}
