//! Client replies: where each operation's replies go, how the core's reports become replies
//! on the client's connection, and the info-level log line of each operation's end (and the
//! count of the operations ended, by kind and result).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use crate::client::{ErrorKind, Reply};
use crate::core::{INTERNAL_OPS, OpEvent, OpId};
use crate::log_limit::LogLimit;

/// Who reads an operation's replies.
pub(super) enum Sink {
    /// The client that asked for it.
    Client(Sender<Reply>),
    /// A tree operation, of which this is the file `index`.
    Child(Sender<(usize, Reply)>, usize),
}

impl Sink {
    /// Passes a reply on; a reader that went away is not an error (the operation goes on).
    fn send(&self, reply: Reply) {
        match self {
            Sink::Client(tx) => drop(tx.send(reply)),
            Sink::Child(tx, index) => drop(tx.send((*index, reply))),
        }
    }
}

/// Where a client operation's replies go.
struct OpSink {
    sink: Sink,
    /// The operation as the client named it (BACKUP, RESTOREENH, ...), for the log.
    name: String,
    started: Instant,
    path: PathBuf,
    /// The kind of the operation's [`OpEvent::Failed`].
    failure: ErrorKind,
}

/// How many client operations of one kind ended, by result (STATE's `counters.operations`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct Ended {
    /// Done with `ok` true.
    pub(super) ok: u64,
    /// Refused, failed or incomplete.
    pub(super) failed: u64,
}

/// The reply channels of the operations in progress.
pub(super) struct Replies {
    ops: DashMap<OpId, OpSink>,
    next_op: AtomicU64,
    /// Client operations that ended, by name as the client typed it (BACKUP, DELETEENH, ...).
    ended: Mutex<BTreeMap<String, Ended>>,
}

impl Replies {
    pub(super) fn new() -> Self {
        Replies {
            ops: DashMap::new(),
            next_op: AtomicU64::new(1),
            ended: Mutex::new(BTreeMap::new()),
        }
    }

    /// Logs the end of client operation `name`, which took since `started` (see [`log_end`]),
    /// and counts it by its result.
    pub(super) fn end(&self, name: &str, started: Instant, reply: &Reply) {
        log_end(name, started, reply);
        let ok = match reply {
            Reply::Done { ok, .. } => *ok,
            Reply::Error { .. } => false,
            Reply::Progress { .. } => return,
        };
        let mut ended = self.ended.lock();
        let counts = ended.entry(name.to_string()).or_default();
        if ok {
            counts.ok += 1;
        } else {
            counts.failed += 1;
        }
    }

    /// Client operations that ended so far, by name and result.
    pub(super) fn ended(&self) -> BTreeMap<String, Ended> {
        self.ended.lock().clone()
    }

    /// A new operation `name` on `path`, and where its replies will arrive; `failure` is the
    /// kind of its failures the core reports as [`OpEvent::Failed`].
    pub(super) fn new_op(
        &self,
        name: String,
        path: &Path,
        failure: ErrorKind,
    ) -> (OpId, Receiver<Reply>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (self.new_op_to(name, path, failure, Sink::Client(tx)), rx)
    }

    /// A new operation whose replies go to `sink`.
    pub(super) fn new_op_to(
        &self,
        name: String,
        path: &Path,
        failure: ErrorKind,
        sink: Sink,
    ) -> OpId {
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        self.ops.insert(
            op,
            OpSink {
                sink,
                name,
                started: Instant::now(),
                path: path.to_path_buf(),
                failure,
            },
        );
        op
    }

    /// Forgets an operation that did not start.
    pub(super) fn forget(&self, op: OpId) {
        self.ops.remove(&op);
    }

