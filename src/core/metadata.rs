//! What a peer persists: chunks it stores for others, files it backed up, its capacity,
//! (enhanced) pending deletions and the peers known to speak 2.0, and the files deleted
//! recently (tombstones).
//!
//! Plain data with the operations the protocol core needs; no I/O. Every change goes through
//! a method that notes which item changed, so that the runtime can save just those items as
//! journal [`Record`]s ([`Metadata::drain_changes`]) instead of rewriting everything; see
//! [`crate::storage::meta_file`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::verify::VerifyKey;
use crate::protocol::{CatalogTag, ChunkHash, ChunkKey, ChunkNo, FileId, PeerId};

/// Default capacity for stored chunks: 100 GB (in bytes).
pub const DEFAULT_CAPACITY: u64 = 100_000_000_000;

/// A chunk this peer stores for another peer's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// Body size in bytes.
    pub size: u32,
    /// Desired replication degree (from the PUTCHUNK).
    pub desired: u8,
    /// Distinct peers known to hold a copy, this peer included.
    pub holders: BTreeSet<PeerId>,
    /// SHA-256 of the body as written; checked before the chunk is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChunkHash>,
    /// Enhanced: the file's home, when known (the sender of the PUTCHUNK that made this copy,
    /// or the `HOME` line of a re-backup's PUTCHUNK 2.0): while it is alive, it repairs the
    /// chunk, not its holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PeerId>,
    /// The peer whose PUTCHUNK made this copy (unknown for copies adopted at start-up, or
    /// recorded before senders were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<PeerId>,
}

impl StoredChunk {
    /// The peer whose share of this peer's capacity the copy counts against
    /// ([`crate::core::Config::max_share`]): its home if known, else the sender of the
    /// PUTCHUNK that made it (a 1.0 PUTCHUNK names no home).
    pub fn owner(&self) -> Option<PeerId> {
        self.home.or(self.sender)
    }
}

/// What the home peer knows of one chunk of a file it backed up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Distinct peers that confirmed (STORED) and have not announced REMOVED since.
    pub holders: BTreeSet<PeerId>,
    /// SHA-256 of the chunk as first sent; restores accept only bodies with this hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChunkHash>,
    /// The proofs VERIFY expects from its holders, recorded with the hash (hex; see
    /// [`crate::core::verify::recorded_proofs`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proofs: String,
}

/// What the catalog keeps of a backed-up file besides its chunks: what a restore puts back
/// (mode, mtime, a symlink's target), when it was backed up and which version of its path
/// it is. Every field defaults to "unknown" (metadata written before they were kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttrs {
    /// Unix permission bits (0: unknown).
    #[serde(default)]
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch (0: unknown).
    #[serde(default)]
    pub mtime_ns: i64,
    /// When the backup started, seconds since the epoch (0: unknown).
    #[serde(default)]
    pub backed_up_at: u64,
    /// Version number of this path: 1 for its first backup, one more each time another
    /// content than the newest is backed up (0: from before versions were kept).
    #[serde(default)]
    pub version: u32,
    /// A symbolic link: its target (recorded, not followed; it has no chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
    /// The secret VERIFY derives its nonces from (see [`crate::core::verify`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_key: Option<VerifyKey>,
    /// VERIFYs run so far (each takes the next nonce).
    #[serde(default)]
    pub verifies: u32,
    /// A generation of this peer's own catalog (backed up into the group, not a user's file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogTag>,
    /// Encrypted with this home's data key: each chunk carries
    /// [`crate::secure::chunks::SEALED_PAYLOAD`] bytes of the file, not 64,000.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// Named by a home with a data key: what its delete secret is made from
    /// (`crate::secure::ownership`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

/// What a home with a data key makes a file's delete secret (and its id) from: the file's
/// plain id and the salt of this registration (none for a catalog generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The plain file id (protocol.md §2).
    pub base: FileId,
    /// Drawn when the file was registered (a file deleted and backed up again gets another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<FileId>,
}

impl FileAttrs {
    /// Bytes of the file each chunk carries.
    pub fn payload(&self) -> usize {
        payload(self.sealed)
    }
}

/// A file this peer backed up (it is the file's home).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpFile {
    /// Canonical path of the source file.
    pub path: PathBuf,
    /// Size in bytes when backed up.
    pub size: u64,
    /// Desired replication degree.
    pub desired: u8,
    /// One record per chunk, indexed by chunk number.
    pub chunks: Vec<ChunkRecord>,
    /// Mode, mtime, time of backup, version, link target.
    #[serde(flatten)]
    pub attrs: FileAttrs,
}

impl BackedUpFile {
    /// Whether this entry is a symbolic link (no chunks).
    pub fn is_link(&self) -> bool {
        self.attrs.link.is_some()
    }

    /// Whether this entry is a generation of the peer's own catalog.
    pub fn is_catalog(&self) -> bool {
        self.attrs.catalog.is_some()
    }

    /// Whether this entry is a user's file or link (not a catalog generation).
    pub fn is_users(&self) -> bool {
        !self.is_catalog()
    }

    /// The lowest perceived degree of its chunks (`None` for a link).
    pub fn lowest_degree(&self) -> Option<usize> {
        self.chunks.iter().map(|c| c.holders.len()).min()
    }

    /// Whether every chunk has at least one holder (a restore can get it all).
    pub fn restorable(&self) -> bool {
        self.chunks.iter().all(|c| !c.holders.is_empty())
    }
}

/// A peer's catalog as it is backed up into the group (see `core::recover`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogDocument {
    /// Whose catalog.
    pub home: PeerId,
    /// Its generation.
    pub generation: u64,
    /// Every entry: file id and what the home knew of it.
    pub files: Vec<(FileId, BackedUpFile)>,
}

