//! BACKUP of a file or of a directory tree: what the file system says of each file, what a
//! tree holds (regular files backed up, symbolic links recorded and not followed, special
//! files skipped and reported), which files are unchanged since their newest backup, and the
//! tree's one result.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::json;

use super::batch::{self, Batch, FileResult, Outcome, Refusal, Task, first_lines};
use super::client_ops::{command_refusal, op_name};
use super::effects::Peer;
use crate::client::{ErrorKind, Reply};
use crate::core::verify::VerifyKey;
use crate::core::{BackupRequest, CommandError, FileAttrs};
use crate::protocol::FileId;
use crate::protocol::file_id::file_id;
use crate::storage::mtime_of;

/// What a BACKUP asks for, besides the path.
#[derive(Clone, Copy, Debug)]
pub(super) struct Options {
    pub degree: u8,
    pub enhanced: bool,
    pub keep: u8,
}

/// Backs up `path`: a file (as one operation, as always) or a directory tree.
pub(super) fn backup(
    peer: &Arc<Peer>,
    path: &Path,
    opts: Options,
) -> Result<Receiver<Reply>, Refusal> {
    if !(1..=9).contains(&opts.degree) {
        return Err(command_refusal(&CommandError::BadDegree(opts.degree)));
    }
    let unreadable = |e| (ErrorKind::SourceUnreadable, e);
    let path = std::fs::canonicalize(path)
        .map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| unreadable(format!("cannot open {}: {e}", path.display())))?;
    let name = op_name("BACKUP", opts.enhanced);
    if meta.is_file() {
        let batch = Batch {
            name,
            failure: ErrorKind::SourceUnreadable,
            tasks: vec![file_task(peer, path, &meta, opts)],
        };
        return Ok(batch::spawn(peer.clone(), batch, |mut r| {
            r.pop().expect("one file").reply
        }));
    }
    if !meta.is_dir() {
        return Err(unreadable(format!(
            "{} is neither a regular file nor a directory",
            path.display()
        )));
    }
    let tree = walk(peer, &path, opts);
    let batch = Batch {
        name,
        failure: ErrorKind::SourceUnreadable,
        tasks: tree.tasks,
    };
    let found = tree.found;
    Ok(batch::spawn(peer.clone(), batch, move |results| {
        tree_reply(&path, found, &results)
    }))
}

/// The seconds since the epoch now.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The catalog's attributes of a file as `meta` describes it, backed up now, with a fresh
/// VERIFY key from the system's random source.
fn attrs_of(meta: &std::fs::Metadata) -> FileAttrs {
    let mut key = VerifyKey([0; 32]);
    let verify_key = getrandom::fill(&mut key.0).ok().map(|()| key);
    FileAttrs {
        mode: meta.mode() & 0o7777,
        mtime_ns: mtime_of(meta),
        backed_up_at: now_secs(),
        version: 0,
        link: None,
        verify_key,
        verifies: 0,
        ..FileAttrs::default()
    }
}

/// The file id of `path` as `meta` describes it, backed up by this peer.
fn id_of(peer: &Peer, path: &Path, meta: &std::fs::Metadata) -> FileId {
    file_id(
        path,
        meta.len(),
        i128::from(mtime_of(meta)),
        peer.core.config().id,
    )
}

/// One file's backup.
fn file_task(peer: &Arc<Peer>, path: PathBuf, meta: &std::fs::Metadata, opts: Options) -> Task {
    let req = BackupRequest {
        path: path.clone(),
        file: id_of(peer, &path, meta),
        size: meta.len(),
        degree: opts.degree,
        enhanced: opts.enhanced,
        attrs: attrs_of(meta),
        keep: opts.keep,
    };
    let peer = peer.clone();
    Task {
        path,
        bytes: meta.len(),
        label: "backup",
        start: Box::new(move |op| {
            peer.core
                .start_backup(op, req)
                .map_err(|e| command_refusal(&e))
        }),
    }
}

/// What a walk found besides the files to back up.
#[derive(Default)]
struct Found {
    /// Files whose newest backup has this content at the desired degree already.
    unchanged: usize,
    /// Symbolic links recorded.
    links: usize,
    /// Special files (devices, FIFOs, sockets) skipped, and the peer's own tree.
    special: Vec<PathBuf>,
    /// Entries that could not be read, and why.
    unreadable: Vec<(PathBuf, String)>,
}

