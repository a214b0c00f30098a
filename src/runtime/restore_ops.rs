//! RESTORE of a file, or of everything backed up under a directory: where each file goes
//! (under the target, by its path below what was named), never over an existing file unless
//! asked (one that already holds exactly the backed-up content counts as restored), symbolic
//! links recreated, and the tree's one result.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::json;

use super::batch::{self, Batch, FileResult, Outcome, Refusal, Task};
use super::client_ops::{command_refusal, op_name, reply_now};
use super::effects::Peer;
use crate::client::{ErrorKind, Reply};
use crate::core::{Metadata, RestoreRequest};
use crate::protocol::{ChunkHash, ChunkNo, FileId};

/// What a RESTORE asks for, besides the path.
#[derive(Clone, Debug)]
pub(super) struct Options {
    pub enhanced: bool,
    /// Directory to restore into (`None`: the peer's `restored/`).
    pub to: Option<PathBuf>,
    /// Replace existing files.
    pub force: bool,
    /// One file's version.
    pub version: Option<u32>,
}

/// One path to restore, as the catalog has it.
enum Entry {
    /// A file: its id, size, bytes of it per chunk and chunk hashes (on the wire: of the
    /// ciphertext, for a sealed file).
    File {
        file: FileId,
        size: u64,
        payload: usize,
        hashes: Vec<Option<ChunkHash>>,
    },
    /// A symbolic link and its target.
    Link(PathBuf),
}

/// The entry of `path` (`version`, or the newest one a restore takes), if backed up.
fn entry(m: &Metadata, path: &Path, version: Option<u32>) -> Option<Entry> {
    if version.is_none()
        && let Some((_, newest)) = m.versions_of(path).last()
        && let Some(target) = &newest.attrs.link
    {
        return Some(Entry::Link(target.clone()));
    }
    let file = m.file_for_path(path, version)?;
    let f = &m.backed_up()[&file];
    Some(Entry::File {
        file,
        size: f.size,
        payload: f.attrs.payload(),
        hashes: f.chunks.iter().map(|c| c.hash).collect(),
    })
}

