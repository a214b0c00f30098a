//! The peer's directory tree: chunk files written atomically, the metadata file, and start-up
//! reconciliation of the two (src/storage/).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use dbs::core::Metadata;
use dbs::core::metadata::StoredChunk;
use dbs::protocol::{ChunkKey, FileId, MAX_CHUNK_SIZE, PeerId};
use dbs::storage::meta_file::MetaFile;
use dbs::storage::reconcile::{Reconciled, reconcile};
use dbs::storage::{ChunkFiles, StorageError};

const ME: PeerId = 7;

fn fid(b: u8) -> FileId {
    let mut id = [b; 32];
    id[0] = 0xab; // hex digits a-f present, so case matters in directory names
    FileId(id)
}

fn key(b: u8, no: u32) -> ChunkKey {
    ChunkKey { file: fid(b), no }
}

fn tree() -> (tempfile::TempDir, ChunkFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = ChunkFiles::open(dir.path()).unwrap();
    (dir, files)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn chunk_path(root: &Path, k: &ChunkKey) -> PathBuf {
    root.join("chunks")
        .join(k.file.to_hex())
        .join(k.no.to_string())
}

/// Puts a file at `chunks/<dir>/<name>` behind the store's back (as a crash or a user would).
fn plant(root: &Path, dir: &str, name: &str, len: usize) -> PathBuf {
    let d = root.join("chunks").join(dir);
    fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    fs::write(&p, vec![b'x'; len]).unwrap();
    p
}

fn stored(size: u32, desired: u8, holders: &[PeerId]) -> StoredChunk {
    StoredChunk {
        size,
        desired,
        holders: holders.iter().copied().collect(),
        hash: None,
        home: None,
        sender: None,
    }
}

fn set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
    v.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// (a) Chunk files
// ---------------------------------------------------------------------------------------------

#[test]
fn open_creates_the_layout() {
    let (dir, files) = tree();
    for sub in ["chunks", "tmp", "restored"] {
        assert!(dir.path().join(sub).is_dir(), "{sub}");
    }
    assert_eq!(files.root(), dir.path());
    assert_eq!(files.tmp_dir(), dir.path().join("tmp"));
    // Opening an existing tree again is fine and keeps what is there.
    files.write(&key(1, 0), b"kept").unwrap();
    let again = ChunkFiles::open(dir.path()).unwrap();
    assert_eq!(again.read(&key(1, 0)).unwrap(), b"kept");
}

#[test]
fn write_then_read_gives_the_bytes_back_at_the_documented_path() {
    let (dir, files) = tree();
    let big: Vec<u8> = (0..MAX_CHUNK_SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let cases: Vec<(ChunkKey, Vec<u8>)> = vec![
        (key(1, 0), b"hello".to_vec()),
        (key(1, 999_999), Vec::new()),
        (key(2, 42), big),
        (key(2, 43), b"\x00\r\n\r\n\xff".to_vec()),
    ];
    for (k, body) in &cases {
        files.write(k, body).unwrap();
    }
    for (k, body) in &cases {
        assert_eq!(&files.read(k).unwrap(), body, "{k}");
        let p = chunk_path(dir.path(), k);
        assert_eq!(files.path(k), p);
        assert_eq!(&fs::read(&p).unwrap(), body, "{}", p.display());
    }
    assert_eq!(
        fs::read(
            dir.path()
                .join("chunks")
                .join(format!("ab{}", "01".repeat(31)))
                .join("0")
        )
        .unwrap(),
        b"hello"
    );
    assert!(entries(&dir.path().join("tmp")).is_empty(), "tmp/ is empty");
    let listed: BTreeSet<(ChunkKey, u64)> = files.list().unwrap().into_iter().collect();
    let want: BTreeSet<(ChunkKey, u64)> = cases.iter().map(|(k, b)| (*k, b.len() as u64)).collect();
    assert_eq!(listed, want);
}

#[test]
fn rewriting_a_chunk_replaces_it() {
    let (dir, files) = tree();
    let k = key(3, 5);
    files.write(&k, b"first version, longer").unwrap();
    files.write(&k, b"second").unwrap();
    assert_eq!(files.read(&k).unwrap(), b"second");
    assert!(entries(&dir.path().join("tmp")).is_empty());
}

#[test]
fn remove_deletes_the_chunk_and_absent_is_fine() {
    let (dir, files) = tree();
    let (a, b) = (key(4, 0), key(4, 1));
    files.write(&a, b"a").unwrap();
    files.write(&b, b"b").unwrap();
    files.remove(&a).unwrap();
    assert!(!chunk_path(dir.path(), &a).exists());
    assert!(files.read(&a).is_err());
    assert_eq!(files.read(&b).unwrap(), b"b", "the sibling stays");
    files.remove(&a).unwrap(); // again: absent is fine
    files.remove(&b).unwrap();
    assert!(
        !dir.path().join("chunks").join(fid(4).to_hex()).exists(),
        "the empty file directory goes too"
    );
    files.remove(&key(5, 9)).unwrap(); // never written, no directory
    assert!(files.list().unwrap().is_empty());
}

#[test]
fn read_of_a_missing_chunk_is_an_io_error() {
    let (_dir, files) = tree();
    match files.read(&key(6, 0)) {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Atomicity: leftovers of an interrupted write
// ---------------------------------------------------------------------------------------------

#[test]
fn leftover_temporary_files_are_removed_by_reconcile_and_never_become_chunks() {
    let (dir, files) = tree();
    let done = key(8, 0);
    files.write(&done, b"complete").unwrap();
    // A crash mid-write leaves the temporary file behind, never a partial chunk file.
    let tmp = dir.path().join("tmp");
    fs::write(tmp.join(".tmpA1b2C3"), b"half a chu").unwrap();
    fs::write(tmp.join("0"), b"named like a chunk").unwrap();
    fs::write(tmp.join(fid(8).to_hex()), b"named like a file id").unwrap();
    let mut meta = Metadata::default();
    meta.insert_stored(done, stored(8, 2, &[ME, 3]));
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(out, Reconciled::default());
    assert!(
        entries(&tmp).is_empty(),
        "tmp/ emptied: {:?}",
        entries(&tmp)
    );
    assert_eq!(
        files.list().unwrap(),
        vec![(done, 8)],
        "only the complete chunk"
    );
    assert_eq!(meta.stored().len(), 1);
    assert_eq!(meta.stored_chunk(&done), Some(&stored(8, 2, &[ME, 3])));
}

// ---------------------------------------------------------------------------------------------
// (c) The metadata file
// ---------------------------------------------------------------------------------------------

fn sample_metadata() -> Metadata {
    let mut m = Metadata::default();
    m.set_capacity(123_456);
    m.insert_stored(key(1, 0), stored(10, 2, &[ME, 3]));
    m.insert_stored(key(1, 4), stored(64_000, 9, &[ME]));
    m.insert_stored(key(2, 999_999), stored(0, 1, &[]));
    m.register_file(
        fid(9),
        "/home/u/some file ✓.txt".into(),
        64_000,
        3,
        dbs::protocol::MAX_CHUNK_SIZE,
    );
    let first = ChunkKey {
        file: fid(9),
        no: 0,
    };
    m.record_own_hash(
        &first,
        dbs::protocol::ChunkHash::of(b"chunk"),
        String::new(),
    );
    for peer in [1, 2, 3] {
        m.add_holder(&first, peer);
    }
    m
}

fn assert_same(a: &Metadata, b: &Metadata) {
    assert_eq!(a.capacity(), b.capacity());
    assert_eq!(a.stored(), b.stored());
    assert_eq!(a.backed_up(), b.backed_up());
    assert_eq!(a.pending_deletes(), b.pending_deletes());
}

/// Saves what changed in `meta` (a snapshot if `snapshot`), as the runtime does.
fn save(mf: &MetaFile, meta: &mut Metadata, snapshot: bool) {
    mf.save(snapshot, |compact| {
        (compact || meta.has_changes()).then(|| (meta.generation(), meta.drain_changes(compact)))
    })
    .unwrap();
}

#[test]
fn missing_metadata_file_loads_as_default() {
    let (dir, files) = tree();
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let m = mf.load().unwrap();
    assert_same(&m, &Metadata::default());
    assert_eq!(m.generation(), 0);
}

#[test]
fn metadata_snapshot_and_journal_round_trip() {
    let (dir, files) = tree();
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = sample_metadata();
    save(&mf, &mut meta, true);
    assert!(dir.path().join("metadata.json").is_file());
    assert!(
        entries(files.tmp_dir()).is_empty(),
        "no temporary file left"
    );
    // Later changes go to the journal; a new instance (a restart) sees all of them.
    meta.remove_stored(&key(1, 4));
    meta.add_holder(&key(1, 0), 8);
    meta.set_pending_delete(fid(5), [2, 3].into());
    save(&mf, &mut meta, false);
    meta.set_capacity(7);
    save(&mf, &mut meta, false);
    let journal = fs::read_to_string(dir.path().join("metadata.journal")).unwrap();
    assert_eq!(
        journal.lines().count(),
        1 + 4,
        "the epoch, then one line per changed item: {journal}"
    );
    let back = MetaFile::new(dir.path(), files.tmp_dir()).load().unwrap();
    assert_same(&back, &meta);
    assert_eq!(back.used(), 10);
    for name in ["metadata.json", "metadata.journal"] {
        let mode = fs::metadata(dir.path().join(name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is private");
    }
}

#[test]
fn a_save_with_nothing_changed_writes_nothing() {
    let (dir, files) = tree();
    let snapshot = dir.path().join("metadata.json");
    let journal = dir.path().join("metadata.journal");
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = sample_metadata();
    save(&mf, &mut meta, true);
    let inode = fs::metadata(&snapshot).unwrap().ino();
    meta.insert_stored(key(3, 1), stored(5, 1, &[ME]));
    save(&mf, &mut meta, false);
    let journal_len = fs::metadata(&journal).unwrap().len();
    save(&mf, &mut meta, false);
    assert_eq!(
        fs::metadata(&journal).unwrap().len(),
        journal_len,
        "nothing appended"
    );
    assert_eq!(
        fs::metadata(&snapshot).unwrap().ino(),
        inode,
        "snapshot not replaced"
    );
    assert_eq!(mf.saved(), meta.generation());
    assert_same(&mf.load().unwrap(), &meta);
}

#[test]
fn a_torn_last_journal_line_is_dropped_and_the_rest_kept() {
    let (dir, files) = tree();
    let journal = dir.path().join("metadata.journal");
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = sample_metadata();
    save(&mf, &mut meta, true);
    meta.set_capacity(99);
    save(&mf, &mut meta, false);
    // A crash in the middle of the next append.
    let mut bytes = fs::read(&journal).unwrap();
    let good_len = bytes.len() as u64;
    bytes.extend_from_slice(b"{\"capacity\":{\"by");
    fs::write(&journal, &bytes).unwrap();
    let back = MetaFile::new(dir.path(), files.tmp_dir()).load().unwrap();
    assert_same(&back, &meta);
    assert_eq!(
        fs::metadata(&journal).unwrap().len(),
        good_len,
        "torn tail cut off"
    );
    // Garbage before the last line is corruption, not a torn write.
    fs::write(&journal, b"garbage\n{\"capacity\":{\"bytes\":1}}\n").unwrap();
    assert!(matches!(
        MetaFile::new(dir.path(), files.tmp_dir()).load(),
        Err(StorageError::CorruptMetadata { .. })
    ));
}

#[test]
fn a_journal_older_than_the_snapshot_is_not_replayed() {
    let (dir, files) = tree();
    let journal = dir.path().join("metadata.journal");
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = sample_metadata();
    save(&mf, &mut meta, true);
    meta.set_capacity(99);
    save(&mf, &mut meta, false);
    let old = fs::read(&journal).unwrap();
    meta.set_capacity(7);
    save(&mf, &mut meta, true);
    // A crash right after the new snapshot, before the journal was started over.
    fs::write(&journal, &old).unwrap();
    let back = MetaFile::new(dir.path(), files.tmp_dir()).load().unwrap();
    assert_eq!(
        back.capacity(),
        7,
        "the older journal's capacity must not come back"
    );
    assert_same(&back, &meta);
}

#[test]
fn a_file_forgotten_and_backed_up_again_starts_with_no_confirmations() {
    let (dir, files) = tree();
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = Metadata::default();
    save(&mf, &mut meta, true);
    let first = ChunkKey {
        file: fid(9),
        no: 0,
    };
    meta.register_file(fid(9), "/f".into(), 10, 2, dbs::protocol::MAX_CHUNK_SIZE);
    meta.add_holder(&first, 4);
    save(&mf, &mut meta, false);
    // Deleted and backed up again between two saves.
    meta.forget_file(&fid(9));
    meta.register_file(fid(9), "/f".into(), 10, 2, dbs::protocol::MAX_CHUNK_SIZE);
    save(&mf, &mut meta, false);
    let back = MetaFile::new(dir.path(), files.tmp_dir()).load().unwrap();
    assert!(back.own_chunk(&first).unwrap().holders.is_empty());
    assert_same(&back, &meta);
}

#[test]
fn a_large_journal_is_folded_into_a_new_snapshot() {
    let (dir, files) = tree();
    let journal = dir.path().join("metadata.journal");
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = Metadata::default();
    save(&mf, &mut meta, true);
    // Enough changes to pass the 1 MB journal threshold, saved in small batches.
    for round in 0..40u32 {
        for no in 0..200u32 {
            meta.insert_stored(key(4, round * 200 + no), stored(no, 2, &[ME, 1, 2, 3]));
        }
        save(&mf, &mut meta, false);
    }
    assert!(
        fs::metadata(&journal).unwrap().len() < 1 << 20,
        "the journal was folded into the snapshot"
    );
    assert_same(
        &MetaFile::new(dir.path(), files.tmp_dir()).load().unwrap(),
        &meta,
    );
}

#[test]
fn corrupt_metadata_file_is_reported() {
    let (dir, files) = tree();
    let path = dir.path().join("metadata.json");
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let good = serde_json::to_vec(&sample_metadata()).unwrap();
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        Vec::new(),
        good[..good.len() / 2].to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"{\"capacity\": -1, \"stored\": {}, \"backed_up\": {}}".to_vec(),
        b"{\"capacity\": 1, \"stored\": {\"../..\": {}}, \"backed_up\": {}}".to_vec(),
    ];
    for bytes in bad {
        fs::write(&path, &bytes).unwrap();
        match mf.load() {
            Err(StorageError::CorruptMetadata { path: p, .. }) => assert_eq!(p, path),
            other => panic!(
                "{:?}: expected CorruptMetadata, got {other:?}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }
    // And the good document loads.
    fs::write(&path, &good).unwrap();
    assert_same(&mf.load().unwrap(), &sample_metadata());
}

// ---------------------------------------------------------------------------------------------
// (d) Reconciliation
// ---------------------------------------------------------------------------------------------

#[test]
fn reconcile_of_an_agreeing_tree_changes_nothing() {
    let (_dir, files) = tree();
    let mut meta = sample_metadata();
    meta.forget_file(&fid(9));
    for (file, chunks) in meta.stored().clone() {
        for (no, c) in chunks {
            files
                .write(&ChunkKey { file, no }, &vec![1; c.size as usize])
                .unwrap();
        }
    }
    let before = meta.clone();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(out, Reconciled::default());
    assert_same(&meta, &before);
    assert_eq!(meta.generation(), before.generation(), "nothing to save");
}

#[test]
fn metadata_entry_without_its_file_is_dropped() {
    let (dir, files) = tree();
    let (kept, lost, lost2) = (key(1, 0), key(1, 1), key(2, 0));
    let mut meta = Metadata::default();
    for k in [kept, lost, lost2] {
        files.write(&k, b"abc").unwrap();
        meta.insert_stored(k, stored(3, 2, &[ME, 1]));
    }
    fs::remove_file(chunk_path(dir.path(), &lost)).unwrap();
    fs::remove_dir_all(dir.path().join("chunks").join(fid(2).to_hex())).unwrap();
    let generation = meta.generation();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(set(&out.dropped), set(&[lost, lost2]));
    assert!(out.adopted.is_empty() && out.removed.is_empty(), "{out:?}");
    assert_eq!(meta.stored_chunk(&lost), None);
    assert_eq!(meta.stored_chunk(&lost2), None);
    assert!(
        !meta.stored().contains_key(&fid(2)),
        "no empty file entry left"
    );
    assert_eq!(meta.stored_chunk(&kept), Some(&stored(3, 2, &[ME, 1])));
    assert!(meta.generation() > generation, "the change gets saved");
}

#[test]
fn chunk_files_without_metadata_are_adopted() {
    let (dir, files) = tree();
    let chunks = [
        (key(1, 0), 100usize),
        (key(1, 7), 0),
        (key(2, 999_999), MAX_CHUNK_SIZE),
    ];
    for (k, len) in chunks {
        files.write(&k, &vec![9; len]).unwrap();
    }
    // The metadata file was lost (deleted): the peer starts from the default.
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = mf.load().unwrap();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(set(&out.adopted), set(&chunks.map(|(k, _)| k)));
    assert!(out.dropped.is_empty() && out.removed.is_empty(), "{out:?}");
    for (k, len) in chunks {
        assert_eq!(
            meta.stored_chunk(&k),
            Some(&StoredChunk {
                hash: Some(dbs::protocol::ChunkHash::of(&vec![9; len])),
                ..stored(len as u32, 1, &[ME])
            }),
            "{k}"
        );
        assert!(files.path(&k).is_file(), "adopted chunk kept on disk");
    }
    assert_eq!(meta.used(), 100 + MAX_CHUNK_SIZE as u64);
    // The adoption is a change to save, and what is saved comes back.
    save(&mf, &mut meta, false);
    assert_same(&mf.load().unwrap(), &meta);
    // Reconciling again finds nothing more to do.
    let generation = meta.generation();
    assert_eq!(
        reconcile(&mut meta, &files, ME).unwrap(),
        Reconciled::default()
    );
    assert_eq!(meta.generation(), generation);
}

#[test]
fn size_mismatch_is_corrected_from_the_file() {
    let (_dir, files) = tree();
    let (k, other) = (key(1, 3), key(1, 4));
    files.write(&k, &[5; 20]).unwrap();
    files.write(&other, &[5; 4]).unwrap();
    let mut meta = Metadata::default();
    meta.insert_stored(k, stored(10, 3, &[ME, 1, 2]));
    meta.insert_stored(other, stored(4, 3, &[ME]));
    let generation = meta.generation();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(
        out,
        Reconciled::default(),
        "a correction is not a drop/adopt"
    );
    assert_eq!(
        meta.stored_chunk(&k),
        Some(&stored(20, 3, &[ME, 1, 2])),
        "size fixed, degree and holders kept"
    );
    assert_eq!(meta.stored_chunk(&other), Some(&stored(4, 3, &[ME])));
    assert!(meta.generation() > generation, "the correction gets saved");
}

#[test]
fn oversized_chunk_files_are_removed() {
    let (dir, files) = tree();
    let (over, at_limit) = (key(1, 0), key(1, 1));
    let p = plant(dir.path(), &fid(1).to_hex(), "0", MAX_CHUNK_SIZE + 1);
    files.write(&at_limit, &vec![0; MAX_CHUNK_SIZE]).unwrap();
    let mut meta = Metadata::default();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(out.removed, vec![over]);
    assert_eq!(out.adopted, vec![at_limit], "64,000 bytes is a valid chunk");
    assert!(!p.exists(), "oversized file deleted");
    assert_eq!(meta.stored_chunk(&over), None);
    assert_eq!(
        files.list().unwrap(),
        vec![(at_limit, MAX_CHUNK_SIZE as u64)]
    );
}

#[test]
fn oversized_chunk_file_with_a_metadata_entry_loses_the_entry_too() {
    let (dir, files) = tree();
    let k = key(1, 0);
    let p = plant(dir.path(), &fid(1).to_hex(), "0", MAX_CHUNK_SIZE + 1);
    let mut meta = Metadata::default();
    meta.insert_stored(k, stored(1_000, 2, &[ME, 3]));
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert!(!p.exists(), "oversized file deleted");
    assert_eq!(out.removed, vec![k]);
    assert_eq!(
        meta.stored_chunk(&k),
        None,
        "metadata must not claim a chunk whose file was just removed"
    );
}

#[test]
fn chunk_files_of_our_own_files_are_removed() {
    let (dir, files) = tree();
    let own = fid(9);
    let mut meta = Metadata::default();
    meta.register_file(
        own,
        "/home/u/file.bin".into(),
        10,
        2,
        dbs::protocol::MAX_CHUNK_SIZE,
    );
    let (a, b, foreign) = (
        ChunkKey { file: own, no: 0 },
        ChunkKey { file: own, no: 2 },
        key(1, 0),
    );
    for k in [a, b, foreign] {
        files.write(&k, b"data").unwrap();
    }
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(set(&out.removed), set(&[a, b]));
    assert_eq!(out.adopted, vec![foreign]);
    assert!(!files.path(&a).exists() && !files.path(&b).exists());
    assert!(!dir.path().join("chunks").join(own.to_hex()).exists());
    assert_eq!(meta.stored_chunk(&a), None);
    assert_eq!(meta.stored_chunk(&b), None);
    assert!(
        meta.backed_up().contains_key(&own),
        "the backup record stays"
    );
    assert_eq!(files.list().unwrap(), vec![(foreign, 4)]);
}

#[test]
fn badly_named_entries_in_chunks_are_ignored() {
    let (dir, files) = tree();
    let hex = fid(1).to_hex();
    let good = key(1, 3);
    files.write(&good, b"good").unwrap();
    let root = dir.path();
    let junk = [
        plant(root, "not-a-file-id", "0", 5),
        plant(root, "../chunks", "stray", 5), // chunks/stray (a plain file)
        plant(root, &hex[..63], "0", 5),
        plant(root, &format!("{hex}0"), "0", 5),
        plant(root, &format!("{}g", &hex[..63]), "0", 5),
        plant(root, &hex, "abc", 5),
        plant(root, &hex, "-1", 5),
        plant(root, &hex, "+1", 5),
        plant(root, &hex, "1.tmp", 5),
        plant(root, &hex, ".0", 5),
        plant(root, &hex, "1234567", MAX_CHUNK_SIZE + 10), // oversized but not a chunk
    ];
    // A directory with a chunk-like name is not a chunk either.
    fs::create_dir_all(root.join("chunks").join(&hex).join("5").join("x")).unwrap();
    let mut meta = Metadata::default();
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(out.adopted, vec![good], "{out:?}");
    assert!(out.dropped.is_empty() && out.removed.is_empty(), "{out:?}");
    assert_eq!(meta.stored().len(), 1);
    assert_eq!(meta.stored()[&fid(1)].len(), 1);
    for p in &junk {
        assert!(p.exists(), "left alone: {}", p.display());
    }
    assert_eq!(files.list().unwrap(), vec![(good, 4)]);
}

#[test]
fn non_canonical_chunk_names_are_not_adopted() {
    let (dir, files) = tree();
    let hex = fid(1).to_hex();
    let root = dir.path();
    let good = key(1, 7);
    files.write(&good, b"good").unwrap();
    let junk = [
        plant(root, &hex, "007", MAX_CHUNK_SIZE + 1),
        plant(root, &hex, "00", 5),
        plant(root, &hex.to_uppercase(), "1", 5),
    ];
    let mut meta = Metadata::default();
    meta.insert_stored(good, stored(4, 2, &[ME, 1]));
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(
        files.read(&good).ok().as_deref(),
        Some(&b"good"[..]),
        "the valid chunk survives ({out:?})"
    );
    // Whatever reconcile adopts must be readable through the store.
    for k in &out.adopted {
        assert!(
            files.read(k).is_ok(),
            "adopted {k} but {} does not exist",
            files.path(k).display()
        );
    }
    for (k, _) in files.list().unwrap() {
        assert!(files.path(&k).is_file(), "listed {k} without its file");
    }
    assert_eq!(
        out,
        Reconciled::default(),
        "non-canonical names are ignored"
    );
    assert_eq!(meta.stored_chunk(&good), Some(&stored(4, 2, &[ME, 1])));
    assert_eq!(meta.stored()[&fid(1)].len(), 1);
    for p in &junk {
        assert!(p.exists(), "left alone: {}", p.display());
    }
}

#[test]
fn chunk_files_without_metadata_that_do_not_fit_the_capacity_are_removed() {
    let (dir, files) = tree();
    for no in 0..3 {
        files.write(&key(1, no), &vec![9; 1_000]).unwrap();
    }
    let mf = MetaFile::new(dir.path(), files.tmp_dir());
    let mut meta = mf.load().unwrap();
    meta.set_capacity(2_500);
    let out = reconcile(&mut meta, &files, ME).unwrap();
    assert_eq!(out.adopted.len(), 2, "{out:?}");
    assert_eq!(out.removed.len(), 1, "{out:?}");
    assert!(meta.footprint() <= meta.capacity());
    assert!(
        !files.path(&out.removed[0]).exists(),
        "the file that did not fit is gone"
    );
}