/// A backed-up file without its chunk records (a journal record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Canonical path of the source file.
    pub path: PathBuf,
    /// Size in bytes when backed up.
    pub size: u64,
    /// Desired replication degree.
    pub desired: u8,
    /// Mode, mtime, time of backup, version, link target.
    #[serde(flatten)]
    pub attrs: FileAttrs,
}

/// Everything a peer persists. Read through the accessors; change only through the methods,
/// which note what changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metadata {
    capacity: u64,
    stored: BTreeMap<FileId, BTreeMap<ChunkNo, StoredChunk>>,
    backed_up: BTreeMap<FileId, BackedUpFile>,
    #[serde(default)]
    pending_deletes: BTreeMap<FileId, BTreeSet<PeerId>>,
    #[serde(default)]
    enhanced_peers: BTreeSet<PeerId>,
    /// Files deleted recently, with the peer on whose word (see [`Metadata::add_tombstone`]).
    #[serde(default)]
    tombstones: BTreeMap<FileId, Tombstone>,
    /// Files stored here that are catalog generations of other peers, and what they are.
    #[serde(default)]
    catalog_tags: BTreeMap<FileId, CatalogTag>,
    /// The files backed up here by path (an index of `backed_up`, kept with it).
    #[serde(skip)]
    by_path: BTreeMap<PathBuf, BTreeSet<FileId>>,
    /// Items changed since the last save.
    #[serde(skip)]
    changed: BTreeSet<Item>,
    /// Files registered anew since the last save.
    #[serde(skip)]
    fresh_files: BTreeSet<FileId>,
    /// Counts snapshots: the journal written after a snapshot carries its epoch, so that a
    /// journal older than the snapshot (a crash between the two) is not replayed onto it.
    #[serde(default)]
    epoch: u64,
    /// Bumped on every change.
    #[serde(skip)]
    generation: u64,
    /// Sum of the stored chunks' sizes (kept by `put_stored`).
    #[serde(skip)]
    used_bytes: u64,
    /// Sum of the stored chunks' footprints (kept by `put_stored`).
    #[serde(skip)]
    footprint_bytes: u64,
    /// Sum of the stored chunks' footprints by owner ([`StoredChunk::owner`]; kept by
    /// `put_stored`).
    #[serde(skip)]
    owner_bytes: BTreeMap<PeerId, u64>,
}

/// Deletions remembered at most (the oldest is forgotten first).
pub const TOMBSTONES_KEPT: usize = 4096;

/// A file deleted recently: a peer that deleted a file's chunks on a DELETE (or, at the home,
/// deleted its own file) refuses PUTCHUNKs for that file from any peer but the one whose word
/// deleted it. Without this, a holder that missed the DELETE and re-backs up one of the file's
/// chunks (after a REMOVED, or its own audit) makes peers that already deleted it, and
/// confirmed with DELETED, store it again, for good. Persisted, so that a restart in between
/// does not reopen the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The peer whose DELETE removed the file (its home).
    pub home: PeerId,
    /// Order of the deletions, to forget the oldest first.
    pub seq: u64,
    /// At the home, for a file named with a data key: what its delete secret is made from,
    /// to prove the deletion again (pending deletions are re-sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Ownership>,
}

/// One item of the metadata, as tracked for saving. The order matters: when changes are
/// replayed, a file's record comes before its chunks' records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Capacity,
    OwnFile(FileId),
    OwnChunk(ChunkKey),
    StoredFile(FileId),
    Stored(ChunkKey),
    PendingDelete(FileId),
    EnhancedPeer(PeerId),
    Tombstone(FileId),
    CatalogTag(FileId),
}

/// The new value of one changed item: a line of the metadata journal. Replaying the records
/// of a save in order, after the snapshot and the saves before it, gives the metadata back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The capacity.
    Capacity {
        /// Bytes.
        bytes: u64,
    },
    /// A file backed up here (`None`: forgotten). A new file starts with empty chunk records.
    OwnFile {
        /// The file.
        file: FileId,
        /// Its header, or `None`.
        header: Option<FileHeader>,
        /// Registered anew since the last save (it may have been forgotten in between): its
        /// chunk records start empty.
        #[serde(default)]
        fresh: bool,
    },
    /// One chunk record of a file backed up here.
    OwnChunk {
        /// The file.
        file: FileId,
        /// The chunk.
        no: ChunkNo,
        /// Its record.
        record: ChunkRecord,
    },
    /// Every chunk stored here for a file, replacing what was recorded.
    StoredFile {
        /// The file.
        file: FileId,
        /// Its chunks.
        chunks: BTreeMap<ChunkNo, StoredChunk>,
    },
    /// One chunk stored here (`None`: no longer).
    Stored {
        /// The file.
        file: FileId,
        /// The chunk.
        no: ChunkNo,
        /// Its record, or `None`.
        chunk: Option<StoredChunk>,
    },
    /// An enhanced deletion pending confirmation (`None`: none any more).
    PendingDelete {
        /// The file.
        file: FileId,
        /// Peers that have not confirmed, or `None`.
        peers: Option<BTreeSet<PeerId>>,
    },
    /// A peer known to speak the enhanced protocol.
    EnhancedPeer {
        /// The peer.
        peer: PeerId,
    },
    /// A file deleted recently (`None`: forgotten).
    Tombstone {
        /// The file.
        file: FileId,
        /// Its tombstone, or `None`.
        tombstone: Option<Tombstone>,
    },
    /// A file stored here that is another peer's catalog generation (`None`: no longer).
    CatalogTag {
        /// The file.
        file: FileId,
        /// What it is, or `None`.
        tag: Option<CatalogTag>,
    },
}

