//! Client operations: starting them on the core, answering STATE, and turning the core's
//! reports into replies on the client's connection.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;

use super::node::Shared;
use crate::client::server::Handler;
use crate::client::{ErrorKind, Reply, Request};
use crate::core::{
    Action, BackupRequest, CommandError, INTERNAL_OPS, OpEvent, OpId, RestoreRequest,
};
use crate::protocol::file_id::file_id;

impl Shared {
    pub(super) fn report(&self, op: OpId, event: OpEvent) {
        let Some((path, failure)) = self
            .ops
            .get(&op)
            .map(|s| (s.path.display().to_string(), s.failure))
        else {
            if op >= INTERNAL_OPS {
                tracing::info!("re-backup: {event:?}");
            }
            return;
        };
        let reply = match event {
            OpEvent::Progress { done, total } => Reply::Progress { done, total },
            OpEvent::BackupDone {
                file,
                chunks,
                short,
                gave_up_after,
            } => Reply::Done {
                ok: short.is_empty(),
                kind: (!short.is_empty()).then_some(ErrorKind::Incomplete),
                message: if short.is_empty() {
                    format!("backed up {path}: {chunks} chunks at the desired degree")
                } else if let Some(tried) = gave_up_after {
                    format!(
                        "backup of {path} failed: no peer stored any chunk; the first {tried} \
                         were each sent 5 times in vain, and the backup stopped there ({} of \
                         {chunks} chunks not backed up). Are other peers running, on the same \
                         multicast groups and interface, with free space?",
                        short.len()
                    )
                } else {
                    format!(
                        "backup of {path} incomplete: {} of {chunks} chunks below the desired degree after 5 tries: {}",
                        short.len(),
                        list_chunks(&short)
                    )
                },
                result: json!({"path": path, "file_id": file, "chunks": chunks, "short": short}),
            },
            OpEvent::RestoreDone { file, dest, chunks } => Reply::Done {
                ok: true,
                kind: None,
                message: format!("restored {path} to {}", dest.display()),
                result: json!({"path": path, "file_id": file, "chunks": chunks, "restored_to": dest}),
            },
            OpEvent::RestoreIncomplete { file, missing } => Reply::Done {
                ok: false,
                kind: Some(ErrorKind::Incomplete),
                message: format!(
                    "restore of {path} failed: no peer delivered a valid copy of chunk(s) {}",
                    list_chunks(&missing)
                ),
                result: json!({"path": path, "file_id": file, "missing": missing}),
            },
            OpEvent::DeleteDone { file } => Reply::Done {
                ok: true,
                kind: None,
                message: format!("deleted the backup of {path}"),
                result: json!({"path": path, "file_id": file}),
            },
            OpEvent::Failed(message) => Reply::Error {
                kind: failure,
                message,
            },
        };
        let last = !matches!(reply, Reply::Progress { .. });
        if let Some(sink) = self.ops.get(&op) {
            let _ = sink.tx.send(reply);
        }
        if last {
            self.ops.remove(&op);
        }
    }