/// Restores `path`: a file backed up from there, or every path backed up below it.
pub(super) fn restore(
    peer: &Arc<Peer>,
    path: &Path,
    opts: Options,
) -> Result<Receiver<Reply>, Refusal> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let root = peer.effects.disk.files.root().to_path_buf();
    let target = opts.to.clone().unwrap_or_else(|| root.join("restored"));
    let (one, below) = peer.core.with_metadata(|m| {
        let one = entry(m, &path, opts.version);
        let mut below: Vec<(PathBuf, Entry)> = Vec::new();
        if one.is_none() && opts.version.is_none() {
            let mut paths: Vec<&PathBuf> = m
                .backed_up()
                .values()
                .filter(|f| f.is_users())
                .map(|f| &f.path)
                .filter(|p| p.starts_with(&path) && **p != path)
                .collect();
            paths.sort();
            paths.dedup();
            below = paths
                .into_iter()
                .filter_map(|p| entry(m, p, None).map(|e| (p.clone(), e)))
                .collect();
        }
        (one, below)
    });
    let name = op_name("RESTORE", opts.enhanced);
    match one {
        Some(Entry::File {
            file,
            size,
            payload,
            hashes,
        }) => {
            let Some(base) = path.file_name() else {
                return Err((
                    ErrorKind::BadRequest,
                    format!("{} does not name a file", path.display()),
                ));
            };
            let dest = target.join(base);
            if !opts.force && dest.symlink_metadata().is_ok() {
                if same_content(peer, &dest, file, size, payload, &hashes) {
                    return Ok(reply_now(Reply::Done {
                        ok: true,
                        kind: None,
                        message: format!(
                            "{} already holds the backed-up content of {}: nothing to restore",
                            dest.display(),
                            path.display()
                        ),
                        result: json!({"path": path, "file_id": file,
                            "chunks": hashes.len(), "restored_to": dest}),
                    }));
                }
                return Err((ErrorKind::BadRequest, exists(&dest, &path)));
            }
            let batch = Batch {
                name,
                failure: ErrorKind::Io,
                tasks: vec![file_task(peer, path, dest, size, &opts, None)],
            };
            Ok(batch::spawn(peer.clone(), batch, |mut r| {
                r.pop().expect("one file").reply
            }))
        }
        Some(Entry::Link(_)) | None if below.is_empty() => Err(match opts.version {
            Some(k) => (
                ErrorKind::NotBackedUp,
                format!(
                    "{} has no version {k} backed up by this peer",
                    path.display()
                ),
            ),
            None if one.is_some() => (
                ErrorKind::BadRequest,
                format!(
                    "{} is a symbolic link: restore the directory that holds it",
                    path.display()
                ),
            ),
            None => (
                ErrorKind::NotBackedUp,
                format!(
                    "{} was not backed up by this peer (neither a file nor a directory holding one)",
                    path.display()
                ),
            ),
        }),
        _ => {
            // A tree: each path goes under the target by its place below the directory named.
            let base = target.join(path.file_name().unwrap_or_default());
            std::fs::create_dir_all(&base).map_err(|e| {
                (
                    ErrorKind::Io,
                    format!("cannot create {}: {e}", base.display()),
                )
            })?;
            let mut tasks = Vec::new();
            let mut settled = Vec::new();
            let mut links = Vec::new();
            for (p, e) in below {
                let dest = base.join(p.strip_prefix(&path).expect("below the root"));
                let taken = dest.symlink_metadata().is_ok();
                match e {
                    // Links are made last: a file restored below a link just made could land
                    // wherever the link points.
                    Entry::Link(to) => links.push((p, dest, to)),
                    Entry::File {
                        file,
                        size,
                        payload,
                        hashes,
                    } => {
                        if taken && !opts.force {
                            let reply = if same_content(peer, &dest, file, size, payload, &hashes) {
                                done(format!("{} already restored", dest.display()))
                            } else {
                                Reply::Error {
                                    kind: ErrorKind::BadRequest,
                                    message: exists(&dest, &p),
                                }
                            };
                            settled.push(FileResult {
                                path: p,
                                bytes: size,
                                label: "restore",
                                reply,
                            });
                            continue;
                        }
                        tasks.push(file_task(peer, p, dest, size, &opts, Some(base.clone())));
                    }
                }
            }
            let batch = Batch {
                name,
                failure: ErrorKind::Io,
                tasks,
            };
            let force = opts.force;
            Ok(batch::spawn(peer.clone(), batch, move |mut results| {
                results.extend(settled);
                for (p, dest, to) in links {
                    let reply = link_reply(&to, &dest, &base, force);
                    results.push(FileResult {
                        path: p,
                        bytes: 0,
                        label: "restore",
                        reply,
                    });
                }
                tree_reply(&path, &base, &results)
            }))
        }
    }
}

/// A success with `message`.
fn done(message: String) -> Reply {
    Reply::Done {
        ok: true,
        kind: None,
        message,
        result: json!({}),
    }
}

/// Why a restore to `dest` of `path` was refused: a file is there.
fn exists(dest: &Path, path: &Path) -> String {
    if std::fs::canonicalize(dest).is_ok_and(|d| d == path) {
        format!(
            "restoring {} would overwrite the original: restore it elsewhere with --to, or \
             over it with --force",
            path.display()
        )
    } else {
        exists_msg(dest)
    }
}

fn exists_msg(dest: &Path) -> String {
    format!(
        "{} exists with other content: restore elsewhere with --to, or replace it with --force",
        dest.display()
    )
}

/// Recreates the symbolic link `dest` → `to` below `base` (replacing what is there if
/// `force`; one that already points there counts as restored).
fn link_reply(to: &Path, dest: &Path, base: &Path, force: bool) -> Reply {
    if std::fs::read_link(dest).is_ok_and(|t| t == to) {
        return done(format!(
            "{} already links to {}",
            dest.display(),
            to.display()
        ));
    }
    let taken = dest.symlink_metadata().is_ok();
    if taken && !force {
        return Reply::Error {
            kind: ErrorKind::BadRequest,
            message: exists_msg(dest),
        };
    }
    let made = make_dir_within(dest, base)
        .and_then(|()| {
            if taken {
                std::fs::remove_file(dest)
            } else {
                Ok(())
            }
        })
        .and_then(|()| std::os::unix::fs::symlink(to, dest));
    match made {
        Ok(()) => done(format!("linked {}", dest.display())),
        Err(e) => Reply::Error {
            kind: ErrorKind::Io,
            message: format!("cannot make link {}: {e}", dest.display()),
        },
    }
}