/// What a save writes.
#[derive(Debug)]
pub enum Changes {
    /// Journal records of the items changed since the last save.
    Records(Vec<Record>),
    /// The whole metadata (a new snapshot; the journal starts over, marked with `epoch`).
    Snapshot {
        /// The snapshot document.
        bytes: Vec<u8>,
        /// Its epoch.
        epoch: u64,
    },
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            capacity: DEFAULT_CAPACITY,
            stored: BTreeMap::new(),
            backed_up: BTreeMap::new(),
            by_path: BTreeMap::new(),
            pending_deletes: BTreeMap::new(),
            enhanced_peers: BTreeSet::new(),
            tombstones: BTreeMap::new(),
            catalog_tags: BTreeMap::new(),
            changed: BTreeSet::new(),
            fresh_files: BTreeSet::new(),
            epoch: 0,
            generation: 0,
            used_bytes: 0,
            footprint_bytes: 0,
            owner_bytes: BTreeMap::new(),
        }
    }
}

/// Space a chunk of `size` bytes takes for capacity purposes (an empty chunk counts as 1).
pub fn footprint(size: u32) -> u64 {
    u64::from(size.max(1))
}

/// Bytes of a file a chunk carries: 64,000, or fewer when it is encrypted (`sealed`).
pub fn payload(sealed: bool) -> usize {
    if sealed {
        crate::secure::chunks::SEALED_PAYLOAD
    } else {
        crate::protocol::MAX_CHUNK_SIZE
    }
}

/// Number of chunks of a file of `size` bytes, `payload` bytes a chunk: every chunk full but a
/// strictly shorter last one.
pub fn chunk_count(size: u64, payload: usize) -> u64 {
    size / payload as u64 + 1
}

impl Metadata {
    fn mark(&mut self, item: Item) {
        self.changed.insert(item);
        self.generation += 1;
    }

    /// Counts changes; the runtime compares it with what it saved.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Capacity for stored chunks, in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Chunks stored here, by file then chunk number.
    pub fn stored(&self) -> &BTreeMap<FileId, BTreeMap<ChunkNo, StoredChunk>> {
        &self.stored
    }

    /// Files this peer backed up.
    pub fn backed_up(&self) -> &BTreeMap<FileId, BackedUpFile> {
        &self.backed_up
    }

    /// Enhanced deletions not yet confirmed: for each deleted file, the enhanced peers that
    /// held its chunks and have not answered DELETED yet.
    pub fn pending_deletes(&self) -> &BTreeMap<FileId, BTreeSet<PeerId>> {
        &self.pending_deletes
    }

    /// Peers known to speak the enhanced protocol.
    pub fn enhanced_peers(&self) -> &BTreeSet<PeerId> {
        &self.enhanced_peers
    }

    /// Sets the capacity for stored chunks, in bytes.
    pub fn set_capacity(&mut self, bytes: u64) {
        if self.capacity != bytes {
            self.capacity = bytes;
            self.mark(Item::Capacity);
        }
    }

    /// Bytes used by stored chunks.
    pub fn used(&self) -> u64 {
        self.used_bytes
    }

    /// Space stored chunks take for capacity purposes: their sizes, an empty chunk counting as
    /// one byte (so a peer with capacity 0 holds nothing, not even empty chunks).
    pub fn footprint(&self) -> u64 {
        self.footprint_bytes
    }

    /// Reads a snapshot (as written by [`Metadata::drain_changes`]).
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Metadata> {
        let mut m: Metadata = serde_json::from_slice(bytes)?;
        for (id, f) in &m.backed_up {
            m.by_path.entry(f.path.clone()).or_default().insert(*id);
        }
        let stored = std::mem::take(&mut m.stored);
        for c in stored.values().flat_map(|chunks| chunks.values()) {
            m.count(c, true);
        }
        m.stored = stored;
        Ok(m)
    }

    /// Adds (`add`) or takes away a stored chunk's bytes from the space counts.
    fn count(&mut self, c: &StoredChunk, add: bool) {
        let (size, print) = (u64::from(c.size), footprint(c.size));
        if add {
            self.used_bytes += size;
            self.footprint_bytes += print;
        } else {
            self.used_bytes -= size;
            self.footprint_bytes -= print;
        }
        if let Some(owner) = c.owner() {
            let bytes = self.owner_bytes.entry(owner).or_default();
            if add {
                *bytes += print;
            } else {
                *bytes -= print;
                if *bytes == 0 {
                    self.owner_bytes.remove(&owner);
                }
            }
        }
    }

    /// Space the chunks stored here for `owner` take (footprints; see [`StoredChunk::owner`]).
    pub fn owner_footprint(&self, owner: PeerId) -> u64 {
        self.owner_bytes.get(&owner).copied().unwrap_or(0)
    }

    /// [`Metadata::owner_footprint`] of every owner with chunks stored here.
    pub fn owner_footprints(&self) -> &BTreeMap<PeerId, u64> {
        &self.owner_bytes
    }

    /// Sets (`Some`) or removes (`None`) the record of a stored chunk, keeping the space
    /// counts; returns the record it replaces. Every change of `stored` goes through here.
    fn put_stored(&mut self, key: ChunkKey, chunk: Option<StoredChunk>) -> Option<StoredChunk> {
        if let Some(c) = &chunk {
            self.count(c, true);
        }
        let old = match chunk {
            Some(c) => self.stored.entry(key.file).or_default().insert(key.no, c),
            None => {
                let m = self.stored.get_mut(&key.file)?;
                let old = m.remove(&key.no);
                if m.is_empty() {
                    self.stored.remove(&key.file);
                }
                old
            }
        };
        if let Some(c) = &old {
            self.count(c, false);
        }
        old
    }

