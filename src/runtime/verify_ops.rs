//! VERIFY of the files backed up here (or under a path): each file's chunks checked at their
//! holders without moving a body (CHECK / CHECKED, enhanced peers), and with `--read-data`
//! every chunk also read back and checked against its hash, writing nothing; one result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::json;

use super::batch::{self, Batch, FileResult, Refusal, Task, first_lines};
use super::client_ops::command_refusal;
use super::effects::Peer;
use crate::client::{ErrorKind, Reply};
use crate::core::RestoreRequest;

/// The label of a file's challenge task.
const CHALLENGE: &str = "challenge";
/// The label of a file's read-back task.
const READ_DATA: &str = "read_data";

/// Verifies the version a restore would take (the newest whole one) of every file backed up
/// at or under `path` (all without it).
pub(super) fn verify(
    peer: &Arc<Peer>,
    path: Option<&Path>,
    read_data: bool,
) -> Result<Receiver<Reply>, Refusal> {
    let path = path.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let challenge = peer.core.config().enhanced();
    if !challenge && !read_data {
        return Err((
            ErrorKind::Unsupported,
            format!(
                "VERIFY asks holders to prove they have each chunk, which needs a peer started \
                 with an enhanced protocol version; this peer runs {} (VERIFY --read-data reads \
                 every chunk back instead, on any peer)",
                peer.core.config().version
            ),
        ));
    }
    // Each path once, with the size of the version VERIFY takes.
    let files: Vec<(PathBuf, u64)> = peer.core.with_metadata(|m| {
        let mut paths: Vec<&PathBuf> = m
            .backed_up()
            .values()
            .filter(|f| {
                !f.is_link() && f.is_users() && path.as_ref().is_none_or(|p| f.path.starts_with(p))
            })
            .map(|f| &f.path)
            .collect();
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .filter_map(|p| {
                let file = m.file_for_path(p, None)?;
                Some((p.clone(), m.backed_up()[&file].size))
            })
            .collect()
    });
    if files.is_empty() {
        return Err((
            ErrorKind::NotBackedUp,
            match &path {
                Some(p) => format!("nothing under {} was backed up by this peer", p.display()),
                None => "this peer backed up nothing".into(),
            },
        ));
    }
    let mut tasks = Vec::new();
    for (p, size) in &files {
        if challenge {
            let (peer, p) = (peer.clone(), p.clone());
            tasks.push(Task {
                path: p.clone(),
                bytes: 0,
                label: CHALLENGE,
                start: Box::new(move |op| {
                    peer.core
                        .start_verify(op, &p)
                        .map_err(|e| command_refusal(&e))
                }),
            });
        }
        if read_data {
            let (peer, p) = (peer.clone(), p.clone());
            tasks.push(Task {
                path: p.clone(),
                bytes: *size,
                label: READ_DATA,
                start: Box::new(move |op| {
                    let req = RestoreRequest {
                        path: p,
                        tmp: PathBuf::new(),
                        dest: PathBuf::new(),
                        enhanced: peer.core.config().enhanced(),
                        version: None,
                        overwrite: false,
                        read_only: true,
                    };
                    peer.core
                        .start_restore(op, req)
                        .map_err(|e| command_refusal(&e))
                }),
            });
        }
    }
    let batch = Batch {
        name: "VERIFY".into(),
        failure: ErrorKind::Incomplete,
        tasks,
    };
    let root = path.unwrap_or_else(|| PathBuf::from("/"));
    Ok(batch::spawn(peer.clone(), batch, move |results| {
        verify_reply(&root, files.len(), challenge, &results)
    }))
}

/// The result of a VERIFY of `files` files.
fn verify_reply(root: &Path, files: usize, challenge: bool, results: &[FileResult]) -> Reply {
    let mut per_file: BTreeMap<&Path, serde_json::Value> = BTreeMap::new();
    let mut problems = Vec::new();
    let (mut chunks, mut verified, mut unconfirmed) = (0u64, 0u64, 0u64);
    for r in results {
        let entry = per_file
            .entry(&r.path)
            .or_insert_with(|| json!({"path": r.path}));
        entry[r.label] = match (&r.reply, r.failure()) {
            (Reply::Done { result, .. }, _) if r.label == CHALLENGE => {
                chunks += result["chunks"].as_u64().unwrap_or(0);
                verified += result["verified"].as_u64().unwrap_or(0);
                unconfirmed += result["unconfirmed"]
                    .as_array()
                    .map_or(0, |a| a.len() as u64);
                result.clone()
            }
            (_, None) => json!("ok"),
            (_, Some((kind, message))) => json!({"kind": kind, "message": message}),
        };
        if let Some((_, message)) = r.failure() {
            problems.push(message.to_string());
        }
    }
    let mut message = format!("verified {files} file(s) under {}", root.display());
    if challenge {
        message.push_str(&format!(
            ": {verified} of {chunks} chunks proven at their degree, {unconfirmed} unconfirmed"
        ));
    }
    if results.iter().any(|r| r.label == READ_DATA) {
        message.push_str("; every chunk read back");
    }
    if !problems.is_empty() {
        message.push_str(&format!(
            "; {} PROBLEM(S): {}",
            problems.len(),
            first_lines(&problems)
        ));
    }
    Reply::Done {
        ok: problems.is_empty(),
        kind: (!problems.is_empty()).then_some(ErrorKind::Incomplete),
        message,
        result: json!({
            "path": root,
            "files": per_file.into_values().collect::<Vec<_>>(),
            "chunks": chunks,
            "verified": verified,
            "unconfirmed": unconfirmed,
        }),
    }
}