    /// STATE with the peer's counters (`counters`): what was received, dropped, resent.
    pub(super) fn state_json(&self) -> serde_json::Value {
        let mut state = serde_json::to_value(self.core.state()).expect("state serialises");
        let sent = &self.senders.stats;
        let mut counters = serde_json::to_value(&self.core.counters).expect("counters serialise");
        let extra = json!({
            "received": self.stats.received.load(Ordering::Relaxed),
            "malformed": self.stats.malformed.load(Ordering::Relaxed),
            "backlog_dropped": self.pool.dropped(),
            "sent": sent.datagrams.load(Ordering::Relaxed),
            "send_errors": sent.errors.load(Ordering::Relaxed),
            "instances": self.core.instances(),
            "disk_errors": self.stats.disk_errors.load(Ordering::Relaxed),
            "metadata_saved": self.meta_file.saved() == self.core.with_metadata(|m| m.generation())
                && { let c = self.commits.lock(); c.staged.is_empty() && c.after.is_empty() },
            "timers": self.timers.len(),
        });
        if let (Some(c), Some(e)) = (counters.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        state["counters"] = counters;
        state["last_disk_error"] = json!(*self.stats.last_disk_error.lock());
        state
    }

    /// A new client operation on `path`; `failure` is the kind of its failures the core
    /// reports as [`OpEvent::Failed`].
    pub(super) fn new_op(&self, path: &Path, failure: ErrorKind) -> (OpId, Receiver<Reply>) {
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        self.ops.insert(
            op,
            OpSink {
                tx,
                path: path.to_path_buf(),
                failure,
            },
        );
        (op, rx)
    }

    pub(super) fn backup(
        &self,
        path: &Path,
        degree: u8,
        enhanced: bool,
    ) -> Result<Receiver<Reply>, Refusal> {
        let unreadable = |e| (ErrorKind::SourceUnreadable, e);
        let path = std::fs::canonicalize(path)
            .map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
        let meta = std::fs::metadata(&path)
            .map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(unreadable(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let file = file_id(&path, meta.len(), mtime, self.core.config().id);
        // The core fails a backup only when its source cannot be read (or changes).
        let (op, rx) = self.new_op(&path, ErrorKind::SourceUnreadable);
        let req = BackupRequest {
            path,
            file,
            size: meta.len(),
            degree,
            enhanced,
        };
        self.start(op, rx, self.core.start_backup(op, req))
    }

    pub(super) fn delete(&self, path: &Path, enhanced: bool) -> Result<Receiver<Reply>, Refusal> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (op, rx) = self.new_op(&path, ErrorKind::Internal);
        self.start(op, rx, self.core.start_delete(op, &path, enhanced))
    }

    pub(super) fn restore(&self, path: &Path, enhanced: bool) -> Result<Receiver<Reply>, Refusal> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = path.file_name().ok_or_else(|| {
            (
                ErrorKind::BadRequest,
                format!("{} does not name a file", path.display()),
            )
        })?;
        let dest = self.files.root().join("restored").join(name);
        if std::fs::canonicalize(&dest).is_ok_and(|d| d == path) {
            return Err((
                ErrorKind::BadRequest,
                format!(
                    "restoring {} would overwrite the original: move it out of {} first",
                    path.display(),
                    self.files.root().join("restored").display()
                ),
            ));
        }
        // The core fails a restore only when the restored file cannot be written.
        let (op, rx) = self.new_op(&path, ErrorKind::Io);
        let tmp = self.files.tmp_dir().join(format!("restore-{op}.part"));
        let req = RestoreRequest {
            path,
            tmp,
            dest,
            enhanced,
        };
        self.start(op, rx, self.core.start_restore(op, req))
    }

    pub(super) fn reclaim(&self, max_kb: u64, enhanced: bool) -> Receiver<Reply> {
        let (done, actions) = self.core.reclaim(max_kb.saturating_mul(1000), enhanced);
        self.run(actions);
        let message = format!(
            "capacity set to {} KB: {:.3} KB used, {} chunk(s) evicted",
            max_kb,
            done.used as f64 / 1000.0,
            done.evicted.len()
        );
        let result = json!({
            "capacity_kb": max_kb,
            "used_kb": done.used as f64 / 1000.0,
            "evicted": done.evicted.len(),
        });
        reply_done(message, result)
    }

    /// Runs a started command's first actions, or forgets the operation if it was refused.
    pub(super) fn start(
        &self,
        op: OpId,
        rx: Receiver<Reply>,
        started: Result<Vec<Action>, CommandError>,
    ) -> Result<Receiver<Reply>, Refusal> {
        match started {
            Ok(actions) => {
                self.run(actions);
                Ok(rx)
            }
            Err(e) => {
                self.ops.remove(&op);
                Err((command_error_kind(&e), e.to_string()))
            }
        }
    }
}

/// A request the peer does not run, and why.
pub(super) type Refusal = (ErrorKind, String);

/// The client's view of a command the core refused.
fn command_error_kind(e: &CommandError) -> ErrorKind {
    match e {
        CommandError::BadDegree(_) | CommandError::TooLarge(_) => ErrorKind::BadRequest,
        CommandError::BackupRunning(_) | CommandError::RestoreRunning(_) => ErrorKind::Busy,
        CommandError::NotBackedUp(_) => ErrorKind::NotBackedUp,
    }
}

/// "0, 3, 7" (at most 20, then "…").
fn list_chunks(chunks: &[u32]) -> String {
    let mut s: Vec<String> = chunks.iter().take(20).map(u32::to_string).collect();
    if chunks.len() > 20 {
        s.push(format!("… ({} more)", chunks.len() - 20));
    }
    s.join(", ")
}

/// The access point's handler: runs client requests on this peer.
pub(super) struct ClientHandler(pub(super) Arc<Shared>);

impl Handler for ClientHandler {
    fn handle(&self, request: Request) -> Receiver<Reply> {
        let s = &self.0;
        let version = s.core.config().version;
        let result = if request.enhanced() && version == crate::protocol::Version::V1_0 {
            Err((
                ErrorKind::Unsupported,
                format!(
                    "{}ENH needs a peer started with an enhanced protocol version; this peer runs {version}",
                    request.name()
                ),
            ))
        } else {
            match &request {
                Request::Backup {
                    path,
                    degree,
                    enhanced,
                } => s.backup(path, *degree, *enhanced),
                Request::Delete { path, enhanced } => s.delete(path, *enhanced),
                Request::State => Ok(reply_done(String::new(), s.state_json())),
                Request::Restore { path, enhanced } => s.restore(path, *enhanced),
                Request::Reclaim { max_kb, enhanced } => Ok(s.reclaim(*max_kb, *enhanced)),
            }
        };
        result.unwrap_or_else(|(kind, message)| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = tx.send(Reply::Error { kind, message });
            rx
        })
    }
}

fn reply_done(message: String, result: serde_json::Value) -> Receiver<Reply> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(Reply::Done {
        ok: true,
        kind: None,
        message,
        result,
    });
    rx
}

/// Where a client operation's replies go.
pub(super) struct OpSink {
    tx: Sender<Reply>,
    path: PathBuf,
    /// The kind of the operation's [`OpEvent::Failed`].
    failure: ErrorKind,
}