    /// Replaces the records of every stored chunk of `file`; returns the chunk numbers it had.
    fn replace_stored_file(
        &mut self,
        file: FileId,
        chunks: BTreeMap<ChunkNo, StoredChunk>,
    ) -> Vec<ChunkNo> {
        let old: Vec<ChunkNo> = self
            .stored
            .get(&file)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for &no in &old {
            self.put_stored(ChunkKey { file, no }, None);
        }
        for (no, c) in chunks {
            self.put_stored(ChunkKey { file, no }, Some(c));
        }
        old
    }

    /// The stored chunk for `key`, if held here.
    pub fn stored_chunk(&self, key: &ChunkKey) -> Option<&StoredChunk> {
        self.stored.get(&key.file).and_then(|m| m.get(&key.no))
    }

    /// Records a stored chunk (or replaces its record).
    pub fn insert_stored(&mut self, key: ChunkKey, chunk: StoredChunk) {
        self.put_stored(key, Some(chunk));
        self.mark(Item::Stored(key));
    }

    /// Forgets every stored chunk of `file`; returns their numbers.
    pub fn remove_stored_file(&mut self, file: &FileId) -> Vec<ChunkNo> {
        let removed = self.replace_stored_file(*file, BTreeMap::new());
        if !removed.is_empty() {
            self.mark(Item::StoredFile(*file));
        }
        self.drop_tag_if_empty(file);
        removed
    }

    /// Forgets one stored chunk; true if it was held. (A catalog generation's tag stays: the
    /// copy may come back, trimmed copies do; it goes with the generation's DELETE.)
    pub fn remove_stored(&mut self, key: &ChunkKey) -> bool {
        let removed = self.put_stored(*key, None).is_some();
        if removed {
            self.mark(Item::Stored(*key));
        }
        removed
    }

    /// A catalog tag goes with its file (DELETE).
    fn drop_tag_if_empty(&mut self, file: &FileId) {
        if !self.stored.contains_key(file) && self.catalog_tags.remove(file).is_some() {
            self.mark(Item::CatalogTag(*file));
        }
    }

    /// Notes that `file`, stored here, is the catalog generation `tag`, unless chunks of it
    /// are held already without one (a user's file is never relabelled). The caller checks
    /// that `file` is the id `tag` names.
    pub fn set_catalog_tag(&mut self, file: FileId, tag: CatalogTag) {
        if self.stored.contains_key(&file) && !self.catalog_tags.contains_key(&file) {
            return;
        }
        if self.catalog_tags.insert(file, tag) != Some(tag) {
            self.mark(Item::CatalogTag(file));
        }
    }

    /// The catalog generations stored here (at least one chunk of each), by file.
    pub fn catalog_tags(&self) -> impl Iterator<Item = (&FileId, &CatalogTag)> {
        self.catalog_tags
            .iter()
            .filter(|(file, _)| self.stored.contains_key(file))
    }

    /// `file` is a catalog generation just stored here: the generations of the same home two
    /// or more older are dropped (their home deleted them once the next one was whole; this
    /// holder missed those DELETEs), with a tombstone so that they are not stored again.
    /// Returns the chunks to remove from disk.
    pub fn drop_stale_catalogs(&mut self, file: &FileId) -> Vec<ChunkKey> {
        let Some(tag) = self.catalog_tags.get(file).copied() else {
            return Vec::new();
        };
        let stale: Vec<FileId> = self
            .catalog_tags
            .iter()
            .filter(|(_, t)| t.home == tag.home && t.generation + 2 <= tag.generation)
            .map(|(f, _)| *f)
            .collect();
        let mut gone = Vec::new();
        for f in stale {
            for no in self.remove_stored_file(&f) {
                gone.push(ChunkKey { file: f, no });
            }
            self.add_tombstone(f, tag.home, None);
        }
        gone
    }

    /// The catalog tag of `file`, if it is one stored here.
    pub fn catalog_tag(&self, file: &FileId) -> Option<CatalogTag> {
        self.catalog_tags.get(file).copied()
    }

    /// This peer's catalog as a document: every entry of a user's file or link (every
    /// version), without the catalog generations themselves.
    pub fn catalog_document(&self, home: PeerId, generation: u64) -> CatalogDocument {
        CatalogDocument {
            home,
            generation,
            files: self
                .backed_up
                .iter()
                .filter(|(_, f)| f.is_users())
                .map(|(id, f)| (*id, f.clone()))
                .collect(),
        }
    }

    /// Installs a recovered catalog: its entries join the catalog (new entries, every chunk
    /// record with them). Returns the number of paths and of entries.
    pub fn install_catalog(&mut self, doc: CatalogDocument) -> (usize, usize) {
        let entries = doc.files.len();
        let mut paths = BTreeSet::new();
        for (id, f) in doc.files {
            paths.insert(f.path.clone());
            let chunks = f.chunks.len();
            self.put_own(id, f);
            self.fresh_files.insert(id);
            self.mark(Item::OwnFile(id));
            for no in 0..chunks {
                self.mark(Item::OwnChunk(ChunkKey {
                    file: id,
                    no: no as ChunkNo,
                }));
            }
        }
        (paths.len(), entries)
    }

    /// The record of chunk `key` of a file backed up here.
    pub fn own_chunk(&self, key: &ChunkKey) -> Option<&ChunkRecord> {
        self.backed_up
            .get(&key.file)
            .and_then(|f| f.chunks.get(key.no as usize))
    }

    /// Records a file this peer backs up (`payload` bytes a chunk): a new one with no
    /// confirmed chunks, or a known one (same id: unchanged) keeping its chunk records with the
    /// new desired degree.
    pub fn register_file(
        &mut self,
        file: FileId,
        path: PathBuf,
        size: u64,
        desired: u8,
        payload: usize,
    ) -> &BackedUpFile {
        self.mark(Item::OwnFile(file));
        if !self.backed_up.contains_key(&file) {
            self.fresh_files.insert(file);
        }
        if !self.backed_up.contains_key(&file) {
            let f = BackedUpFile {
                path,
                size,
                desired,
                chunks: vec![ChunkRecord::default(); chunk_count(size, payload) as usize],
                attrs: FileAttrs::default(),
            };
            self.put_own(file, f);
        }
        let entry = self.backed_up.get_mut(&file).expect("registered");
        entry.desired = desired;
        entry
    }

