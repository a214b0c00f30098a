//! The metadata on disk: a snapshot `metadata.json` and a journal `metadata.journal` of the
//! items changed since (one JSON [`Record`] per line).
//!
//! A save appends the records of what changed and fdatasyncs the journal: its cost follows the
//! change, not the size of the metadata, and it creates no file. When the journal has grown
//! past twice the snapshot (and at least 1 MB), the save writes a new snapshot atomically
//! (temporary file, fsync, rename, directory fsync) and starts the journal over. Loading reads
//! the snapshot and replays the journal; a torn last line (a crash during an append) is
//! dropped.
//!
//! Each snapshot has an epoch, and the journal's first line names the epoch it follows
//! (`{"epoch":N}`): a crash after a new snapshot but before the journal was started over
//! leaves a journal of an older epoch, whose records are already in the snapshot and must not
//! be replayed onto it (they would bring back older values).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{StorageError, io_err, write_atomic};
use crate::core::Metadata;
use crate::core::metadata::{Changes, Record};

/// The journal's first line, naming the snapshot epoch it follows.
fn header_line(epoch: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Header { epoch }).expect("header serialises");
    line.push(b'\n');
    line
}

/// A journal at least this large may be folded into a new snapshot.
const COMPACT_MIN: u64 = 1 << 20;

/// A peer's metadata files.
#[derive(Debug)]
pub struct MetaFile {
    snapshot: PathBuf,
    journal: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
}

/// The journal's first line.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    epoch: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Epoch of the snapshot the journal follows.
    epoch: u64,
    /// The journal, open for appending (after the first save).
    journal: Option<File>,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Generation of the metadata last saved.
    saved: u64,
}

impl MetaFile {
    /// The metadata files of the tree at `root` (temporary files go to `tmp_dir`).
    pub fn new(root: &Path, tmp_dir: &Path) -> Self {
        MetaFile {
            snapshot: root.join("metadata.json"),
            journal: root.join("metadata.journal"),
            tmp_dir: tmp_dir.to_path_buf(),
            state: Mutex::new(State::default()),
        }
    }

    /// Loads the snapshot and replays the journal; missing files mean a new peer.
    pub fn load(&self) -> Result<Metadata, StorageError> {
        let mut meta = match std::fs::read(&self.snapshot) {
            Ok(bytes) => {
                self.state.lock().snapshot_bytes = bytes.len() as u64;
                Metadata::from_json(&bytes).map_err(|source| StorageError::CorruptMetadata {
                    path: self.snapshot.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metadata::default(),
            Err(e) => return Err(io_err("read", &self.snapshot)(e)),
        };
        self.state.lock().epoch = meta.epoch();
        let file = match File::open(&self.journal) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(meta),
            Err(e) => return Err(io_err("read", &self.journal)(e)),
        };
        let mut good = 0u64;
        let mut lines = BufReader::new(file).split(b'\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.map_err(io_err("read", &self.journal))?;
            if good == 0
                && let Ok(header) = serde_json::from_slice::<Header>(&line)
            {
                if header.epoch != meta.epoch() {
                    tracing::warn!(
                        "{}: follows snapshot {} but the snapshot is {}: already in it, ignored",
                        self.journal.display(),
                        header.epoch,
                        meta.epoch()
                    );
                    break;
                }
                good += line.len() as u64 + 1;
                continue;
            }
            match serde_json::from_slice::<Record>(&line) {
                Ok(record) => {
                    meta.apply(record);
                    good += line.len() as u64 + 1;
                }
                // A crash during an append leaves a torn last line: drop it.
                Err(_) if lines.peek().is_none() => {
                    tracing::warn!("{}: dropping a torn last line", self.journal.display());
                    let f = OpenOptions::new().write(true).open(&self.journal);
                    f.and_then(|f| f.set_len(good).and_then(|()| f.sync_all()))
                        .map_err(io_err("truncate", &self.journal))?;
                }
                Err(source) => {
                    return Err(StorageError::CorruptMetadata {
                        path: self.journal.clone(),
                        source,
                    });
                }
            }
        }
        self.state.lock().journal_bytes = good;
        Ok(meta)
    }

    /// Generation of the metadata last saved.
    pub fn saved(&self) -> u64 {
        self.state.lock().saved
    }

    /// Saves what changed. `drain(snapshot)` takes the changes from the metadata (under its
    /// lock) with the generation they bring it to; `force_snapshot` writes a full snapshot
    /// whatever the journal's size.
    pub fn save(
        &self,
        force_snapshot: bool,
        drain: impl FnOnce(bool) -> Option<(u64, Changes)>,
    ) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        let compact = force_snapshot || st.journal_bytes > COMPACT_MIN.max(2 * st.snapshot_bytes);
        let Some((generation, changes)) = drain(compact) else {
            return Ok(());
        };
        match changes {
            Changes::Snapshot { bytes, epoch } => {
                write_atomic(&self.tmp_dir, &self.snapshot, &bytes)?;
                // The snapshot holds everything: the journal starts over, after this epoch.
                let header = header_line(epoch);
                let journal = self.open_journal(&mut st)?;
                journal
                    .set_len(0)
                    .and_then(|()| journal.write_all(&header))
                    .and_then(|()| journal.sync_data())
                    .map_err(io_err("start over", &self.journal))?;
                st.journal_bytes = header.len() as u64;
                st.snapshot_bytes = bytes.len() as u64;
                st.epoch = epoch;
            }
            Changes::Records(records) => {
                if !records.is_empty() {
                    let mut text = Vec::new();
                    if st.journal_bytes == 0 {
                        text = header_line(st.epoch);
                    }
                    for r in &records {
                        serde_json::to_writer(&mut text, r).expect("record serialises");
                        text.push(b'\n');
                    }
                    let journal = self.open_journal(&mut st)?;
                    journal
                        .write_all(&text)
                        .and_then(|()| journal.sync_data())
                        .map_err(io_err("append to", &self.journal))?;
                    st.journal_bytes += text.len() as u64;
                }
            }
        }
        st.saved = generation;
        Ok(())
    }

    fn open_journal<'a>(&self, st: &'a mut State) -> Result<&'a mut File, StorageError> {
        if st.journal.is_none() {
            let existed = self.journal.exists();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600) // like the snapshot: it names the files backed up here
                .open(&self.journal)
                .map_err(io_err("open", &self.journal))?;
            if !existed {
                super::sync_dir(self.journal.parent().unwrap_or(Path::new(".")))?;
            }
            st.journal = Some(f);
        }
        Ok(st.journal.as_mut().expect("just opened"))
    }
}
