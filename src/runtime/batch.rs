//! Client operations over many files (BACKUP and RESTORE of a directory tree): the files'
//! operations run on the core many at once, their replies come back here, and the client
//! gets one stream of progress (files and bytes) and one result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::effects::Peer;
use super::replies::Sink;
use crate::client::{ErrorKind, Reply};
use crate::core::{Action, OpId};

/// Files of one batch in flight at most: enough to keep the core's window full of small
/// files (1,000 files of one chunk each take a few rounds of the 0-400 ms STORED delay).
const FILES_IN_FLIGHT: usize = 256;
/// Bytes of one batch in flight at most (a file larger than this runs alone).
const BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
/// Progress is sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A request the peer does not run, and why.
pub(super) type Refusal = (ErrorKind, String);

/// Starts one file's operation as `op` (its replies then arrive at the batch); returns the
/// core's first actions.
pub(super) type Start = Box<dyn FnOnce(OpId) -> Result<Vec<Action>, Refusal> + Send>;

/// One file of a batch.
pub(super) struct Task {
    /// The file (as the client knows it).
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What is done to it, when a batch does several things to one file.
    pub label: &'static str,
    /// How to start it.
    pub start: Start,
}

/// What became of one file.
#[derive(Debug)]
pub(super) struct FileResult {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its task's label.
    pub label: &'static str,
    /// Its final reply.
    pub reply: Reply,
}

impl FileResult {
    /// The failure's kind and message, if it failed.
    pub fn failure(&self) -> Option<(ErrorKind, &str)> {
        match &self.reply {
            Reply::Done {
                ok: false,
                kind,
                message,
                ..
            } => Some((kind.unwrap_or_default(), message)),
            Reply::Error { kind, message } => Some((*kind, message)),
            _ => None,
        }
    }
}

/// A batch: its name (for the log and the files' operations) and its files.
pub(super) struct Batch {
    /// The operation as the client named it (BACKUP, RESTOREENH, ...).
    pub name: String,
    /// The kind of the core's failures of one file.
    pub failure: ErrorKind,
    /// The files.
    pub tasks: Vec<Task>,
}

/// Runs `batch` on its own thread; the client's replies arrive on the returned channel:
/// progress, then `finish` of every file's result (in the tasks' order).
pub(super) fn spawn(
    peer: Arc<Peer>,
    batch: Batch,
    finish: impl FnOnce(Vec<FileResult>) -> Reply + Send + 'static,
) -> Receiver<Reply> {
    let (client, rx) = crossbeam_channel::unbounded();
    let name = batch.name.clone();
    let spawned = std::thread::Builder::new()
        .name("batch".into())
        .spawn(move || run(&peer, batch, finish, &client));
    if let Err(e) = spawned {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(Reply::Error {
            kind: ErrorKind::Internal,
            message: format!("{name}: cannot start a thread: {e}"),
        });
        return rx;
    }
    rx
}

/// A file in flight: what it is and its share of the progress.
struct Flight {
    path: PathBuf,
    bytes: u64,
    label: &'static str,
    done: u64,
    total: u64,
}

/// The files of a batch that ended.
struct Ended {
    results: Vec<Option<FileResult>>,
    files: u64,
    bytes: u64,
}

impl Ended {
    fn record(&mut self, i: usize, flight: Flight, reply: Reply) {
        self.files += 1;
        self.bytes += flight.bytes;
        self.results[i] = Some(FileResult {
            path: flight.path,
            bytes: flight.bytes,
            label: flight.label,
            reply,
        });
    }
}