    /// Adds (or replaces) the entry of a file backed up here, keeping the path index.
    fn put_own(&mut self, file: FileId, f: BackedUpFile) {
        self.by_path.entry(f.path.clone()).or_default().insert(file);
        if let Some(old) = self.backed_up.insert(file, f)
            && old.path != self.backed_up[&file].path
        {
            self.unindex(file, &old.path);
        }
    }

    /// Removes the entry of a file backed up here, keeping the path index.
    fn take_own(&mut self, file: &FileId) -> Option<BackedUpFile> {
        let f = self.backed_up.remove(file)?;
        self.unindex(*file, &f.path);
        Some(f)
    }

    fn unindex(&mut self, file: FileId, path: &std::path::Path) {
        if let Some(ids) = self.by_path.get_mut(path) {
            ids.remove(&file);
            if ids.is_empty() {
                self.by_path.remove(path);
            }
        }
    }

    /// Sets the attributes of a file backed up here (a link loses its chunk records).
    pub fn set_file_attrs(&mut self, file: FileId, attrs: FileAttrs) {
        if let Some(f) = self.backed_up.get_mut(&file) {
            if attrs.link.is_some() {
                f.chunks.clear();
            }
            f.attrs = attrs;
            self.mark(Item::OwnFile(file));
        }
    }

    /// The version number `file` gets among the versions of `path`: its own if it is the
    /// newest already, else one more than the newest (an older content back again, say a
    /// version restored in place, becomes the newest).
    pub fn version_number(&self, path: &std::path::Path, file: FileId) -> u32 {
        match self.versions_of(path).last() {
            Some((id, f)) if *id == file => f.attrs.version,
            Some((_, f)) => f.attrs.version + 1,
            None => 1,
        }
    }

    /// The versions backed up from `path` (links included), oldest first.
    pub fn versions_of(&self, path: &std::path::Path) -> Vec<(FileId, &BackedUpFile)> {
        let mut v: Vec<(FileId, &BackedUpFile)> = self
            .by_path
            .get(path)
            .into_iter()
            .flatten()
            .filter_map(|id| self.backed_up.get(id).map(|f| (*id, f)))
            .collect();
        v.sort_by_key(|(id, f)| (f.attrs.version, f.attrs.backed_up_at, *id));
        v
    }

    /// Forgets a file this peer backed up.
    pub fn forget_file(&mut self, file: &FileId) -> Option<BackedUpFile> {
        let f = self.take_own(file)?;
        self.mark(Item::OwnFile(*file));
        Some(f)
    }

    /// Records the hash of chunk `key` of a file backed up here, with VERIFY's `proofs`,
    /// unless a hash is recorded; returns the recorded hash (`None` if the chunk is unknown).
    pub fn record_own_hash(
        &mut self,
        key: &ChunkKey,
        hash: ChunkHash,
        proofs: String,
    ) -> Option<ChunkHash> {
        let record = self
            .backed_up
            .get_mut(&key.file)
            .and_then(|f| f.chunks.get_mut(key.no as usize))?;
        if let Some(h) = record.hash {
            return Some(h);
        }
        record.hash = Some(hash);
        record.proofs = proofs;
        self.mark(Item::OwnChunk(*key));
        Some(hash)
    }

    /// The VERIFY key of the file of `key` if the chunk has no hash recorded yet (its proofs
    /// are then to be computed with the hash).
    pub fn key_to_record(&self, key: &ChunkKey) -> Option<VerifyKey> {
        let f = self.backed_up.get(&key.file)?;
        f.chunks.get(key.no as usize).filter(|c| c.hash.is_none())?;
        f.attrs.verify_key.clone()
    }

    /// Perceived degree of `key`: confirmations if it is a chunk of our own file, else the
    /// holders of our stored copy. A chunk of a catalog generation counts only enhanced
    /// holders: only they can tell a RECOVER they have it.
    pub fn perceived(&self, key: &ChunkKey) -> Option<usize> {
        self.holders_of(key)
            .map(|(holders, stored)| self.counted(key.file, holders, stored))
    }

    /// The holders recorded for `key`: of a chunk of our own file, else of the copy stored
    /// here (then with `true`).
    pub fn holders_of(&self, key: &ChunkKey) -> Option<(&BTreeSet<PeerId>, bool)> {
        if self.backed_up.contains_key(&key.file) {
            return self.own_chunk(key).map(|c| (&c.holders, false));
        }
        self.stored_chunk(key).map(|c| (&c.holders, true))
    }

    /// Whether `file` is a catalog generation (ours, or one stored here).
    pub fn is_catalog_file(&self, file: &FileId) -> bool {
        self.catalog_tags.contains_key(file)
            || self
                .backed_up
                .get(file)
                .is_some_and(BackedUpFile::is_catalog)
    }

    /// How many of `holders` of a chunk of `file` count toward its degree: all of them, or
    /// for a catalog generation the enhanced ones (this peer, a holder of `stored`, counted
    /// as one: a peer that keeps catalogs is enhanced).
    pub fn counted(&self, file: FileId, holders: &BTreeSet<PeerId>, stored: bool) -> usize {
        if !self.is_catalog_file(&file) {
            return holders.len();
        }
        let me = usize::from(stored && !holders.is_empty());
        holders
            .iter()
            .filter(|p| self.enhanced_peers.contains(p))
            .count()
            + me
    }