    pub(super) fn report(&self, op: OpId, event: OpEvent) {
        let Some((path, failure)) = self
            .ops
            .get(&op)
            .map(|s| (s.path.display().to_string(), s.failure))
        else {
            if op >= INTERNAL_OPS {
                log_re_backup(&event);
            }
            return;
        };
        let reply = match event {
            OpEvent::Progress { done, total } => Reply::Progress {
                done,
                total,
                files: None,
            },
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
            OpEvent::Recovered(r) => Reply::Done {
                ok: true,
                kind: None,
                message: format!(
                    "recovered this peer's catalog: {} path(s), {} file version(s) and link(s), \
                     from generation {} (held by peer(s) {}); RESTORE, LIST and VERIFY work again",
                    r.paths,
                    r.entries,
                    r.generation,
                    r.holders
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                result: serde_json::to_value(&r).expect("recovered serialises"),
            },
            OpEvent::VerifyDone { file, report } => {
                let chunks = |v: &[crate::core::verify::ChunkFinding]| {
                    list_chunks(&v.iter().map(|c| c.no).collect::<Vec<_>>())
                };
                let mut message = format!(
                    "verified {path}: {} of {} chunks proven by at least {} holders",
                    report.verified, report.chunks, report.desired
                );
                if !report.unconfirmed.is_empty() {
                    message.push_str(&format!(
                        "; {} unconfirmed (held by 1.0 peers, which cannot prove it): {}",
                        report.unconfirmed.len(),
                        chunks(&report.unconfirmed)
                    ));
                }
                if !report.below.is_empty() {
                    message.push_str(&format!(
                        "; {} BELOW their degree: {}",
                        report.below.len(),
                        chunks(&report.below)
                    ));
                }
                if !report.fresh {
                    message.push_str("; nonces reused (every recorded challenge was used)");
                }
                let mut result = serde_json::to_value(&report).expect("report serialises");
                result["path"] = json!(path);
                result["file_id"] = json!(file);
                Reply::Done {
                    ok: report.ok(),
                    kind: (!report.ok()).then_some(ErrorKind::Incomplete),
                    message,
                    result,
                }
            }
            OpEvent::RestoreIncomplete { file, missing } => Reply::Done {
                ok: false,
                kind: Some(ErrorKind::Incomplete),
                message: format!(
                    "restore of {path} failed: no peer delivered a valid copy of chunk(s) {}",
                    list_chunks(&missing)
                ),
                result: json!({"path": path, "file_id": file, "missing": missing}),
            },
            OpEvent::DeleteDone { files } => Reply::Done {
                ok: true,
                kind: None,
                message: match files.len() {
                    1 => format!("deleted the backup of {path}"),
                    n => format!("deleted the backups of {path}: {n} file(s) and version(s)"),
                },
                result: match &files[..] {
                    [file] => json!({"path": path, "file_id": file}),
                    _ => json!({"path": path, "file_ids": files}),
                },
            },
            OpEvent::Failed(message) => Reply::Error {
                kind: failure,
                message,
            },
        };
        if matches!(reply, Reply::Progress { .. }) {
            if let Some(sink) = self.ops.get(&op) {
                sink.sink.send(reply);
            }
        } else if let Some((_, sink)) = self.ops.remove(&op) {
            // The files of a tree are logged at its end, together.
            if let Sink::Client(_) = sink.sink {
                self.end(&sink.name, sink.started, &reply);
            }
            sink.sink.send(reply);
        }
    }
}

/// Logs the end of a client operation that took since `started`: one info line with its
/// result (what the client is told) and duration.
fn log_end(name: &str, started: Instant, reply: &Reply) {
    let secs = started.elapsed().as_secs_f64();
    match reply {
        Reply::Done {
            ok: true, message, ..
        } => {
            tracing::info!("{name} done in {secs:.2} s: {message}");
        }
        Reply::Done { message, .. } | Reply::Error { message, .. } => {
            tracing::info!("{name} failed in {secs:.2} s: {message}");
        }
        Reply::Progress { .. } => {}
    }
}

/// A re-backup's events (started by a REMOVED or an audit, for no client; a RECLAIM elsewhere
/// can start thousands at once): failures in info lines (one a second at most), the rest at
/// debug level.
fn log_re_backup(event: &OpEvent) {
    match event {
        OpEvent::BackupDone { file, short, .. } if short.is_empty() => {
            tracing::debug!("re-backup of a chunk of file {file}: back at its desired degree");
        }
        OpEvent::BackupDone { file, short, .. } => {
            static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
            crate::log_limited!(
                LIMIT,
                info,
                "re-backup of file {file}: chunk(s) {} still below the desired degree after 5 tries",
                list_chunks(short)
            );
        }
        other => tracing::debug!("re-backup: {other:?}"),
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