fn run(
    peer: &Peer,
    batch: Batch,
    finish: impl FnOnce(Vec<FileResult>) -> Reply,
    client: &Sender<Reply>,
) {
    let started = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, Reply)>();
    let total_files = batch.tasks.len() as u64;
    let total_bytes: u64 = batch.tasks.iter().map(|t| t.bytes).sum();
    // One file: its own progress (in chunks) goes to the client as it is.
    let single = total_files == 1;
    let mut ended = Ended {
        results: std::iter::repeat_with(|| None)
            .take(batch.tasks.len())
            .collect(),
        files: 0,
        bytes: 0,
    };
    let mut waiting = batch.tasks.into_iter().enumerate().peekable();
    let mut flying: HashMap<usize, Flight> = HashMap::new();
    let mut last_progress: Option<Instant> = None;
    loop {
        // Start files while there is room.
        let mut in_flight: u64 = flying.values().map(|f| f.bytes).sum();
        while let Some((_, task)) = waiting.peek() {
            if flying.len() >= FILES_IN_FLIGHT
                || (!flying.is_empty() && in_flight + task.bytes > BYTES_IN_FLIGHT)
            {
                break;
            }
            let (i, task) = waiting.next().expect("peeked");
            let op = peer.effects.replies.new_op_to(
                batch.name.clone(),
                &task.path,
                batch.failure,
                Sink::Child(tx.clone(), i),
            );
            let flight = Flight {
                path: task.path,
                bytes: task.bytes,
                label: task.label,
                done: 0,
                total: 1,
            };
            match (task.start)(op) {
                Ok(actions) => {
                    peer.run(actions);
                    in_flight += flight.bytes;
                    flying.insert(i, flight);
                }
                Err((kind, message)) => {
                    peer.effects.replies.forget(op);
                    ended.record(i, flight, Reply::Error { kind, message });
                }
            }
        }
        if flying.is_empty() && waiting.peek().is_none() {
            break;
        }
        let Ok((i, reply)) = rx.recv() else { break };
        match reply {
            Reply::Progress { done, total, .. } => {
                if single {
                    let _ = client.send(Reply::Progress {
                        done,
                        total,
                        files: None,
                    });
                    continue;
                }
                if let Some(f) = flying.get_mut(&i) {
                    (f.done, f.total) = (done, total.max(1));
                }
            }
            reply => {
                if let Some(f) = flying.remove(&i) {
                    ended.record(i, f, reply);
                }
            }
        }
        if !single && last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            last_progress = Some(Instant::now());
            let partial: u64 = flying
                .values()
                .map(|f| f.bytes.saturating_mul(f.done) / f.total)
                .sum();
            let _ = client.send(Reply::Progress {
                done: ended.bytes + partial,
                total: total_bytes,
                files: Some([ended.files, total_files]),
            });
        }
    }
    let reply = finish(ended.results.into_iter().flatten().collect());
    peer.effects.replies.end(&batch.name, started, &reply);
    let _ = client.send(reply);
}

/// What the files of a tree operation came to, for its reply.
pub(super) struct Outcome<'a> {
    /// Files done.
    pub done: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The files that failed: path, kind, message.
    pub failed: Vec<(&'a Path, ErrorKind, &'a str)>,
}

impl<'a> Outcome<'a> {
    /// The outcome of `results`.
    pub fn of(results: &'a [FileResult]) -> Self {
        let mut o = Outcome {
            done: 0,
            bytes: 0,
            failed: Vec::new(),
        };
        for r in results {
            match r.failure() {
                Some((kind, message)) => o.failed.push((&r.path, kind, message)),
                None => {
                    o.done += 1;
                    o.bytes += r.bytes;
                }
            }
        }
        o
    }

    /// "; N FAILED: first messages", or "" when nothing failed.
    pub fn failed_text(&self) -> String {
        if self.failed.is_empty() {
            return String::new();
        }
        let lines: Vec<String> = self.failed.iter().map(|(_, _, m)| m.to_string()).collect();
        format!("; {} FAILED: {}", self.failed.len(), first_lines(&lines))
    }

    /// The failures as the reply's `failed` list.
    pub fn failed_json(&self) -> Vec<serde_json::Value> {
        self.failed
            .iter()
            .map(|(path, kind, message)| {
                serde_json::json!({"path": path, "kind": kind, "message": message})
            })
            .collect()
    }

    /// The tree's reply: done when nothing failed, else `incomplete` (each file's own kind is
    /// in `failed`).
    pub fn reply(&self, message: String, mut result: serde_json::Value) -> Reply {
        result["files"] = self.done.into();
        result["bytes"] = self.bytes.into();
        result["failed"] = self.failed_json().into();
        let ok = self.failed.is_empty();
        Reply::Done {
            ok,
            kind: (!ok).then_some(ErrorKind::Incomplete),
            message: message + &self.failed_text(),
            result,
        }
    }
}

/// The first 5 of `lines` joined, then how many more.
pub(super) fn first_lines(lines: &[String]) -> String {
    let mut s = lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if lines.len() > 5 {
        s.push_str(&format!("; … ({} more)", lines.len() - 5));
    }
    s
}