    /// The version of `path` a restore takes: `version` if given, else the newest one every
    /// chunk of which some peer holds (a newer one still short of holders, say while it is
    /// being backed up, leaves the previous one in charge), else the newest. Links are not
    /// files: `None` for them.
    pub fn file_for_path(&self, path: &std::path::Path, version: Option<u32>) -> Option<FileId> {
        let mut versions = self.versions_of(path);
        versions.retain(|(_, f)| !f.is_link() && f.is_users());
        let found = match version {
            Some(k) => versions.iter().find(|(_, f)| f.attrs.version == k),
            None => versions
                .iter()
                .rev()
                .find(|(_, f)| f.restorable())
                .or(versions.last()),
        };
        found.map(|(id, _)| *id)
    }

    /// Notes that `peer` holds (`holds`) or dropped `key`, wherever this peer tracks that
    /// chunk. True if anything changed.
    fn set_holder(&mut self, key: &ChunkKey, peer: PeerId, holds: bool) -> bool {
        let apply = |set: &mut BTreeSet<PeerId>| {
            if holds {
                set.insert(peer)
            } else {
                set.remove(&peer)
            }
        };
        let stored = self
            .stored
            .get_mut(&key.file)
            .and_then(|m| m.get_mut(&key.no))
            .is_some_and(|c| apply(&mut c.holders));
        let own = self
            .backed_up
            .get_mut(&key.file)
            .and_then(|f| f.chunks.get_mut(key.no as usize))
            .is_some_and(|c| apply(&mut c.holders));
        if stored {
            self.mark(Item::Stored(*key));
        }
        if own {
            self.mark(Item::OwnChunk(*key));
        }
        stored || own
    }

    /// Notes that `peer` holds `key`. True if anything changed.
    pub fn add_holder(&mut self, key: &ChunkKey, peer: PeerId) -> bool {
        self.set_holder(key, peer, true)
    }

    /// Notes that `peer` dropped `key`. True if anything changed.
    pub fn remove_holder(&mut self, key: &ChunkKey, peer: PeerId) -> bool {
        self.set_holder(key, peer, false)
    }

    /// Sets (or with an empty set, ends) the pending deletion of `file`.
    pub fn set_pending_delete(&mut self, file: FileId, peers: BTreeSet<PeerId>) {
        if peers.is_empty() {
            if self.pending_deletes.remove(&file).is_none() {
                return;
            }
        } else {
            self.pending_deletes.insert(file, peers);
        }
        self.mark(Item::PendingDelete(file));
    }

    /// Notes that `file` was deleted on `home`'s word (see [`Tombstone`]); the oldest of more
    /// than [`TOMBSTONES_KEPT`] is forgotten.
    pub fn add_tombstone(&mut self, file: FileId, home: PeerId, owner: Option<Ownership>) {
        if self
            .tombstones
            .get(&file)
            .is_some_and(|t| t.home == home && t.owner == owner)
        {
            return;
        }
        let seq = self
            .tombstones
            .values()
            .map(|t| t.seq + 1)
            .max()
            .unwrap_or(0);
        self.tombstones.insert(file, Tombstone { home, seq, owner });
        self.mark(Item::Tombstone(file));
        // (A deletion still pending keeps its tombstone: it holds what proves it.)
        if self.tombstones.len() > TOMBSTONES_KEPT
            && let Some(oldest) = self
                .tombstones
                .iter()
                .filter(|(f, _)| !self.pending_deletes.contains_key(f))
                .min_by_key(|(_, t)| t.seq)
                .map(|(f, _)| *f)
        {
            self.tombstones.remove(&oldest);
            self.mark(Item::Tombstone(oldest));
        }
    }

    /// Deletions remembered (at most [`TOMBSTONES_KEPT`]).
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// What proves the deletion of a file this home named with its data key and deleted.
    pub fn tombstone_owner(&self, file: &FileId) -> Option<Ownership> {
        self.tombstones.get(file).and_then(|t| t.owner)
    }

    /// The file backed up here from `path` whose plain id is `base` (named with a data key),
    /// and what its name is made from.
    pub fn own_by_base(
        &self,
        path: &std::path::Path,
        base: &FileId,
    ) -> Option<(FileId, Ownership)> {
        self.by_path.get(path)?.iter().find_map(|id| {
            let owner = self.backed_up.get(id)?.attrs.owner?;
            (owner.base == *base).then_some((*id, owner))
        })
    }

    /// Whether a catalog tag is recorded for `file`.
    pub fn has_catalog_tag(&self, file: &FileId) -> bool {
        self.catalog_tags.contains_key(file)
    }

    /// The peer on whose word `file` was deleted recently, if it was.
    pub fn tombstone(&self, file: &FileId) -> Option<PeerId> {
        self.tombstones.get(file).map(|t| t.home)
    }

    /// Forgets that `file` was deleted (its home backs it up again).
    pub fn remove_tombstone(&mut self, file: &FileId) {
        if self.tombstones.remove(file).is_some() {
            self.mark(Item::Tombstone(*file));
        }
    }

    /// The files deleted recently on `home`'s word.
    pub fn deleted_by(&self, home: PeerId) -> Vec<FileId> {
        self.tombstones
            .iter()
            .filter(|(_, t)| t.home == home)
            .map(|(f, _)| *f)
            .collect()
    }

    /// Notes that `peer` speaks the enhanced protocol; true if it was not known.
    pub fn add_enhanced_peer(&mut self, peer: PeerId) -> bool {
        let new = self.enhanced_peers.insert(peer);
        if new {
            self.mark(Item::EnhancedPeer(peer));
        }
        new
    }