/// The files of a tree to back up, and the rest of what it holds.
struct Tree {
    tasks: Vec<Task>,
    found: Found,
}

/// Walks the tree under `root` (not following symbolic links): regular files become tasks,
/// unless unchanged; links are recorded at once.
fn walk(peer: &Arc<Peer>, root: &Path, opts: Options) -> Tree {
    let mut tree = Tree {
        tasks: Vec::new(),
        found: Found::default(),
    };
    let mut link_actions = Vec::new();
    // The peer's own tree (chunks, metadata, restored files) is never backed up.
    let own = std::fs::canonicalize(peer.effects.disk.files.root()).ok();
    let own_skipped = std::cell::Cell::new(false);
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let mine = own.as_deref() == Some(e.path());
            own_skipped.set(own_skipped.get() || mine);
            !mine
        });
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                tree.found.unreadable.push((path, e.to_string()));
                continue;
            }
        };
        let path = entry.path().to_path_buf();
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                tree.found.unreadable.push((path, e.to_string()));
                continue;
            }
        };
        if kind.is_symlink() {
            match std::fs::read_link(&path) {
                Ok(target) => {
                    let file = id_of(peer, &path, &meta);
                    let attrs = FileAttrs {
                        link: Some(target),
                        ..attrs_of(&meta)
                    };
                    link_actions.extend(peer.core.record_link(
                        file,
                        path,
                        attrs,
                        opts.keep,
                        opts.enhanced,
                    ));
                    tree.found.links += 1;
                }
                Err(e) => tree.found.unreadable.push((path, e.to_string())),
            }
        } else if kind.is_file() {
            // (A home with a data key names a file by its registration: found by plain id.)
            let file = peer.core.file_of_base(&path, id_of(peer, &path, &meta));
            if file.is_some_and(|file| unchanged(peer, &path, file, opts.degree)) {
                tree.found.unchanged += 1;
            } else {
                tree.tasks.push(file_task(peer, path, &meta, opts));
            }
        } else {
            tree.found.special.push(path);
        }
    }
    peer.run(link_actions);
    if let Some(own) = own.filter(|_| own_skipped.get()) {
        tree.found.special.push(own);
    }
    tree
}

/// Whether `file` (same path, size and mtime) is the newest version of `path` backed up here,
/// with every chunk at `degree` or more, for that degree or more.
fn unchanged(peer: &Peer, path: &Path, file: FileId, degree: u8) -> bool {
    peer.core.with_metadata(|m| {
        m.versions_of(path).last().is_some_and(|(id, f)| {
            *id == file
                && f.desired >= degree
                && f.lowest_degree().is_some_and(|d| d >= usize::from(degree))
        })
    })
}

/// The result of a tree's backup.
fn tree_reply(root: &Path, found: Found, results: &[FileResult]) -> Reply {
    let mut outcome = Outcome::of(results);
    let unreadable: Vec<String> = found
        .unreadable
        .iter()
        .map(|(p, e)| format!("cannot read {}: {e}", p.display()))
        .collect();
    for ((p, _), message) in found.unreadable.iter().zip(&unreadable) {
        outcome
            .failed
            .push((p, ErrorKind::SourceUnreadable, message));
    }
    let mut message = format!(
        "backed up {}: {} file(s), {} bytes",
        root.display(),
        outcome.done,
        outcome.bytes
    );
    let mut also = Vec::new();
    if found.unchanged > 0 {
        also.push(format!("{} unchanged", found.unchanged));
    }
    if found.links > 0 {
        also.push(format!("{} symbolic link(s) recorded", found.links));
    }
    if !found.special.is_empty() {
        also.push(format!(
            "{} special file(s) or the peer's own tree skipped ({})",
            found.special.len(),
            names(found.special.iter())
        ));
    }
    if !also.is_empty() {
        message.push_str(&format!("; {}", also.join(", ")));
    }
    outcome.reply(
        message,
        json!({
            "path": root,
            "unchanged": found.unchanged,
            "links": found.links,
            "skipped": found.special,
        }),
    )
}

/// "a, b, c" of the first few paths, then how many more.
pub(super) fn names<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> String {
    let all: Vec<String> = paths.map(|p| p.display().to_string()).collect();
    first_lines(&all)
}