/// Creates the directories above `dest`, refusing if the part that exists already leads out
/// of `base` (through a symbolic link that was there before the restore).
fn make_dir_within(dest: &Path, base: &Path) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("/"));
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let (real, root) = (
        std::fs::canonicalize(existing)?,
        std::fs::canonicalize(base)?,
    );
    if !real.starts_with(&root) {
        return Err(std::io::Error::other(format!(
            "{} leads out of {} (through a symbolic link): not restoring there",
            existing.display(),
            base.display()
        )));
    }
    std::fs::create_dir_all(dir)
}

/// Whether the file at `dest` has exactly `size` bytes with these chunk hashes (`payload`
/// bytes a chunk; the hashes of `file` on the wire, of the ciphertext for a sealed file;
/// unknown hashes: no).
fn same_content(
    peer: &Peer,
    dest: &Path,
    file: FileId,
    size: u64,
    payload: usize,
    hashes: &[Option<ChunkHash>],
) -> bool {
    let Ok(mut f) = std::fs::File::open(dest) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).ok() != Some(size) {
        return false;
    }
    for (no, hash) in hashes.iter().enumerate() {
        let Some(hash) = hash else { return false };
        let len = (size - no as u64 * payload as u64).min(payload as u64) as usize;
        let mut buf = vec![0u8; len];
        if f.read_exact(&mut buf).is_err()
            || peer.core.wire_hash(file, no as ChunkNo, buf) != Some(*hash)
        {
            return false;
        }
    }
    true
}

/// One file's restore to `dest` (a tree's: never outside `within`).
fn file_task(
    peer: &Arc<Peer>,
    path: PathBuf,
    dest: PathBuf,
    size: u64,
    opts: &Options,
    within: Option<PathBuf>,
) -> Task {
    let peer = peer.clone();
    let (enhanced, version, overwrite) = (opts.enhanced, opts.version, opts.force);
    Task {
        path: path.clone(),
        bytes: size,
        label: "restore",
        start: Box::new(move |op| {
            let dir = dest.parent().unwrap_or(Path::new("/"));
            let made = match &within {
                Some(base) => make_dir_within(&dest, base),
                None => std::fs::create_dir_all(dir),
            };
            made.map_err(|e| {
                (
                    ErrorKind::Io,
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
            let tmp = tmp_for(&peer, &dest, op);
            let req = RestoreRequest {
                path,
                tmp,
                dest,
                enhanced,
                version,
                overwrite,
                read_only: false,
            };
            peer.core
                .start_restore(op, req)
                .map_err(|e| command_refusal(&e))
        }),
    }
}

/// Where restore `op` assembles `dest`: in the peer's temporary directory if that is on the
/// same file system (it is cleaned at start), else beside `dest` (a rename cannot cross file
/// systems).
fn tmp_for(peer: &Peer, dest: &Path, op: u64) -> PathBuf {
    let tmp_dir = peer.effects.disk.files.tmp_dir();
    let dir = dest.parent().unwrap_or(Path::new("/"));
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(tmp_dir).is_some() && dev(tmp_dir) == dev(dir) {
        tmp_dir.join(format!("restore-{op}.part"))
    } else {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        dir.join(format!(".{name}.dbs-restore-{op}.part"))
    }
}

/// The result of a tree's restore into `base`.
fn tree_reply(root: &Path, base: &Path, results: &[FileResult]) -> Reply {
    let outcome = Outcome::of(results);
    let message = format!(
        "restored {} to {}: {} file(s), {} bytes",
        root.display(),
        base.display(),
        outcome.done,
        outcome.bytes
    );
    outcome.reply(message, json!({"path": root, "restored_to": base}))
}