    /// Takes what changed since the last call: the journal records of the changed items, or
    /// with `snapshot`, the whole metadata as JSON.
    pub fn drain_changes(&mut self, snapshot: bool) -> Changes {
        let changed = std::mem::take(&mut self.changed);
        let changes = if snapshot {
            self.epoch += 1;
            Changes::Snapshot {
                bytes: serde_json::to_vec(self).expect("metadata serialises"),
                epoch: self.epoch,
            }
        } else {
            Changes::Records(changed.into_iter().map(|item| self.record(item)).collect())
        };
        self.fresh_files.clear();
        changes
    }

    /// The epoch of the last snapshot this metadata was loaded from or written to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether anything changed since the last [`Metadata::drain_changes`].
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    fn record(&self, item: Item) -> Record {
        match item {
            Item::Capacity => Record::Capacity {
                bytes: self.capacity,
            },
            Item::OwnFile(file) => Record::OwnFile {
                file,
                header: self.backed_up.get(&file).map(|f| FileHeader {
                    path: f.path.clone(),
                    size: f.size,
                    desired: f.desired,
                    attrs: f.attrs.clone(),
                }),
                fresh: self.fresh_files.contains(&file),
            },
            Item::OwnChunk(key) => Record::OwnChunk {
                file: key.file,
                no: key.no,
                record: self.own_chunk(&key).cloned().unwrap_or_default(),
            },
            Item::StoredFile(file) => Record::StoredFile {
                file,
                chunks: self.stored.get(&file).cloned().unwrap_or_default(),
            },
            Item::Stored(key) => Record::Stored {
                file: key.file,
                no: key.no,
                chunk: self.stored_chunk(&key).cloned(),
            },
            Item::PendingDelete(file) => Record::PendingDelete {
                file,
                peers: self.pending_deletes.get(&file).cloned(),
            },
            Item::EnhancedPeer(peer) => Record::EnhancedPeer { peer },
            Item::Tombstone(file) => Record::Tombstone {
                file,
                tombstone: self.tombstones.get(&file).copied(),
            },
            Item::CatalogTag(file) => Record::CatalogTag {
                file,
                tag: self.catalog_tags.get(&file).copied(),
            },
        }
    }

    /// Applies a journal record (when loading); changes nothing to save.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Capacity { bytes } => self.capacity = bytes,
            Record::OwnFile {
                file, header: None, ..
            } => {
                self.take_own(&file);
            }
            Record::OwnFile {
                file,
                header: Some(h),
                fresh,
            } => {
                if fresh {
                    self.take_own(&file); // registered anew: no chunk record carries over
                }
                let known = self
                    .backed_up
                    .get(&file)
                    .filter(|f| f.path == h.path)
                    .is_some();
                if !known {
                    // New, or (never, in practice) under another path: the index follows.
                    let chunks = match self.take_own(&file) {
                        Some(f) => f.chunks,
                        None => vec![
                            ChunkRecord::default();
                            chunk_count(h.size, h.attrs.payload()) as usize
                        ],
                    };
                    let f = BackedUpFile {
                        path: h.path.clone(),
                        size: h.size,
                        desired: h.desired,
                        chunks,
                        attrs: FileAttrs::default(),
                    };
                    self.put_own(file, f);
                }
                let entry = self.backed_up.get_mut(&file).expect("just put");
                entry.desired = h.desired;
                if h.attrs.link.is_some() {
                    entry.chunks.clear();
                }
                entry.attrs = h.attrs;
            }
            Record::OwnChunk { file, no, record } => {
                if let Some(c) = self
                    .backed_up
                    .get_mut(&file)
                    .and_then(|f| f.chunks.get_mut(no as usize))
                {
                    *c = record;
                }
            }
            Record::StoredFile { file, chunks } => {
                self.replace_stored_file(file, chunks);
            }
            Record::Stored { file, no, chunk } => {
                self.put_stored(ChunkKey { file, no }, chunk);
            }
            Record::PendingDelete { file, peers } => match peers {
                Some(p) => {
                    self.pending_deletes.insert(file, p);
                }
                None => {
                    self.pending_deletes.remove(&file);
                }
            },
            Record::EnhancedPeer { peer } => {
                self.enhanced_peers.insert(peer);
            }
            Record::Tombstone { file, tombstone } => match tombstone {
                Some(t) => {
                    self.tombstones.insert(file, t);
                }
                None => {
                    self.tombstones.remove(&file);
                }
            },
            Record::CatalogTag { file, tag } => match tag {
                Some(t) => {
                    self.catalog_tags.insert(file, t);
                }
                None => {
                    self.catalog_tags.remove(&file);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: usize = crate::protocol::MAX_CHUNK_SIZE;

    #[test]
    fn chunk_counts_follow_the_spec() {
        assert_eq!(chunk_count(0, PLAIN), 1);
        assert_eq!(chunk_count(1, PLAIN), 1);
        assert_eq!(chunk_count(63_999, PLAIN), 1);
        assert_eq!(chunk_count(64_000, PLAIN), 2);
        assert_eq!(chunk_count(128_000, PLAIN), 3);
    }

    fn key(file: u8, no: ChunkNo) -> ChunkKey {
        ChunkKey {
            file: FileId([file; 32]),
            no,
        }
    }

    fn stored(size: u32) -> StoredChunk {
        StoredChunk {
            size,
            desired: 2,
            holders: [1, 4].into(),
            hash: Some(ChunkHash::of(b"x")),
            home: Some(1),
            sender: Some(1),
        }
    }

    /// Replays `records` (as a load would, through JSON lines) onto `base`.
    fn replay(base: &Metadata, records: Vec<Record>) -> Metadata {
        let mut m = Metadata::from_json(&serde_json::to_vec(base).unwrap()).unwrap();
        for r in records {
            let line = serde_json::to_string(&r).unwrap();
            m.apply(serde_json::from_str(&line).unwrap());
        }
        m
    }

    /// The space counts recomputed from the records.
    fn recount(m: &Metadata) -> (u64, u64) {
        let sizes = m.stored.values().flat_map(|c| c.values()).map(|c| c.size);
        (
            sizes.clone().map(u64::from).sum(),
            sizes.map(footprint).sum(),
        )
    }

    /// The footprints by owner recomputed from the records.
    fn recount_owners(m: &Metadata) -> BTreeMap<PeerId, u64> {
        let mut owners = BTreeMap::new();
        for c in m.stored.values().flat_map(|c| c.values()) {
            if let Some(o) = c.owner() {
                *owners.entry(o).or_default() += footprint(c.size);
            }
        }
        owners
    }

    fn same(a: &Metadata, b: &Metadata) {
        assert_eq!((a.used(), a.footprint()), recount(a), "kept counts");
        assert_eq!((b.used(), b.footprint()), recount(b), "kept counts");
        assert_eq!(
            a.owner_footprints(),
            &recount_owners(a),
            "kept owner counts"
        );
        assert_eq!(
            b.owner_footprints(),
            &recount_owners(b),
            "kept owner counts"
        );
        assert_eq!(a.capacity, b.capacity);
        assert_eq!(a.stored, b.stored);
        assert_eq!(a.backed_up, b.backed_up);
        assert_eq!(a.pending_deletes, b.pending_deletes);
        assert_eq!(a.enhanced_peers, b.enhanced_peers);
        assert_eq!(a.tombstones, b.tombstones);
        // The path index follows the entries, whichever way they were built.
        for m in [a, b] {
            let mut index: BTreeMap<PathBuf, BTreeSet<FileId>> = BTreeMap::new();
            for (id, f) in &m.backed_up {
                index.entry(f.path.clone()).or_default().insert(*id);
            }
            assert_eq!(m.by_path, index);
        }
    }

    #[test]
    fn tombstones_are_bounded_oldest_first() {
        let mut m = Metadata::default();
        let file = |n: u32| {
            let mut id = [7u8; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            FileId(id)
        };
        for n in 0..=TOMBSTONES_KEPT as u32 {
            m.add_tombstone(file(n), 1, None);
        }
        assert_eq!(m.tombstones.len(), TOMBSTONES_KEPT);
        assert_eq!(m.tombstone(&file(0)), None, "the oldest went");
        assert_eq!(m.tombstone(&file(TOMBSTONES_KEPT as u32)), Some(1));
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let mut m = Metadata::default();
        m.insert_stored(key(7, 3), stored(10));
        m.register_file(FileId([9; 32]), "/x".into(), 5, 1, PLAIN);
        m.add_holder(&key(9, 0), 2);
        let Changes::Snapshot { bytes, .. } = m.drain_changes(true) else {
            panic!()
        };
        let back = Metadata::from_json(&bytes).unwrap();
        same(&back, &m);
        assert_eq!(back.used(), 10);
        assert!(!m.has_changes());
    }

    #[test]
    fn journal_records_replay_to_the_same_metadata() {
        let mut m = Metadata::default();
        m.insert_stored(key(1, 0), stored(5));
        m.insert_stored(key(1, 1), stored(6));
        let base = m.clone();
        m.drain_changes(false);
        // A batch of changes, some undoing others, in an order the record order differs from.
        m.set_capacity(123);
        m.remove_stored_file(&FileId([1; 32]));
        m.insert_stored(key(1, 4), stored(7)); // after the file's removal
        // A 1.0 PUTCHUNK's copy counts against its sender.
        m.insert_stored(
            key(5, 0),
            StoredChunk {
                home: None,
                sender: Some(3),
                ..stored(8)
            },
        );
        assert_eq!((m.owner_footprint(3), m.owner_footprint(1)), (8, 7));
        m.remove_holder(&key(1, 4), 4);
        m.register_file(FileId([2; 32]), "/a".into(), 64_001, 3, PLAIN);
        m.record_own_hash(&key(2, 1), ChunkHash::of(b"h"), "ab".into());
        m.add_holder(&key(2, 1), 5);
        m.register_file(FileId([3; 32]), "/b".into(), 1, 1, PLAIN);
        m.forget_file(&FileId([3; 32]));
        m.set_pending_delete(FileId([3; 32]), [5, 6].into());
        m.set_pending_delete(FileId([3; 32]), [6].into());
        m.add_enhanced_peer(5);
        m.add_tombstone(FileId([3; 32]), 9, None);
        m.add_tombstone(FileId([4; 32]), 9, None);
        m.remove_tombstone(&FileId([4; 32]));
        let Changes::Records(records) = m.drain_changes(false) else {
            panic!()
        };
        let back = replay(&base, records);
        same(&back, &m);
        // A second batch on top of the first.
        let base = back;
        m.set_pending_delete(FileId([3; 32]), BTreeSet::new());
        m.remove_stored(&key(1, 4));
        m.remove_stored(&key(5, 0));
        m.forget_file(&FileId([2; 32]));
        let Changes::Records(records) = m.drain_changes(false) else {
            panic!()
        };
        same(&replay(&base, records), &m);
        assert!(m.stored.is_empty() && m.backed_up.is_empty() && m.pending_deletes.is_empty());
    }

    #[test]
    fn a_known_file_keeps_its_chunk_records_when_registered_again() {
        let mut m = Metadata::default();
        let file = FileId([2; 32]);
        m.register_file(file, "/a".into(), 10, 1, PLAIN);
        m.add_holder(&key(2, 0), 7);
        assert_eq!(
            m.register_file(file, "/a".into(), 10, 3, PLAIN).chunks[0].holders,
            [7].into()
        );
        assert_eq!(m.backed_up[&file].desired, 3);
    }
}
