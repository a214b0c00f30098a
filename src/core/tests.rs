//! Deterministic tests of the protocol core: messages and timer events in, actions out.

use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

use super::backup::BackupRequest;
use super::*;
use crate::protocol::{ChunkHash, ChunkKey, FileId, Message, MessageKind, Version};

fn core(id: PeerId) -> Core {
    let mut cfg = Config::new(id, Version::V1_0);
    cfg.seed = 7;
    cfg.window = 2;
    cfg.restore_window = 2;
    Core::new(cfg, Metadata::default())
}

fn key(no: u32) -> ChunkKey {
    ChunkKey {
        file: FileId([0xab; 32]),
        no,
    }
}

fn msg(sender: PeerId, kind: MessageKind) -> Message {
    Message::new(Version::V1_0, sender, kind)
}

fn putchunk(no: u32, body: &[u8]) -> MessageKind {
    MessageKind::Putchunk {
        chunk: key(no),
        degree: 2,
        body: Bytes::copy_from_slice(body),
    }
}

fn request(size: u64, degree: u8) -> BackupRequest {
    BackupRequest {
        path: PathBuf::from("/src/file"),
        file: key(0).file,
        size,
        degree,
        enhanced: false,
        attrs: Default::default(),
        keep: 1,
    }
}

fn sent_putchunks(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPutchunk { chunk, .. } => Some(chunk.no),
            _ => None,
        })
        .collect()
}

/// The timers `actions` start (a PUTCHUNK starts its wait when it is sent), but the budgets'
/// period (the tests of budgets fire it themselves).
fn timers(actions: &[Action]) -> Vec<(Duration, TimerEvent)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Schedule {
                event: TimerEvent::BudgetPeriod,
                ..
            } => None,
            Action::Schedule { delay, event } => Some((*delay, event.clone())),
            Action::SendPutchunk {
                chunk, send, wait, ..
            } => Some((
                *wait,
                TimerEvent::PutchunkWait {
                    chunk: *chunk,
                    send: *send,
                },
            )),
            _ => None,
        })
        .collect()
}

fn done(actions: &[Action]) -> Option<Vec<u32>> {
    actions.iter().find_map(|a| match a {
        Action::Report {
            event: OpEvent::BackupDone { short, .. },
            ..
        } => Some(short.clone()),
        _ => None,
    })
}

#[test]
fn putchunk_is_written_then_stored_is_answered_after_a_random_delay() {
    let c = core(2);
    let actions = c.on_message(msg(1, putchunk(0, b"abc")));
    assert_eq!(
        actions[0],
        Action::WriteChunk {
            chunk: key(0),
            desired: 2,
            body: Bytes::from_static(b"abc")
        }
    );
    let [(delay, event)] = timers(&actions).try_into().unwrap();
    assert!(delay <= Duration::from_millis(400));
    assert_eq!(
        event,
        TimerEvent::SendStored {
            chunk: key(0),
            version: Version::V1_0
        }
    );
    // While the write is under way a repeated PUTCHUNK does nothing.
    assert!(c.on_message(msg(1, putchunk(0, b"abc"))).is_empty());
    // The delay ended before the write was durable: STORED waits for it.
    assert!(c.on_timer(event.clone()).is_empty());
    let sent = c.chunk_written(key(0), 2, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(
        sent[0],
        Action::SyncMetadata,
        "STORED only after the metadata is durable"
    );
    assert_eq!(
        sent[1],
        Action::Send {
            channel: Channel::Mc,
            message: msg(2, MessageKind::Stored { chunk: key(0) })
        }
    );
    // A held chunk is answered again after a new delay, without a second write.
    let again = c.on_message(msg(3, putchunk(0, b"abc")));
    let [(_, event)] = timers(&again).try_into().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(c.on_timer(event).len(), 2);
    assert_eq!(c.state().stored[0].perceived, 1);
    // The usual order: the write is durable before the delay ends.
    let actions = c.on_message(msg(1, putchunk(1, b"abc")));
    assert!(
        c.chunk_written(key(1), 2, 3, Some(ChunkHash::of(b"abc")))
            .is_empty()
    );
    let [(_, event)] = timers(&actions).try_into().unwrap();
    assert!(matches!(
        &c.on_timer(event)[..],
        [Action::SyncMetadata, Action::Send { .. }]
    ));
}

#[test]
fn own_messages_and_own_files_are_ignored() {
    let c = core(1);
    assert!(c.on_message(msg(1, putchunk(0, b"x"))).is_empty());
    c.start_backup(1, request(10, 1)).unwrap();
    // Another peer re-backing up a chunk of our own file: never stored here.
    assert!(c.on_message(msg(5, putchunk(0, b"x"))).is_empty());
}

/// A peer of id `id` on which one home may fill all the capacity.
fn unshared(id: PeerId) -> Core {
    let mut cfg = Config::new(id, Version::V1_0);
    cfg.seed = 7;
    cfg.max_share = 1.0;
    Core::new(cfg, Metadata::default())
}

#[test]
fn capacity_is_never_exceeded() {
    let c = unshared(2);
    c.reclaim(5, false);
    assert!(c.on_message(msg(1, putchunk(0, b"123456"))).is_empty());
    assert_eq!(c.on_message(msg(1, putchunk(1, b"12345"))).len(), 2);
    // The reservation of the write under way counts too.
    assert!(c.on_message(msg(1, putchunk(2, b"1"))).is_empty());
}

#[test]
fn stored_counts_distinct_peers_and_completes_the_chunk() {
    let c = core(1);
    let first = c.start_backup(9, request(100, 2)).unwrap();
    assert_eq!(sent_putchunks(&first), vec![0]);
    let stored = |from| c.on_message(msg(from, MessageKind::Stored { chunk: key(0) }));
    assert!(done(&stored(2)).is_none());
    assert!(
        done(&stored(2)).is_none(),
        "a duplicate STORED must not count twice"
    );
    assert_eq!(done(&stored(3)), Some(vec![]));
    assert_eq!(c.instances(), 0, "finished backups leave no state behind");
    assert_eq!(c.state().backed_up[0].chunks[0].perceived, 2);
}

#[test]
fn putchunk_is_resent_with_doubling_waits_then_reported_short() {
    let c = core(1);
    let first = c.start_backup(1, request(0, 1)).unwrap();
    let mut waits = vec![];
    let mut sends = sent_putchunks(&first).len();
    let mut next = timers(&first);
    let mut last = Vec::new();
    while let Some((delay, event)) = next.pop() {
        waits.push(delay.as_secs());
        last = c.on_timer(event);
        sends += sent_putchunks(&last).len();
        next = timers(&last);
    }
    assert_eq!(waits, vec![1, 2, 4, 8, 16]);
    assert_eq!(sends, 5);
    assert_eq!(done(&last), Some(vec![0]));
}

#[test]
fn a_backup_nobody_answers_gives_up_after_four_silent_chunks() {
    let c = core(1); // window of 2
    let first = c.start_backup(1, request(64_000 * 99, 1)).unwrap();
    let mut next = timers(&first);
    let mut all = first;
    // Nobody answers: each chunk runs out of its 5 sends; new ones start as others give up.
    while let Some((_, event)) = next.pop() {
        let more = c.on_timer(event);
        next.extend(timers(&more));
        all.extend(more);
    }
    let report = all.iter().find_map(|a| match a {
        Action::Report {
            event:
                OpEvent::BackupDone {
                    short,
                    gave_up_after,
                    ..
                },
            ..
        } => Some((short.len(), *gave_up_after)),
        _ => None,
    });
    // Every chunk is short: four ran out of sends, the rest were dropped in flight or never
    // sent (at most a window's worth were sent at all).
    assert_eq!(report, Some((100, Some(4))));
    let sent = sent_putchunks(&all);
    assert!(sent.iter().all(|&no| no < 4 + 2), "{sent:?}");
    assert_eq!(c.instances(), 0);
}

#[test]
fn window_bounds_chunks_in_flight() {
    let c = core(1);
    let first = c.start_backup(1, request(64_000 * 4, 1)).unwrap();
    assert_eq!(sent_putchunks(&first), vec![0, 1], "window of 2");
    let next = c.on_message(msg(2, MessageKind::Stored { chunk: key(1) }));
    assert_eq!(sent_putchunks(&next), vec![2]);
}

/// The late check that the first PUTCHUNK of `no` (launched as number `no + 1`) asked for.
fn late_check(c: &Core, no: u32) -> Vec<Action> {
    c.on_timer(TimerEvent::PutchunkLate {
        chunk: key(no),
        op: 1,
        launch: u64::from(no) + 1,
    })
}

#[test]
fn a_chunk_with_fewer_storeds_than_expected_when_late_shrinks_the_window_a_fifth() {
    let mut cfg = Config::new(1, Version::V1_0);
    cfg.seed = 7;
    let c = Core::new(cfg, Metadata::default());
    let first = c.start_backup(1, request(64_000 * 200, 1)).unwrap();
    assert_eq!(sent_putchunks(&first).len(), 32, "the initial window");
    // Every first send asks for a late check after late_after (700 ms).
    assert!(first.iter().all(|a| !matches!(a,
        Action::SendPutchunk { late, .. }
            if !matches!(late, Some((d, TimerEvent::PutchunkLate { .. })) if *d == Duration::from_millis(700)))));
    let late = || c.counters.putchunk_late.load(Ordering::Relaxed);
    let stored =
        |from: PeerId, no: u32| c.on_message(msg(from, MessageKind::Stored { chunk: key(no) }));
    // Chunk 0 was stored by peers 2 and 3 (degree 1): on time.
    stored(2, 0);
    stored(3, 0);
    assert_eq!(c.flow.lock().window(), 33);
    late_check(&c, 0);
    assert_eq!(late(), 0);
    // Chunk 1 reached its degree, but peer 3, which stores every chunk (1.0), has not
    // answered yet: a storer is behind. The window shrinks by a fifth.
    stored(2, 1);
    late_check(&c, 1);
    assert_eq!(late(), 1);
    assert_eq!(c.flow.lock().window(), 27);
    // Chunk 2, short of its degree too, in the same window: counted, no second cut.
    late_check(&c, 2);
    assert_eq!(late(), 2);
    assert_eq!(c.flow.lock().window(), 27);
    // A resend asks for no late check (its timeout already counts).
    let resend = c.on_timer(TimerEvent::PutchunkWait {
        chunk: key(3),
        send: 1,
    });
    assert!(resend.iter().any(|a| matches!(
        a,
        Action::SendPutchunk {
            send: 2,
            late: None,
            ..
        }
    )));
}

#[test]
fn storers_that_stop_answering_are_expected_no_more_after_a_while() {
    let mut cfg = Config::new(1, Version::V1_0);
    cfg.seed = 7;
    let c = Core::new(cfg, Metadata::default());
    c.start_backup(1, request(64_000 * 100, 1)).unwrap();
    // Peers 2 and 3 stored chunk 0; then peer 3 stops (full, say): chunks 1.. get 1 STORED.
    for from in [2, 3] {
        c.on_message(msg(from, MessageKind::Stored { chunk: key(0) }));
    }
    late_check(&c, 0);
    let mut late_at = Vec::new();
    for no in 1..40 {
        c.on_message(msg(2, MessageKind::Stored { chunk: key(no) }));
        let before = c.counters.putchunk_late.load(Ordering::Relaxed);
        late_check(&c, no);
        if c.counters.putchunk_late.load(Ordering::Relaxed) > before {
            late_at.push(no);
        }
    }
    // Late while chunk 0 is among the latest 32 checks, then no more.
    assert_eq!(late_at, (1..=32).collect::<Vec<_>>());
}

#[test]
fn delete_removes_every_chunk_of_the_file() {
    let c = core(2);
    for no in 0..3 {
        c.on_message(msg(1, putchunk(no, b"x")));
        c.chunk_written(key(no), 2, 1, Some(ChunkHash::of(b"x")));
    }
    // A write still under way when DELETE arrives is removed when it finishes.
    c.on_message(msg(1, putchunk(3, b"x")));
    let actions = c.on_message(msg(1, MessageKind::Delete { file: key(0).file }));
    assert_eq!(actions.len(), 3);
    assert!(c.state().stored.is_empty());
    assert_eq!(
        c.chunk_written(key(3), 2, 1, Some(ChunkHash::of(b"x"))),
        vec![Action::RemoveChunk { chunk: key(3) }]
    );
}

#[test]
fn delete_is_sent_three_times_then_reported() {
    let c = core(1);
    let first = c.start_backup(1, request(5, 1)).unwrap();
    let (_, _) = timers(&first)[0].clone();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let mut actions = c.start_delete(2, "/src/file".as_ref(), false).unwrap();
    let mut deletes = 0;
    loop {
        deletes += actions
            .iter()
            .filter(|a| matches!(a, Action::Send { message, .. } if matches!(message.kind, MessageKind::Delete { .. })))
            .count();
        match timers(&actions).pop() {
            Some((delay, event)) => {
                assert_eq!(delay, Duration::from_millis(500));
                actions = c.on_timer(event);
            }
            None => break,
        }
    }
    assert_eq!(deletes, 3);
    assert!(matches!(
        actions.last(),
        Some(Action::Report {
            event: OpEvent::DeleteDone { .. },
            ..
        })
    ));
    assert!(c.state().backed_up.is_empty());
    assert!(c.start_delete(3, "/src/file".as_ref(), false).is_err());
}

/// Whether `actions` send a DELETE of `file`.
fn deletes(actions: &[Action], file: FileId) -> bool {
    actions.iter().any(|a| {
        matches!(a, Action::Send { message, .. } if message.kind == MessageKind::Delete { file })
    })
}

/// Version `n` (1, 2, ...) of /src/file, of `n + 4` bytes (one chunk), backed up as `op`
/// keeping `keep` versions; returns the start's actions.
fn version_n(c: &Core, n: u8, keep: u8) -> (FileId, Vec<Action>) {
    let mut req = request(u64::from(n) + 4, 1);
    req.file = FileId([n; 32]);
    req.keep = keep;
    (req.file, c.start_backup(u64::from(n), req).unwrap())
}

fn stored_for(file: FileId) -> MessageKind {
    MessageKind::Stored {
        chunk: ChunkKey { file, no: 0 },
    }
}

#[test]
fn a_changed_file_keeps_its_previous_version_until_the_new_one_reaches_its_degree() {
    let c = core(1);
    let (v1, _) = version_n(&c, 1, 1);
    c.on_message(msg(2, stored_for(v1)));
    let (v2, started) = version_n(&c, 2, 1);
    assert!(!deletes(&started, v1), "the only good copy stays meanwhile");
    // Meanwhile a restore takes the previous version: the new one has no holder yet.
    let path = std::path::Path::new("/src/file");
    assert_eq!(c.with_metadata(|m| m.file_for_path(path, None)), Some(v1));
    assert_eq!(
        c.with_metadata(|m| m.file_for_path(path, Some(2))),
        Some(v2)
    );
    let finished = c.on_message(msg(2, stored_for(v2)));
    assert_eq!(done(&finished), Some(vec![]));
    assert!(deletes(&finished, v1), "{finished:?}");
    let versions: Vec<u32> = c.with_metadata(|m| {
        m.versions_of(path)
            .iter()
            .map(|(_, f)| f.attrs.version)
            .collect()
    });
    assert_eq!(versions, vec![2]);
}

#[test]
fn a_new_version_short_of_its_degree_deletes_no_earlier_one() {
    let c = core(1);
    let (v1, _) = version_n(&c, 1, 1);
    c.on_message(msg(2, stored_for(v1)));
    let (_, first) = version_n(&c, 2, 1);
    // Nobody stores version 2: its chunk runs out of sends.
    let mut next = timers(&first);
    let mut all = Vec::new();
    while let Some((_, event)) = next.pop() {
        let more = c.on_timer(event);
        next.extend(timers(&more));
        all.extend(more);
    }
    assert_eq!(done(&all), Some(vec![0]));
    assert!(!deletes(&all, v1));
    let path = std::path::Path::new("/src/file");
    assert_eq!(c.with_metadata(|m| m.file_for_path(path, None)), Some(v1));
    assert_eq!(c.with_metadata(|m| m.versions_of(path).len()), 2);
}

#[test]
fn keep_bounds_the_versions_of_a_path_oldest_first() {
    let c = core(1);
    let mut ids = Vec::new();
    for n in 1..=4 {
        let (v, _) = version_n(&c, n, 2);
        let finished = c.on_message(msg(2, stored_for(v)));
        if n >= 3 {
            assert!(
                deletes(&finished, ids[usize::from(n) - 3]),
                "v{n}: {finished:?}"
            );
        }
        ids.push(v);
    }
    let path = std::path::Path::new("/src/file");
    let kept: Vec<(FileId, u32)> = c.with_metadata(|m| {
        m.versions_of(path)
            .iter()
            .map(|(id, f)| (*id, f.attrs.version))
            .collect()
    });
    assert_eq!(kept, vec![(ids[2], 3), (ids[3], 4)]);
    // Keeping one again drops all but the newest.
    let (v5, _) = version_n(&c, 5, 1);
    let finished = c.on_message(msg(2, stored_for(v5)));
    assert!(deletes(&finished, ids[2]) && deletes(&finished, ids[3]));
}

#[test]
fn a_source_that_changed_during_its_backup_fails_and_only_that_version_goes() {
    let c = core(1);
    let (v1, _) = version_n(&c, 1, 1);
    c.on_message(msg(2, stored_for(v1)));
    let mut req = request(6, 1);
    req.file = FileId([2; 32]);
    req.attrs.mtime_ns = 42;
    c.start_backup(7, req).unwrap();
    let finished = c.on_message(msg(2, stored_for(FileId([2; 32]))));
    assert_eq!(
        done(&finished),
        None,
        "nothing counts before the source is checked"
    );
    assert_eq!(
        finished.last(),
        Some(&Action::CheckSource {
            op: 7,
            path: "/src/file".into(),
            size: 6,
            mtime_ns: 42
        })
    );
    let failed = c.source_checked(7, false);
    assert!(deletes(&failed, FileId([2; 32])));
    assert!(!deletes(&failed, v1));
    assert!(failed.iter().any(|a| matches!(a,
        Action::Report { op: 7, event: OpEvent::Failed(m) } if m.contains("changed while it was read"))));
    let path = std::path::Path::new("/src/file");
    assert_eq!(c.with_metadata(|m| m.versions_of(path).len()), 1);
    assert_eq!(c.instances(), 0);
}

#[test]
fn a_delete_of_many_files_shares_one_repeat_schedule() {
    let c = core(1);
    let paths: Vec<PathBuf> = (1..=3u8)
        .map(|n| {
            let mut req = request(5, 1);
            req.file = FileId([n; 32]);
            req.path = format!("/tree/f{n}").into();
            c.start_backup(u64::from(n), req).unwrap();
            c.on_message(msg(2, stored_for(FileId([n; 32]))));
            format!("/tree/f{n}").into()
        })
        .collect();
    let mut actions = c.start_delete_many(9, &paths, false).unwrap();
    let mut rounds = 0;
    loop {
        rounds += 1;
        for n in 1..=3u8 {
            assert!(deletes(&actions, FileId([n; 32])), "round {rounds}");
        }
        let next = timers(&actions);
        assert!(next.len() <= 1, "one schedule for the batch: {next:?}");
        match next.into_iter().next() {
            Some((_, event)) => actions = c.on_timer(event),
            None => break,
        }
    }
    assert_eq!(rounds, 3);
    assert!(
        matches!(actions.last(), Some(Action::Report { op: 9, event: OpEvent::DeleteDone { files } }) if files.len() == 3)
    );
    // A path not backed up refuses the whole batch.
    assert!(c.start_delete_many(10, &["/nope".into()], false).is_err());
}

#[test]
fn rebackup_of_an_unchanged_file_skips_chunks_at_their_degree() {
    let c = core(1);
    c.start_backup(1, request(64_000, 1)).unwrap();
    for no in 0..2 {
        c.putchunk_read(1, key(no), vec![no as u8]).unwrap();
    }
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let finished = c.on_message(msg(2, MessageKind::Stored { chunk: key(1) }));
    assert_eq!(done(&finished), Some(vec![]));
    c.on_message(msg(2, MessageKind::Removed { chunk: key(1) }));
    let again = c.start_backup(2, request(64_000, 1)).unwrap();
    assert_eq!(sent_putchunks(&again), vec![1]);
    assert!(!again.iter().any(|a| matches!(a, Action::RecordHash { .. })));
}

#[test]
fn a_resumed_backup_recovers_a_lost_hash_without_resending() {
    // The home crashed after the STORED of chunk 0 but before saving its hash.
    let c = core(1);
    c.start_backup(1, request(64_000, 1)).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    c.backup_source_failed(1, "killed".into());
    let again = c.start_backup(2, request(64_000, 1)).unwrap();
    assert_eq!(sent_putchunks(&again), vec![1]);
    assert!(
        again
            .iter()
            .any(|a| matches!(a, Action::RecordHash { chunk, .. } if *chunk == key(0)))
    );
    c.putchunk_read(2, key(0), b"zero".to_vec()).unwrap();
    assert_eq!(
        c.with_metadata(|m| m.own_chunk(&key(0)).unwrap().hash),
        Some(ChunkHash::of(b"zero"))
    );
}

#[test]
fn removed_lowers_the_perceived_degree() {
    let c = core(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    c.on_message(msg(3, MessageKind::Stored { chunk: key(0) }));
    assert_eq!(c.state().stored[0].perceived, 2);
    c.on_message(msg(3, MessageKind::Removed { chunk: key(0) }));
    assert_eq!(c.state().stored[0].perceived, 1);
}

/// A home that backed up `size` bytes whose chunk `no` has body `body(no)`, confirmed by peer 2.
fn home_with_file(size: u64, body: impl Fn(u32) -> Vec<u8>) -> Core {
    let c = core(1);
    c.start_backup(1, request(size, 1)).unwrap();
    let chunks = size / 64_000 + 1;
    for no in 0..chunks as u32 {
        c.putchunk_read(1, key(no), body(no)).unwrap();
        c.on_message(msg(2, MessageKind::Stored { chunk: key(no) }));
    }
    assert_eq!(c.instances(), 0);
    c
}

fn restore_request() -> RestoreRequest {
    RestoreRequest {
        path: PathBuf::from("/src/file"),
        tmp: PathBuf::from("/tree/tmp/r"),
        dest: PathBuf::from("/tree/restored/file"),
        enhanced: false,
        version: None,
        overwrite: false,
        read_only: false,
    }
}

fn getchunks(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { message, .. } => match message.kind {
                MessageKind::Getchunk { chunk } => Some(chunk.no),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn chunk_msg(from: PeerId, no: u32, body: Vec<u8>) -> Message {
    msg(
        from,
        MessageKind::Chunk {
            chunk: key(no),
            body: body.into(),
        },
    )
}

#[test]
fn restore_verifies_bodies_writes_them_and_commits_at_the_end() {
    let body = |no: u32| vec![no as u8; if no == 0 { 64_000 } else { 5 }];
    let c = home_with_file(64_005, body);
    let first = c.start_restore(7, restore_request()).unwrap();
    assert_eq!(
        first[0],
        Action::CreateRestoreFile {
            op: 7,
            path: "/tree/tmp/r".into(),
            size: 64_005
        }
    );
    assert_eq!(getchunks(&first), vec![0, 1]);
    // Wrong size, then right size but wrong bytes: both refused, each asks again at once.
    assert_eq!(
        getchunks(&c.on_message(chunk_msg(3, 1, vec![1; 6]))),
        vec![1]
    );
    assert_eq!(
        getchunks(&c.on_message(chunk_msg(3, 1, vec![9; 5]))),
        vec![1]
    );
    let ok = c.on_message(chunk_msg(4, 1, body(1)));
    assert!(
        matches!(&ok[0], Action::WriteRestored { op: 7, offset: 64_000, body, .. } if body == &vec![1; 5])
    );
    // A duplicate of an accepted chunk is ignored.
    assert!(c.on_message(chunk_msg(5, 1, body(1))).is_empty());
    c.on_message(chunk_msg(3, 0, body(0)));
    assert!(
        c.restored_chunk_written(7, "/tree/tmp/r".as_ref(), true)
            .iter()
            .all(|a| matches!(a, Action::Report { .. }))
    );
    let last = c.restored_chunk_written(7, "/tree/tmp/r".as_ref(), true);
    assert!(matches!(
        last.last(),
        Some(Action::CommitRestore { op: 7, .. })
    ));
    let done = c.restore_committed(7, Ok(()));
    assert!(matches!(
        &done[0],
        Action::Report {
            event: OpEvent::RestoreDone { chunks: 2, .. },
            ..
        }
    ));
    assert_eq!(c.instances(), 0);
}

#[test]
fn restore_gives_up_on_a_chunk_after_its_getchunks_and_names_it() {
    let c = home_with_file(10, |_| vec![0; 10]);
    let first = c.start_restore(7, restore_request()).unwrap();
    let mut waits = vec![];
    let mut next = timers(&first);
    let mut last = vec![];
    let mut sends = getchunks(&first).len();
    while let Some((delay, event)) = next.pop() {
        waits.push(delay.as_millis());
        last = c.on_timer(event);
        sends += getchunks(&last).len();
        next = timers(&last);
    }
    assert_eq!(waits, vec![600, 1200, 2400, 4800, 9600]);
    assert_eq!(sends, 5);
    assert!(last.contains(&Action::AbortRestore {
        tmp: "/tree/tmp/r".into()
    }));
    assert!(last.iter().any(|a| matches!(a,
        Action::Report { event: OpEvent::RestoreIncomplete { missing, .. }, .. } if missing == &vec![0])));
    assert_eq!(c.instances(), 0);
}

/// Runs a restore's GETCHUNK waits to their end: (the waits, GETCHUNKs sent, the last actions).
fn run_getchunk_waits(c: &Core, first: &[Action]) -> (Vec<u128>, usize, Vec<Action>) {
    let mut waits = vec![];
    let mut next = timers(first);
    let mut last = vec![];
    let mut sends = getchunks(first).len();
    while let Some((delay, event)) = next.pop() {
        waits.push(delay.as_millis());
        last = c.on_timer(event);
        sends += getchunks(&last).len();
        next = timers(&last);
    }
    (waits, sends, last)
}

/// Enhanced: a chunk whose holder is alive is asked for past its five GETCHUNKs, every 3 s,
/// within the budget (30 s + 0.2 s per chunk), then given up; once the membership view
/// suspects its only holder, it is given up after the five.
#[test]
fn an_enhanced_restore_keeps_asking_while_a_holder_lives() {
    let mut cfg = Config::new(1, Version::V2_0);
    cfg.seed = 7;
    let c = Core::new(cfg, Metadata::default());
    c.start_backup(1, request(10, 1)).unwrap();
    c.putchunk_read(1, key(0), vec![0; 10]).unwrap();
    c.on_message(Message::new(
        Version::V2_0,
        2,
        MessageKind::Stored { chunk: key(0) },
    ));
    let (waits, sends, last) =
        run_getchunk_waits(&c, &c.start_restore(7, restore_request()).unwrap());
    assert_eq!(waits[..5], [600, 1200, 2400, 4800, 9600]);
    assert!(waits[5..].iter().all(|&w| w == 3000), "{waits:?}");
    assert_eq!(sends, 5 + 10, "{waits:?}");
    assert_eq!(c.counters.getchunk_persisted.load(Ordering::Relaxed), 10);
    assert!(last.iter().any(|a| matches!(a,
        Action::Report { event: OpEvent::RestoreIncomplete { missing, .. }, .. } if missing == &vec![0])));
    // Peer 2 not heard for four ticks (8 s): suspected; its chunk is given up after five.
    for _ in 0..4 {
        c.on_timer(TimerEvent::Tick);
    }
    assert_eq!(c.counters.peers_suspected.load(Ordering::Relaxed), 1);
    let (_, sends, _) = run_getchunk_waits(&c, &c.start_restore(8, restore_request()).unwrap());
    assert_eq!(sends, 5);
}

#[test]
fn restore_window_grows_with_chunks_and_halves_on_a_late_reply_or_a_filling_queue() {
    let w0 = super::restore::INITIAL_RESTORE_WINDOW as u32;
    let chunks = 3 * w0 + 100;
    let body = |no: u32| vec![no as u8; if no + 1 == chunks { 1 } else { 64_000 }];
    let mut cfg = Config::new(1, Version::V1_0);
    cfg.window = 2;
    cfg.restore_window = 2 * w0 as usize;
    let c = Core::new(cfg, Metadata::default());
    let size = u64::from(chunks - 1) * 64_000 + 1;
    c.start_backup(1, request(size, 1)).unwrap();
    for no in 0..chunks {
        c.putchunk_read(1, key(no), body(no)).unwrap();
        c.on_message(msg(2, MessageKind::Stored { chunk: key(no) }));
    }
    let window = || c.restores.get(&7).unwrap().flow.window() as u32;
    // Answers chunk `no`; returns the GETCHUNKs that sends.
    let answer = |no: u32| getchunks(&c.on_message(chunk_msg(2, no, body(no)))).len() as u32;
    let first = c.start_restore(7, restore_request()).unwrap();
    assert_eq!(getchunks(&first).len() as u32, w0, "the initial window");
    // Slow start: each chunk that comes back on its first GETCHUNK lets two more go, up to
    // the configured bound.
    let sent: u32 = (0..w0).map(answer).sum();
    assert_eq!(sent, 2 * w0);
    assert_eq!(window(), 2 * w0);
    // A CHUNK that finds the receive queue filling up halves the window, once per window.
    c.restore_backlogged(key(w0 + 10));
    c.restore_backlogged(key(w0 + 11));
    assert_eq!(window(), w0);
    // The chunks in flight above the new window drain without new GETCHUNKs.
    let sent: u32 = (w0..2 * w0).map(answer).sum();
    assert!(sent <= 1, "{sent} GETCHUNKs sent while above the window");
    // Back at the window: each chunk that comes back lets another go (about one more per
    // window of chunks, in congestion avoidance).
    let sent: u32 = (2 * w0..2 * w0 + 4).map(answer).sum();
    assert!(sent >= 4);
    let grown = w0 + 1;
    let r = c.restores.get(&7).unwrap();
    assert_eq!(r.flow.in_flight() as u32, grown);
    assert_eq!(r.flow.window() as u32, grown);
    drop(r);
    // A GETCHUNK wait that runs out, for a chunk asked for after the halving, halves again.
    let asked_after = 3 * w0;
    let late = c.on_timer(TimerEvent::GetchunkWait {
        chunk: key(asked_after),
        send: 1,
    });
    assert_eq!(getchunks(&late), vec![asked_after], "asked again");
    assert_eq!(window(), grown / 2);
    // A chunk no restore waits for changes nothing.
    c.restore_backlogged(key(5));
    assert_eq!(window(), grown / 2);
}

#[test]
fn progress_is_reported_about_two_hundred_times_whatever_the_size() {
    let reports = |total: u64| {
        (0..=total)
            .filter_map(|d| super::progress(1, d, total))
            .count()
    };
    // Small operations report every chunk; large ones every total/200 chunks, and the end.
    assert_eq!(reports(3), 4);
    assert_eq!(reports(200), 201);
    assert_eq!(reports(4_001), 202);
    assert_eq!(reports(15_626), 202);
    assert!(
        super::progress(1, 15_626, 15_626).is_some(),
        "the end is always reported"
    );
}

#[test]
fn restore_of_an_unknown_file_is_refused() {
    let c = core(1);
    assert!(matches!(
        c.start_restore(1, restore_request()),
        Err(CommandError::NotBackedUp(_))
    ));
}

/// A holder (id 2) of chunks 0..n of `key(..)` at desired degree 2, also held by `others`.
fn holder(n: u32, others: &[PeerId]) -> Core {
    let c = core(2);
    for no in 0..n {
        c.on_message(msg(1, putchunk(no, &[no as u8; 10])));
        c.chunk_written(key(no), 2, 10, Some(ChunkHash::of(&[no as u8; 10])));
        for &o in others {
            c.on_message(msg(o, MessageKind::Stored { chunk: key(no) }));
        }
    }
    c
}

#[test]
fn getchunk_is_answered_after_a_delay_unless_another_chunk_is_seen() {
    let c = holder(2, &[3]);
    let get = |no| c.on_message(msg(1, MessageKind::Getchunk { chunk: key(no) }));
    let [(delay, event)] = timers(&get(0)).try_into().unwrap();
    assert!(delay <= Duration::from_millis(400));
    assert!(get(0).is_empty(), "one reply scheduled per chunk");
    assert_eq!(
        c.on_timer(event),
        vec![Action::SendChunk {
            chunk: key(0),
            hash: Some(ChunkHash::of(&[0; 10])),
            tcp: None,
        }]
    );
    assert!(
        c.chunk_reply_due(key(0)),
        "nobody else answered: it goes out"
    );
    assert!(!c.chunk_reply_due(key(0)), "once");
    // Suppression: another holder's CHUNK during the delay cancels ours.
    let [(_, event)] = timers(&get(1)).try_into().unwrap();
    c.on_message(chunk_msg(3, 1, vec![1; 10]));
    assert!(c.on_timer(event).is_empty());
    // ... and so does one seen after the delay, while our reply waits for the sender.
    let [(_, event)] = timers(&get(1)).try_into().unwrap();
    assert_eq!(c.on_timer(event).len(), 1);
    c.on_message(chunk_msg(3, 1, vec![1; 10]));
    assert!(!c.chunk_reply_due(key(1)));
    // Chunks not held are not answered.
    assert!(
        c.on_message(msg(1, MessageKind::Getchunk { chunk: key(9) }))
            .is_empty()
    );
}

#[test]
fn a_corrupt_stored_chunk_is_dropped_and_announced() {
    let c = holder(1, &[]);
    let actions = c.stored_chunk_lost(key(0));
    assert_eq!(actions[0], Action::RemoveChunk { chunk: key(0) });
    assert!(
        matches!(&actions[1], Action::Send { message, .. } if message.kind == MessageKind::Removed { chunk: key(0) })
    );
    assert!(c.state().stored.is_empty());
}

#[test]
fn reclaim_evicts_surplus_copies_first_and_announces_removed() {
    let c = holder(3, &[]);
    // Chunk 1 has a surplus (3 holders, desired 2).
    c.on_message(msg(3, MessageKind::Stored { chunk: key(1) }));
    c.on_message(msg(4, MessageKind::Stored { chunk: key(1) }));
    let (done, actions) = c.reclaim(25, false);
    assert_eq!(done.evicted, vec![key(1)]);
    assert_eq!(done.used, 20);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Send { message, .. } if message.kind == MessageKind::Removed { chunk: key(1) })));
    // Full now: PUTCHUNK of a new chunk is not stored, and not answered.
    assert!(c.on_message(msg(1, putchunk(5, b"1234567890"))).is_empty());
    let (done, _) = c.reclaim(0, false);
    assert_eq!((done.evicted.len(), done.used), (2, 0));
    assert!(c.state().stored.is_empty());
    // RECLAIM 0 frees empty chunks too.
    let c = core(2);
    c.on_message(msg(1, putchunk(0, b"")));
    c.chunk_written(key(0), 2, 0, Some(ChunkHash::of(b"")));
    assert_eq!(c.reclaim(0, false).0.evicted, vec![key(0)]);
}

#[test]
fn removed_below_degree_starts_a_rebackup_unless_a_putchunk_is_seen() {
    let c = holder(2, &[3]);
    // Chunk 0: peer 3 removes it; nobody else re-backs it up: we do, from our copy.
    let sched = c.on_message(msg(3, MessageKind::Removed { chunk: key(0) }));
    let [(delay, event)] = timers(&sched).try_into().unwrap();
    assert!(delay <= Duration::from_millis(400));
    let rebackup = c.on_timer(event);
    assert!(rebackup.iter().any(|a| matches!(a,
        Action::SendPutchunk { chunk, degree: 2, source: ChunkSource::Stored, .. } if *chunk == key(0))));
    // A STORED from a new peer brings it back to 2: the re-backup ends.
    c.on_message(msg(5, MessageKind::Stored { chunk: key(0) }));
    assert_eq!(c.state().stored[0].perceived, 2);
    // Chunk 1: another peer's PUTCHUNK during our delay means we stay quiet.
    let sched = c.on_message(msg(3, MessageKind::Removed { chunk: key(1) }));
    let [(_, event)] = timers(&sched).try_into().unwrap();
    c.on_message(msg(4, putchunk(1, &[1; 10])));
    assert!(c.on_timer(event).is_empty());
    // A REMOVED that leaves the degree reached does nothing.
    let c = holder(1, &[3, 4]);
    assert!(
        c.on_message(msg(3, MessageKind::Removed { chunk: key(0) }))
            .is_empty()
    );
}

/// Fires every timer `actions` schedule (and those they schedule) in due-time order, as a
/// clock would; returns every action produced.
fn run_timers(c: &Core, actions: Vec<Action>) -> Vec<Action> {
    let mut queue = std::collections::BTreeMap::new();
    let mut seq = 0u64;
    let mut now = Duration::ZERO;
    let mut all = Vec::new();
    let mut pending = actions;
    loop {
        for (delay, event) in timers(&pending) {
            queue.insert((now + delay, seq), event);
            seq += 1;
        }
        all.append(&mut pending);
        let Some(((at, _), event)) = queue.pop_first() else {
            return all;
        };
        now = at;
        pending = c.on_timer(event);
    }
}

// ---- Enhanced protocol (2.0) ----

const V2: Version = Version::V2_0;

fn core2(id: PeerId) -> Core {
    let mut cfg = Config::new(id, V2);
    cfg.seed = 11;
    cfg.window = 2;
    cfg.restore_window = 2;
    cfg.restore_tcp = Some("127.0.0.1:4000".parse().unwrap());
    Core::new(cfg, Metadata::default())
}

fn msg2(sender: PeerId, kind: MessageKind) -> Message {
    Message::new(V2, sender, kind)
}

fn sends(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

#[test]
fn enhanced_storer_stores_only_while_the_degree_is_short() {
    let c = core2(4);
    // Two others stored chunk 0 during our delay: we keep our disk free.
    let [(delay, decide)] = timers(&c.on_message(msg2(1, putchunk(0, b"abc"))))
        .try_into()
        .unwrap();
    assert!(delay <= Duration::from_millis(400));
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    c.on_message(msg(3, MessageKind::Stored { chunk: key(0) }));
    assert!(c.on_timer(decide).is_empty());
    // Only one other for chunk 1: we store, and answer STORED 2.0 at once after the write.
    let [(_, decide)] = timers(&c.on_message(msg2(1, putchunk(1, b"abc"))))
        .try_into()
        .unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(1) }));
    let write = c.on_timer(decide);
    assert!(matches!(&write[..], [Action::WriteChunk { .. }]));
    let after = c.chunk_written(key(1), 2, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(after[0], Action::SyncMetadata);
    assert_eq!(
        sends(&after)[0],
        &msg2(4, MessageKind::Stored { chunk: key(1) })
    );
    assert_eq!(
        c.state().stored[0].perceived,
        2,
        "the STORED seen while deciding counts"
    );
    // A 1.0 PUTCHUNK gets the 1.0 treatment: written at once.
    assert!(matches!(
        &c.on_message(msg(1, putchunk(2, b"x")))[..],
        [Action::WriteChunk { .. }, Action::Schedule { .. }]
    ));
    assert_eq!(c.instances(), 1, "only the 1.0 write is in progress");
}

#[test]
fn a_base_peer_treats_enhanced_messages_as_1_0_and_ignores_new_types() {
    let c = core(4);
    assert!(matches!(
        &c.on_message(msg2(1, putchunk(0, b"x")))[..],
        [Action::WriteChunk { .. }, Action::Schedule { .. }]
    ));
    assert!(c.on_message(msg2(1, MessageKind::Up)).is_empty());
    assert!(
        c.on_message(msg2(1, MessageKind::Deleted { file: key(0).file }))
            .is_empty()
    );
    assert!(c.startup(vec![]).is_empty());
}

/// Fires the budgets' period until a requester's repeat of a GETCHUNK answered now is answered
/// again.
fn pass_repeat_window(c: &Core) {
    for _ in 0..=budget::REPEAT_PERIODS {
        c.on_timer(TimerEvent::BudgetPeriod);
    }
}

#[test]
fn enhanced_getchunk_is_answered_over_tcp_and_header_only_chunks_silence_holders() {
    let c = core2(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    let mut get = msg2(1, MessageKind::Getchunk { chunk: key(0) });
    get.extra_lines = vec!["TCP 127.0.0.1:5000".into()];
    let [(_, event)] = timers(&c.on_message(get.clone())).try_into().unwrap();
    assert_eq!(
        c.on_timer(event),
        vec![Action::SendChunk {
            chunk: key(0),
            hash: Some(ChunkHash::of(b"x")),
            tcp: Some("127.0.0.1:5000".parse().unwrap()),
        }]
    );
    assert!(c.chunk_reply_due(key(0))); // it goes out
    pass_repeat_window(&c); // (a repeat at once would be ignored)
    // Another holder's header-only CHUNK suppresses our reply like a full one.
    let [(_, event)] = timers(&c.on_message(get)).try_into().unwrap();
    assert!(
        c.on_message(enhanced::header_only_chunk(3, key(0)))
            .is_empty()
    );
    assert!(c.on_timer(event).is_empty());
    // A plain GETCHUNK is answered on MDR.
    let [(_, event)] = timers(&c.on_message(msg(1, MessageKind::Getchunk { chunk: key(0) })))
        .try_into()
        .unwrap();
    assert!(matches!(
        &c.on_timer(event)[..],
        [Action::SendChunk { tcp: None, .. }]
    ));
}

#[test]
fn enhanced_restore_asks_for_tcp_first_then_falls_back_to_plain_getchunk() {
    let c = core2(1);
    c.start_backup(1, request(5, 1)).unwrap();
    c.putchunk_read(1, key(0), b"hello".to_vec()).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let mut req = restore_request();
    req.enhanced = true;
    let first = c.start_restore(7, req).unwrap();
    let get = sends(&first)[0];
    assert_eq!(get.version, V2);
    assert_eq!(get.extra_lines, vec!["TCP 127.0.0.1:4000".to_string()]);
    // No body came, and the holder was never heard speaking 2.0: the resend is a plain 1.0
    // GETCHUNK, which a 1.0 holder answers.
    let (_, wait) = timers(&first).pop().unwrap();
    let resend = c.on_timer(wait);
    let get = sends(&resend)[0];
    assert_eq!((get.version, get.extra_lines.len()), (Version::V1_0, 0));
    // A header-only CHUNK is not a body: no refusal, no re-ask. It says the holder speaks 2.0
    // (it answered over TCP; the body was lost): the next resends ask over TCP again, but the
    // last of them, which goes plain whatever is known.
    assert!(
        c.on_message(enhanced::header_only_chunk(2, key(0)))
            .is_empty()
    );
    let mut last = resend;
    for send in 3..=5 {
        let (_, wait) = timers(&last).pop().unwrap();
        last = c.on_timer(wait);
        let get = sends(&last)[0];
        let tcp = send < 5;
        assert_eq!(get.version == V2, tcp, "send {send}");
        assert_eq!(get.extra_lines.len(), usize::from(tcp), "send {send}");
    }
    // The body over TCP (a CHUNK 2.0 with its body) is accepted.
    let got = c.on_message(msg2(
        2,
        MessageKind::Chunk {
            chunk: key(0),
            body: Bytes::from_static(b"hello"),
        },
    ));
    assert!(matches!(&got[0], Action::WriteRestored { .. }));
    assert_eq!(
        c.counters
            .bad_bodies
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn enhanced_delete_stays_pending_until_every_enhanced_holder_confirms() {
    let c = core2(1);
    c.on_message(msg2(2, MessageKind::Up)); // peer 2 speaks 2.0; peer 3 is not known to
    c.start_backup(1, request(5, 2)).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    c.on_message(msg(3, MessageKind::Stored { chunk: key(0) }));
    let actions = c.start_delete(2, "/src/file".as_ref(), true).unwrap();
    assert_eq!(sends(&actions)[0].version, V2);
    let pending = || c.with_metadata(|m| m.pending_deletes().clone());
    assert_eq!(pending()[&key(0).file], [2].into());
    // Peer 2 comes back: it is sent the DELETE it missed.
    let again = c.on_message(msg2(2, MessageKind::Up));
    assert_eq!(
        sends(&again),
        vec![&msg2(1, MessageKind::Delete { file: key(0).file })]
    );
    // The periodic retry re-sends it too, and schedules itself again.
    let retry = c.on_timer(TimerEvent::RetryDeletes);
    assert_eq!(sends(&retry).len(), 1);
    assert!(matches!(
        retry.last(),
        Some(Action::Schedule {
            event: TimerEvent::RetryDeletes,
            ..
        })
    ));
    // Its confirmation ends the tracking.
    c.on_message(msg2(2, MessageKind::Deleted { file: key(0).file }));
    assert!(pending().is_empty());
    assert!(sends(&c.on_timer(TimerEvent::RetryDeletes)).is_empty());
}

#[test]
fn enhanced_holder_confirms_delete_and_announces_itself_at_start() {
    let c = core2(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    let actions = c.on_message(msg2(1, MessageKind::Delete { file: key(0).file }));
    assert_eq!(actions[0], Action::RemoveChunk { chunk: key(0) });
    assert_eq!(
        sends(&actions),
        vec![&msg2(2, MessageKind::Deleted { file: key(0).file })]
    );
    // A 1.0 DELETE is not confirmed.
    assert!(sends(&c.on_message(msg(1, MessageKind::Delete { file: key(0).file }))).is_empty());
    // (A chunk lost of a file deleted meanwhile is not announced: see the tombstone tests.)
    let other = ChunkKey {
        file: FileId([9; 32]),
        no: 5,
    };
    let start = c.startup(vec![other, key(5)]);
    let announced: Vec<&str> = sends(&start).iter().map(|m| m.kind.name()).collect();
    // A peer with no files of its own also asks whether the group holds its catalog.
    assert_eq!(announced, vec!["REMOVED", "UP", "FINDCATALOG"]);
}

#[test]
fn enhanced_watch_rebacks_up_again_when_nobody_restores_the_degree_and_then_gives_up() {
    let c = core2(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    c.on_message(msg(3, MessageKind::Stored { chunk: key(0) }));
    // Each check: if no PUTCHUNK was seen and the degree is still short, re-back it up; the
    // re-backups find nobody (their PUTCHUNK waits run out); the watch gives up after 3.
    let all = run_timers(
        &c,
        c.on_message(msg2(3, MessageKind::Removed { chunk: key(0) })),
    );
    let rebackups = all
        .iter()
        .filter(|a| matches!(a, Action::Report { event: OpEvent::BackupDone { short, .. }, .. } if short == &vec![0]))
        .count();
    assert!(
        all.iter()
            .all(|a| !matches!(a, Action::SendPutchunk { version, .. } if *version != V2))
    );
    assert_eq!(rebackups, 3);
    assert_eq!(c.instances(), 0);
    // Someone else's PUTCHUNK during the wait keeps this peer quiet, and a STORED that brings
    // the degree back ends the watch.
    let c = core2(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    let [(_, check)] = timers(&c.on_message(msg2(3, MessageKind::Removed { chunk: key(0) })))
        .try_into()
        .unwrap();
    c.on_message(msg2(4, putchunk(0, b"x")));
    let later = c.on_timer(check);
    assert!(sent_putchunks(&later).is_empty());
    let [(_, audit)] = timers(&later).try_into().unwrap();
    c.on_message(msg(4, MessageKind::Stored { chunk: key(0) }));
    assert!(c.on_timer(audit).is_empty());
    assert_eq!(c.instances(), 0);
}

#[test]
fn enhanced_holders_above_the_lowest_ids_drop_surplus_copies() {
    // Peers 2, 4 and 6 all decided to store chunk 0 (degree 2) at nearly the same time.
    let store = |id: PeerId| {
        let c = core2(id);
        let [(_, decide)] = timers(&c.on_message(msg2(1, putchunk(0, b"abc"))))
            .try_into()
            .unwrap();
        let write = c.on_timer(decide);
        assert!(matches!(&write[..], [Action::WriteChunk { .. }]));
        let done = c.chunk_written(key(0), 2, 3, Some(ChunkHash::of(b"abc")));
        for other in [2, 4, 6].into_iter().filter(|&p| p != id) {
            c.on_message(msg2(other, MessageKind::Stored { chunk: key(0) }));
        }
        let trim = timers(&done)
            .into_iter()
            .find(|(_, e)| matches!(e, TimerEvent::TrimCheck { .. }))
            .expect("trim check scheduled");
        assert_eq!(trim.0, Duration::from_secs(1));
        let actions = c.on_timer(trim.1);
        (actions, c)
    };
    for (id, keeps) in [(2, true), (4, true), (6, false)] {
        let (actions, c) = store(id);
        assert_eq!(actions.is_empty(), keeps, "peer {id}");
        assert_eq!(c.state().stored.len(), usize::from(keeps), "peer {id}");
        if !keeps {
            // The file goes at the end of the grace time (see the take-back test).
            assert!(timers(&actions).iter().any(
                |(_, e)| matches!(e, TimerEvent::TrashExpired { chunk, .. } if *chunk == key(0))
            ));
            assert!(
                sends(&actions)
                    .iter()
                    .any(|m| m.kind == MessageKind::Removed { chunk: key(0) })
            );
        }
    }
}

#[test]
fn removed_stops_repeating_once_the_chunk_is_stored_here_again() {
    let c = holder(1, &[]);
    let (_, actions) = c.reclaim(0, false);
    let again = timers(&actions);
    assert_eq!(again.len(), 1, "the first repeat is scheduled");
    // A re-backup asks this peer to store the chunk again before the repeat is due.
    c.reclaim(1_000_000, false);
    c.on_message(msg(3, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    assert!(c.with_metadata(|m| m.stored_chunk(&key(0)).is_some()));
    let (_, event) = again.into_iter().next().unwrap();
    let repeat = c.on_timer(event);
    assert!(
        sends(&repeat).is_empty() && timers(&repeat).is_empty(),
        "{repeat:?}"
    );
}

#[test]
fn removed_is_sent_ten_times_half_a_second_apart() {
    let c = holder(1, &[]);
    let (_, actions) = c.reclaim(0, false);
    let all = run_timers(&c, actions);
    let removed: Vec<&Message> = sends(&all)
        .into_iter()
        .filter(|m| m.kind == MessageKind::Removed { chunk: key(0) })
        .collect();
    assert_eq!(removed.len(), 10);
    let waits: Vec<Duration> = timers(&all).into_iter().map(|(d, _)| d).collect();
    assert_eq!(waits, vec![Duration::from_millis(500); 9]);
}

#[test]
fn putchunk_delete_putchunk_never_has_two_writes_of_one_chunk_in_flight() {
    let c = core(2);
    let first = c.on_message(msg(1, putchunk(0, b"abc")));
    assert!(matches!(first[0], Action::WriteChunk { .. }));
    c.on_message(msg(1, MessageKind::Delete { file: key(0).file }));
    // The first write is still under way: a second PUTCHUNK must not start another (both could
    // land in one group commit; the runtime's commit thread died of that).
    let again = c.on_message(msg(1, putchunk(0, b"abc")));
    assert!(
        !again.iter().any(|a| matches!(a, Action::WriteChunk { .. })),
        "{again:?}"
    );
    // The cancelled write ends: its chunk is removed, not recorded, and no STORED goes out.
    let done = c.chunk_written(key(0), 2, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(done, vec![Action::RemoveChunk { chunk: key(0) }]);
    assert!(c.state().stored.is_empty());
    // The initiator's resend then stores it.
    let resend = c.on_message(msg(1, putchunk(0, b"abc")));
    assert!(matches!(resend[0], Action::WriteChunk { .. }));
}

#[test]
fn a_deleted_file_is_put_back_only_by_the_peer_that_deleted_it() {
    let c = core2(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    c.on_message(msg2(1, MessageKind::Delete { file: key(0).file }));
    // A holder that missed the DELETE re-backs the chunk up: refused.
    assert!(c.on_message(msg(3, putchunk(0, b"x"))).is_empty());
    // Nor does this peer repeat a REMOVED for that file any more.
    let again = c.on_timer(TimerEvent::SendAgain {
        messages: vec![msg2(2, MessageKind::Removed { chunk: key(0) })],
        remaining: 3,
        then: None,
    });
    assert!(sends(&again).is_empty(), "{again:?}");
    // The home backs the file up again: stored.
    let home = c.on_message(msg(1, putchunk(0, b"x")));
    assert!(matches!(home[0], Action::WriteChunk { .. }), "{home:?}");
}

/// Enhanced peer 1, home of a one-chunk file it is backing up at degree 2 (enhanced).
fn enhanced_home() -> Core {
    let c = core2(1);
    let mut req = request(5, 2);
    req.enhanced = true;
    c.start_backup(1, req).unwrap();
    c
}

#[test]
fn an_enhanced_delete_waits_for_every_enhanced_peer_known_not_only_the_holders_heard() {
    let c = enhanced_home();
    // Peer 4 speaks 2.0 but its STORED never arrived here.
    c.on_message(msg2(4, MessageKind::Up));
    c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    c.on_message(msg2(3, MessageKind::Stored { chunk: key(0) }));
    c.start_delete(9, "/src/file".as_ref(), true).unwrap();
    let pending = c.with_metadata(|m| m.pending_deletes()[&key(0).file].clone());
    assert_eq!(pending, [2, 3, 4].into(), "{pending:?}");
}

#[test]
fn a_peer_storing_a_chunk_of_a_file_being_deleted_is_asked_to_delete_it_again() {
    let c = enhanced_home();
    c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    c.on_message(msg2(3, MessageKind::Stored { chunk: key(0) }));
    c.start_delete(9, "/src/file".as_ref(), true).unwrap();
    c.on_message(msg2(2, MessageKind::Deleted { file: key(0).file }));
    // A stale re-backup made peer 2 store the chunk again.
    let again = c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    assert_eq!(
        sends(&again),
        vec![&msg2(1, MessageKind::Delete { file: key(0).file })]
    );
    let pending = c.with_metadata(|m| m.pending_deletes()[&key(0).file].clone());
    assert_eq!(pending, [2, 3].into());
    // The home itself never stores a chunk of the file it is deleting.
    assert!(c.on_message(msg2(3, putchunk(0, b"x"))).is_empty());
}

#[test]
fn a_backup_that_fails_gives_its_room_in_the_window_to_the_backups_waiting() {
    let c = core(1); // window 2
    let first = c.start_backup(1, request(64_000 * 3, 1)).unwrap();
    assert_eq!(sent_putchunks(&first).len(), 2);
    let mut other = request(10, 1);
    other.path = PathBuf::from("/src/other");
    other.file = FileId([8; 32]);
    let waiting = c.start_backup(2, other).unwrap();
    assert!(sent_putchunks(&waiting).is_empty(), "the window is full");
    // The first backup's source cannot be read: its chunks leave the window.
    let failed = c.backup_source_failed(1, "gone".into());
    assert_eq!(sent_putchunks(&failed).len(), 1, "{failed:?}");
}

/// Enhanced peer `id` stores chunk 0 (degree `desired`) on peer 9's PUTCHUNK after the
/// holders `others` did, and trims it: the peer, and what the trim check asked for.
fn trim_after(id: PeerId, desired: u8, others: &[PeerId]) -> (Core, Vec<Action>) {
    let c = core2(id);
    let [(_, decide)] = timers(&c.on_message(msg2(9, putchunk(0, b"abc"))))
        .try_into()
        .unwrap();
    c.on_timer(decide);
    for &p in others {
        c.on_message(msg2(p, MessageKind::Stored { chunk: key(0) }));
    }
    let done = c.chunk_written(key(0), desired, 3, Some(ChunkHash::of(b"abc")));
    let (_, trim) = timers(&done)
        .into_iter()
        .find(|(_, e)| matches!(e, TimerEvent::TrimCheck { .. }))
        .expect("trim check scheduled");
    let trimmed = c.on_timer(trim);
    assert!(c.state().stored.is_empty(), "trimmed");
    (c, trimmed)
}

/// The end of a trimmed copy's grace time, as scheduled by its trim.
fn expiry(trimmed: &[Action]) -> TimerEvent {
    timers(trimmed)
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| matches!(e, TimerEvent::TrashExpired { .. }))
        .expect("grace time scheduled")
}

#[test]
fn a_trimmed_copy_is_taken_back_when_the_lower_holder_evicts_its_own_meanwhile() {
    // Peer 4 stored chunk 0 (degree 1) after peer 2 did: its trim check drops its copy, but
    // the file stays for the grace time.
    let (c, trimmed) = trim_after(4, 1, &[2]);
    assert!(
        !trimmed.contains(&Action::RemoveChunk { chunk: key(0) }),
        "{trimmed:?}"
    );
    // Peer 2 reclaimed its copy at the same moment: this peer takes its copy back.
    let back = c.on_message(msg2(2, MessageKind::Removed { chunk: key(0) }));
    assert_eq!(c.state().stored.len(), 1, "the last copy stays");
    assert!(sends(&back).contains(&&msg2(4, MessageKind::Stored { chunk: key(0) })));
    // Without such a REMOVED, the grace time ends and the file goes.
    let (c, trimmed) = trim_after(4, 1, &[2]);
    assert_eq!(
        c.on_timer(expiry(&trimmed)),
        vec![Action::RemoveChunk { chunk: key(0) }]
    );
    assert_eq!(c.instances(), 0);
}

#[test]
fn a_trimmed_copy_stored_again_is_not_removed_when_its_grace_time_ends() {
    let (c, trimmed) = trim_after(4, 1, &[2]);
    // The home resends the PUTCHUNK and this peer stores the chunk again (1.0: at once).
    let again = c.on_message(msg(9, putchunk(0, b"abc")));
    assert!(matches!(again[0], Action::WriteChunk { .. }), "{again:?}");
    c.chunk_written(key(0), 1, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(c.state().stored.len(), 1);
    // The old copy's grace time ends: the file, now the new copy's, stays.
    assert!(c.on_timer(expiry(&trimmed)).is_empty());
    // A late REMOVED from peer 2 does not remove it either.
    let removed = c.on_message(msg2(2, MessageKind::Removed { chunk: key(0) }));
    assert!(!removed.contains(&Action::RemoveChunk { chunk: key(0) }));
}

#[test]
fn a_trimmed_copy_is_not_taken_back_when_another_surplus_holder_trims_too() {
    // Peers 1 and 2 keep chunk 0 (degree 2); peers 3 and 5 both trim theirs.
    let (c, _) = trim_after(5, 2, &[1, 2, 3]);
    // Peer 3's trim is no reason to take this copy back; peer 1 evicting its own is.
    assert!(sends(&c.on_message(msg2(3, MessageKind::Removed { chunk: key(0) }))).is_empty());
    assert!(c.state().stored.is_empty());
    c.on_message(msg2(1, MessageKind::Removed { chunk: key(0) }));
    assert_eq!(c.state().stored.len(), 1);
}

/// Runs `start(op)` for ops 0 and 1 on two threads released at once; how many succeeded.
fn race(start: impl Fn(OpId) -> bool + Send + Sync + 'static) -> usize {
    use std::sync::{Arc, Barrier};
    let start = Arc::new(start);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|op| {
            let (start, barrier) = (start.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                start(op)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&ok| ok)
        .count()
}

#[test]
fn two_requests_for_one_file_at_once_start_one_operation() {
    use std::sync::Arc;
    for round in 0..5000 {
        let c = Arc::new(core(1));
        let started = race(move |op| c.start_backup(op, request(64_000 * 3, 1)).is_ok());
        assert_eq!(
            started, 1,
            "round {round}: {started} backups of one file started"
        );
        // The same for restores of a file backed up here.
        let c = Arc::new(core(1));
        c.start_backup(9, request(5, 1)).unwrap();
        c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
        let started = race(move |op| {
            let req = RestoreRequest {
                path: PathBuf::from("/src/file"),
                tmp: PathBuf::from(format!("/tmp/r{op}")),
                dest: PathBuf::from("/tmp/out"),
                enhanced: false,
                version: None,
                overwrite: true,
                read_only: false,
            };
            c.start_restore(op, req).is_ok()
        });
        assert_eq!(
            started, 1,
            "round {round}: {started} restores of one file started"
        );
    }
}

/// Enhanced home 1 of the one-chunk file `/src/file` ("hello") with a VERIFY key, its chunk
/// stored by enhanced peers 2 and 3 and by 1.0 peer 4, as `holders` says.
fn verifiable_home(holders: &[PeerId]) -> Core {
    let c = core2(1);
    let mut req = request(5, 2);
    req.enhanced = true;
    req.attrs.verify_key = Some(verify::VerifyKey([7; 32]));
    c.start_backup(1, req).unwrap();
    c.putchunk_read(1, key(0), b"hello".to_vec()).unwrap();
    for &h in holders {
        let stored = MessageKind::Stored { chunk: key(0) };
        c.on_message(if h == 4 {
            msg(h, stored)
        } else {
            msg2(h, stored)
        });
    }
    assert_eq!(c.with_metadata(|m| m.backed_up().len()), 1);
    c
}

/// The nonce VERIFY number `i` of `verifiable_home` uses.
fn home_nonce(i: usize) -> [u8; 32] {
    verify::nonce(&verify::VerifyKey([7; 32]), key(0), i)
}

fn checked(from: PeerId, nonce: &[u8; 32], body: &[u8]) -> Message {
    msg2(
        from,
        MessageKind::Checked {
            chunk: key(0),
            nonce: *nonce,
            proof: verify::proof(nonce, body),
        },
    )
}

fn verify_report(actions: &[Action]) -> Option<verify::VerifyReport> {
    actions.iter().find_map(|a| match a {
        Action::Report {
            event: OpEvent::VerifyDone { report, .. },
            ..
        } => Some(report.clone()),
        _ => None,
    })
}

#[test]
fn verify_proves_each_holder_with_a_fresh_nonce_and_names_a_wrong_copy() {
    let c = verifiable_home(&[2, 3]);
    let started = c.start_verify(9, "/src/file".as_ref()).unwrap();
    let nonce = home_nonce(0);
    assert!(
        sends(&started).iter().any(|m| m.version == V2
            && m.kind
                == MessageKind::Check {
                    chunk: key(0),
                    nonce
                }),
        "{started:?}"
    );
    assert!(
        c.on_message(checked(2, &nonce, b"hello")).is_empty(),
        "3 has not answered"
    );
    let report = verify_report(&c.on_message(checked(3, &nonce, b"hellp"))).unwrap();
    assert!(!report.ok());
    assert_eq!(report.verified, 0);
    assert_eq!(report.below[0].proven, vec![2]);
    assert_eq!(report.below[0].wrong, vec![3]);
    assert!(report.fresh);
    assert_eq!(c.instances(), 0);

    // The next VERIFY takes the next nonce: an answer to the first one no longer counts.
    c.start_verify(10, "/src/file".as_ref()).unwrap();
    let next = home_nonce(1);
    assert!(c.on_message(checked(2, &nonce, b"hello")).is_empty());
    c.on_message(checked(2, &next, b"hello"));
    let report = verify_report(&c.on_message(checked(3, &next, b"hello"))).unwrap();
    assert!(report.ok());
    assert_eq!(report.verified, 1);
}

#[test]
fn verify_reports_a_silent_holder_after_its_checks_and_a_1_0_holder_as_unconfirmed() {
    let c = verifiable_home(&[2, 4]);
    let mut actions = c.start_verify(9, "/src/file".as_ref()).unwrap();
    let mut checks = 0;
    let report = loop {
        checks += sends(&actions)
            .iter()
            .filter(|m| matches!(m.kind, MessageKind::Check { .. }))
            .count();
        if let Some(r) = verify_report(&actions) {
            break r;
        }
        let (_, event) = timers(&actions).pop().expect("a wait");
        actions = c.on_timer(event);
    };
    assert_eq!(checks, 16);
    // Holder 2 never answered; 1.0 holder 4 cannot: short of the degree either way.
    assert_eq!(report.below[0].silent, vec![2]);
    assert_eq!(report.below[0].unverified, vec![4]);

    // With 2 answering, the chunk is unconfirmed (the 1.0 copy may be fine): not a failure.
    c.start_verify(10, "/src/file".as_ref()).unwrap();
    let report = verify_report(&c.on_message(checked(2, &home_nonce(1), b"hello"))).unwrap();
    assert!(report.ok());
    assert_eq!((report.verified, report.unconfirmed.len()), (0, 1));
    assert_eq!(report.unconfirmed[0].unverified, vec![4]);
}

#[test]
fn verify_nonces_are_fresh_for_as_many_verifies_as_proofs_were_recorded() {
    let c = verifiable_home(&[2]);
    for i in 0..=verify::CHALLENGES {
        c.start_verify(20 + i as u64, "/src/file".as_ref()).unwrap();
        let report =
            verify_report(&c.on_message(checked(2, &home_nonce(i % verify::CHALLENGES), b"hello")));
        let report = report.unwrap();
        assert_eq!(report.fresh, i < verify::CHALLENGES, "verify {i}");
    }
    // A second VERIFY of the file while one runs is refused.
    c.start_verify(40, "/src/file".as_ref()).unwrap();
    assert!(c.start_verify(41, "/src/file".as_ref()).is_err());
}

#[test]
fn a_holder_answers_check_for_a_chunk_it_stores_and_a_1_0_peer_ignores_it() {
    let check = || {
        msg2(
            1,
            MessageKind::Check {
                chunk: key(0),
                nonce: [3; 32],
            },
        )
    };
    let holder = core2(2);
    holder.on_message(msg(1, putchunk(0, b"x")));
    holder.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    assert_eq!(
        holder.on_message(check()),
        vec![Action::SendProof {
            chunk: key(0),
            nonce: [3; 32],
            hash: Some(ChunkHash::of(b"x"))
        }]
    );
    assert!(core2(3).on_message(check()).is_empty(), "holds nothing");
    let plain = core(2);
    plain.on_message(msg(1, putchunk(0, b"x")));
    plain.chunk_written(key(0), 2, 1, Some(ChunkHash::of(b"x")));
    assert!(
        plain.on_message(check()).is_empty(),
        "1.0 peers do not know CHECK"
    );
}

#[test]
fn an_older_content_backed_up_again_becomes_the_newest_version() {
    let c = core(1);
    let (v1, _) = version_n(&c, 1, 2);
    c.on_message(msg(2, stored_for(v1)));
    let (v2, _) = version_n(&c, 2, 2);
    c.on_message(msg(2, stored_for(v2)));
    // Version 1 restored in place and backed up again: the same file id, now the newest.
    let mut again = request(5, 1);
    again.file = v1;
    again.keep = 2;
    c.start_backup(3, again).unwrap();
    let path = std::path::Path::new("/src/file");
    let order: Vec<(FileId, u32)> = c.with_metadata(|m| {
        m.versions_of(path)
            .iter()
            .map(|(id, f)| (*id, f.attrs.version))
            .collect()
    });
    assert_eq!(order, vec![(v2, 2), (v1, 3)]);
    assert_eq!(c.with_metadata(|m| m.file_for_path(path, None)), Some(v1));
}

#[test]
fn keep_counts_only_versions_a_restore_can_use() {
    let c = core(1);
    let (v1, _) = version_n(&c, 1, 2);
    c.on_message(msg(2, stored_for(v1)));
    // Version 2 gets no STORED at all: it runs out of sends, unrestorable.
    let (v2, first) = version_n(&c, 2, 2);
    let mut next = timers(&first);
    while let Some((_, event)) = next.pop() {
        next.extend(timers(&c.on_timer(event)));
    }
    let (v3, _) = version_n(&c, 3, 2);
    let finished = c.on_message(msg(2, stored_for(v3)));
    assert!(deletes(&finished, v2), "the broken version goes");
    assert!(!deletes(&finished, v1), "the last good one is the one kept");
}

#[test]
fn a_resumed_backup_whose_source_changed_keeps_the_version_it_resumed() {
    let c = core(1);
    let mut req = request(6, 1);
    req.attrs.mtime_ns = 42;
    c.start_backup(1, req.clone()).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    assert!(done(&c.source_checked(1, true)).is_some());
    // The same file (same id) backed up again, and it changes meanwhile: the whole version
    // backed up before stays.
    c.start_backup(2, req).unwrap();
    let failed = c.source_checked(2, false);
    assert!(!deletes(&failed, key(0).file), "{failed:?}");
    assert_eq!(c.with_metadata(|m| m.backed_up().len()), 1);
}

/// An enhanced home that knows enhanced peers 2 and 3 and backed up /src/file, with the
/// catalog published every second.
fn publishing_home() -> Core {
    let mut cfg = Config::new(1, V2);
    cfg.seed = 5;
    cfg.catalog_interval = Duration::from_secs(1);
    cfg.catalog_path = "/tree/catalog.json".into();
    let c = Core::new(cfg, Metadata::default());
    c.on_message(msg2(2, MessageKind::Up));
    c.on_message(msg2(3, MessageKind::Up));
    let mut req = request(5, 1);
    req.enhanced = true;
    c.start_backup(1, req).unwrap();
    c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    c
}

#[test]
fn a_changed_catalog_is_published_once_per_interval_as_a_tagged_backup() {
    let c = publishing_home();
    // The backup's end scheduled one publication.
    let publish = c.on_timer(TimerEvent::PublishCatalog);
    let [Action::WriteCatalog { path, bytes, tag }] = &publish[..] else {
        panic!("{publish:?}")
    };
    assert_eq!(path, &PathBuf::from("/tree/catalog.json"));
    assert_eq!((tag.home, tag.generation, tag.files), (1, 1, 1));
    let doc: metadata::CatalogDocument = serde_json::from_slice(bytes).unwrap();
    assert_eq!(doc.files[0].1.path, PathBuf::from("/src/file"));
    // Nothing changed since: no second generation.
    assert!(c.on_timer(TimerEvent::PublishCatalog).is_empty());
    // Its backup: PUTCHUNK 2.0 with the CATALOG line, at the degree of the peers known.
    let started = c.catalog_written(*tag, true);
    let Some(Action::SendPutchunk {
        degree,
        extra_lines,
        version,
        ..
    }) = started
        .iter()
        .find(|a| matches!(a, Action::SendPutchunk { .. }))
    else {
        panic!("{started:?}")
    };
    assert_eq!((*degree, *version), (2, V2));
    assert_eq!(
        extra_lines,
        &vec![crate::protocol::message::catalog_line(tag)]
    );
    // The catalog is not a user's file: STATE and LIST do not show it.
    assert_eq!(c.state().backed_up.len(), 1);
    assert_eq!(c.list(None).files.len(), 1);
}

#[test]
fn holders_answer_findcatalog_and_recover_takes_the_newest_generation() {
    let tag = |generation| crate::protocol::CatalogTag {
        home: 1,
        generation,
        size: 10,
        files: 1,
        hash: ChunkHash::of(b"doc"),
    };
    // A holder of generation 1's chunk answers for it.
    let holder = core2(5);
    let old = recover::catalog_file_id(&tag(1));
    let mut put = msg2(
        1,
        MessageKind::Putchunk {
            chunk: ChunkKey { file: old, no: 0 },
            degree: 1,
            body: Bytes::from_static(b"0123456789"),
        },
    );
    put.extra_lines = vec![crate::protocol::message::catalog_line(&tag(1))];
    // PUTCHUNK 2.0: the holder decides after its delay, then writes.
    let deferred = holder.on_message(put);
    let (_, decide) = timers(&deferred).pop().unwrap();
    assert!(matches!(
        holder.on_timer(decide)[0],
        Action::WriteChunk { .. }
    ));
    holder.chunk_written(
        ChunkKey { file: old, no: 0 },
        1,
        10,
        Some(ChunkHash::of(b"0123456789")),
    );
    let answers = holder.on_message(msg2(9, MessageKind::FindCatalog { home: 1 }));
    assert_eq!(
        sends(&answers)[0].kind,
        MessageKind::CatalogHeld {
            file: old,
            tag: tag(1)
        }
    );
    assert!(
        holder
            .on_message(msg2(9, MessageKind::FindCatalog { home: 7 }))
            .is_empty()
    );

    // The home recovers: peer 5 holds generation 1, peers 2 and 3 generation 2.
    let home = core2(1);
    let mut actions = home.start_recover(40, "/tmp/r".into()).unwrap();
    assert_eq!(
        sends(&actions)[0].kind,
        MessageKind::FindCatalog { home: 1 }
    );
    let new = recover::catalog_file_id(&tag(2));
    home.on_message(msg2(
        5,
        MessageKind::CatalogHeld {
            file: old,
            tag: tag(1),
        },
    ));
    for p in [2, 3] {
        home.on_message(msg2(
            p,
            MessageKind::CatalogHeld {
                file: new,
                tag: tag(2),
            },
        ));
    }
    let mut finds = 0;
    while let Some((_, event)) = timers(&actions).pop() {
        finds += 1;
        actions = home.on_timer(event);
        if actions
            .iter()
            .any(|a| matches!(a, Action::CreateRestoreFile { .. }))
        {
            break;
        }
    }
    assert_eq!(finds, 3, "three FINDCATALOG rounds");
    assert_eq!(getchunks(&actions), vec![0]);
    assert!(
        sends(&actions)
            .iter()
            .any(|m| matches!(m.kind, MessageKind::Getchunk { chunk } if chunk.file == new))
    );
    // With no answer at all, RECOVER fails clearly; a peer with files refuses it.
    let lonely = core2(6);
    let mut actions = lonely.start_recover(41, "/tmp/r".into()).unwrap();
    while let Some((_, event)) = timers(&actions).pop() {
        actions = lonely.on_timer(event);
    }
    assert!(actions.iter().any(|a| matches!(a,
        Action::Report { event: OpEvent::Failed(m), .. } if m.contains("no catalog of peer 6"))));
    assert!(
        publishing_home()
            .start_recover(42, "/tmp/r".into())
            .is_err()
    );
}

#[test]
fn a_recovered_catalog_is_checked_and_installed() {
    let source = publishing_home();
    let Some(Action::WriteCatalog { bytes, tag, .. }) =
        source.on_timer(TimerEvent::PublishCatalog).pop()
    else {
        panic!()
    };
    let home = core2(1);
    home.start_recover(7, "/tmp/r".into()).unwrap();
    let bad = home.catalog_loaded(7, tag, vec![2], Ok(b"other".to_vec()));
    assert!(bad.iter().any(|a| matches!(a,
        Action::Report { event: OpEvent::Failed(m), .. } if m.contains("hash"))));
    home.start_recover(8, "/tmp/r".into()).unwrap();
    let good = home.catalog_loaded(8, tag, vec![2], Ok(bytes));
    assert!(good.iter().any(|a| matches!(a,
        Action::Report { event: OpEvent::Recovered(r), .. } if r.paths == 1 && r.generation == 1)));
    let path = std::path::Path::new("/src/file");
    assert_eq!(
        home.with_metadata(|m| m.file_for_path(path, None)),
        Some(key(0).file)
    );
}

#[test]
fn another_process_with_this_id_is_noticed_and_stops_publication() {
    let c = publishing_home();
    let mut up = msg2(1, MessageKind::Up);
    up.extra_lines = vec!["INSTANCE 00000000000000aa".into()];
    let answer = c.on_message(up.clone());
    assert_eq!(
        sends(&answer)[0].kind,
        MessageKind::Up,
        "it tells the other one"
    );
    assert!(c.on_message(up).is_empty(), "once");
    assert!(c.on_timer(TimerEvent::PublishCatalog).is_empty());
    // Its own UP (the same instance) is not a conflict.
    let other = core2(4);
    let own = other.startup(Vec::new());
    let up = sends(&own)
        .into_iter()
        .find(|m| m.kind == MessageKind::Up)
        .unwrap()
        .clone();
    assert!(other.on_message(up).is_empty());
}

#[test]
fn recover_falls_back_to_an_older_generation_when_the_newest_cannot_be_had() {
    let tag = |generation| crate::protocol::CatalogTag {
        home: 1,
        generation,
        size: 10,
        files: 1,
        hash: ChunkHash::of(&[generation as u8]),
    };
    let home = core2(1);
    let mut actions = home.start_recover(40, "/tmp/r".into()).unwrap();
    let (old, new) = (
        recover::catalog_file_id(&tag(1)),
        recover::catalog_file_id(&tag(2)),
    );
    home.on_message(msg2(
        5,
        MessageKind::CatalogHeld {
            file: old,
            tag: tag(1),
        },
    ));
    home.on_message(msg2(
        2,
        MessageKind::CatalogHeld {
            file: new,
            tag: tag(2),
        },
    ));
    // A forged tag naming another file is not believed.
    home.on_message(msg2(
        9,
        MessageKind::CatalogHeld {
            file: key(0).file,
            tag: tag(7),
        },
    ));
    let mut asked = Vec::new();
    while let Some((_, event)) = timers(&actions).pop() {
        actions = home.on_timer(event);
        asked.extend(sends(&actions).iter().filter_map(|m| match m.kind {
            MessageKind::Getchunk { chunk } => Some(chunk.file),
            _ => None,
        }));
        if asked.contains(&old) {
            break;
        }
    }
    // Generation 2 first (nobody delivers it), then generation 1.
    assert_eq!(asked.first(), Some(&new));
    assert!(asked.contains(&old), "{asked:?}");
    assert!(!asked.contains(&key(0).file));
}

// ---- self-healing: what a review found, kept as regressions ----

fn putchunk_deg(no: u32, degree: u8) -> MessageKind {
    MessageKind::Putchunk {
        chunk: key(no),
        degree,
        body: Bytes::copy_from_slice(b"abc"),
    }
}

/// `c` stores chunk 0 (degree `desired`) alone, from a 2.0 PUTCHUNK of `sender` with `lines`.
fn stored_alone(c: &Core, sender: PeerId, desired: u8, lines: Vec<String>) {
    let mut m = msg2(sender, putchunk_deg(0, desired));
    m.extra_lines = lines;
    let [(_, decide)] = timers(&c.on_message(m)).try_into().unwrap();
    let w = c.on_timer(decide);
    assert!(matches!(&w[..], [Action::WriteChunk { .. }]), "{w:?}");
    c.chunk_written(key(0), desired, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(c.state().stored.len(), 1);
}

fn core_fast(id: PeerId) -> Core {
    let mut cfg = Config::new(id, V2);
    cfg.seed = 11;
    cfg.announce_interval = Duration::from_secs(1);
    cfg.suspect_after = Duration::from_secs(3);
    cfg.repair_after = Duration::from_secs(2);
    Core::new(cfg, Metadata::default())
}

fn ticks_with_alive(c: &Core, alive: &[PeerId], n: usize) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..n {
        for &p in alive {
            c.on_message(msg2(p, MessageKind::Alive));
        }
        all.extend(c.on_timer(TimerEvent::Tick));
    }
    all
}

/// A HOLDS confirms a lower holder for a trim 2-2.4 s later; its REMOVED meanwhile withdraws
/// it, and the last copy stays.
#[test]
fn a_trim_after_holds_does_not_rely_on_a_holder_that_removed_its_copy_since() {
    let c = core2(5);
    stored_alone(&c, 9, 1, vec![]);
    let mut holds = msg2(
        2,
        MessageKind::Holds {
            file: key(0).file,
            chunks: vec![0],
        },
    );
    holds.extra_lines = vec!["ASK".into(), "INSTANCE 00000000000000aa".into()];
    let (_, check) = timers(&c.on_message(holds))
        .into_iter()
        .find(|(_, e)| matches!(e, TimerEvent::TrimConfirmed { .. }))
        .expect("a trim check");
    c.on_message(msg2(2, MessageKind::Removed { chunk: key(0) }));
    c.on_timer(check);
    assert_eq!(c.state().stored.len(), 1, "the last copy stays");
}

/// Peer `lower` evicts its copy of chunk 0: the copy trimmed here for it is taken back; the
/// second look scheduled then.
fn taken_back_by(c: &Core, lower: PeerId) -> TimerEvent {
    let back = c.on_message(msg2(lower, MessageKind::Removed { chunk: key(0) }));
    assert_eq!(c.state().stored.len(), 1, "taken back");
    timers(&back)
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| matches!(e, TimerEvent::TrimCheck { .. }))
        .expect("a second look")
}

/// A copy taken back because a lower holder evicted its own is looked at again, but not
/// trimmed for a holder whose REMOVED came while it was in the trash.
#[test]
fn a_copy_taken_back_is_not_trimmed_again_for_a_holder_that_trimmed_too() {
    let (c, _trimmed) = trim_after(5, 1, &[1, 3]);
    c.on_message(msg2(3, MessageKind::Removed { chunk: key(0) }));
    let recheck = taken_back_by(&c, 1);
    c.on_timer(recheck);
    assert_eq!(c.state().stored.len(), 1, "kept: no lower holder left");
}

/// A 2.0 re-backup names the chunk's home (0: unknown): its receivers never take the holder
/// that re-sent it for the home, and repair the chunk once the real home is not alive.
#[test]
fn a_rebackup_of_unknown_home_is_repaired_by_its_lowest_live_holder() {
    let c = core_fast(4);
    stored_alone(&c, 6, 3, vec!["HOME 0".into()]);
    c.on_message(msg2(6, MessageKind::Stored { chunk: key(0) }));
    assert!(!sent_putchunks(&ticks_with_alive(&c, &[6], 10)).is_empty());
    // A 1.0 PUTCHUNK names no home either.
    let c = core_fast(4);
    c.on_message(msg(6, putchunk_deg(0, 3)));
    c.chunk_written(key(0), 3, 3, Some(ChunkHash::of(b"abc")));
    assert_eq!(
        c.with_metadata(|m| m.stored_chunk(&key(0)).unwrap().home),
        None
    );
}

/// Resuming a backup does not take a chunk whose holders are all down for done.
#[test]
fn a_resumed_backup_sends_again_the_chunks_whose_holders_are_down() {
    let c = core_fast(1);
    let mut req = request(64_000, 1); // 2 chunks
    req.enhanced = true;
    c.start_backup(1, req.clone()).unwrap();
    for no in 0..2 {
        c.putchunk_read(1, key(no), vec![no as u8]).unwrap();
    }
    c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    c.backup_source_failed(1, "the client went away".into());
    ticks_with_alive(&c, &[3], 5);
    assert_eq!(c.state().backed_up[0].chunks[0].live, 0);
    let again = c.start_backup(2, req).unwrap();
    assert_eq!(sent_putchunks(&again), vec![0, 1]);
}

/// A copy taken back and trimmed again has a grace time of its own: the expiry of the first
/// trimming removes nothing.
#[test]
fn an_earlier_expiry_of_a_copy_trimmed_again_removes_nothing() {
    let (c, trimmed) = trim_after(5, 1, &[1, 3]);
    let first = expiry(&trimmed);
    let recheck = taken_back_by(&c, 1);
    let again = c.on_timer(recheck);
    assert!(c.state().stored.is_empty(), "trimmed again, for peer 3");
    assert!(
        c.on_timer(first).is_empty(),
        "the first grace is over, not this one"
    );
    assert_eq!(
        c.on_timer(expiry(&again)),
        vec![Action::RemoveChunk { chunk: key(0) }]
    );
}

/// A home that knows no live holder of a chunk (their STOREDs lost) asks any holder (REPAIR
/// naming 0) once `repair_after` passed, at most five times.
#[test]
fn a_home_that_knows_no_holder_asks_any_holder() {
    let c = core_fast(1);
    let mut req = request(10, 2);
    req.enhanced = true;
    c.start_backup(1, req).unwrap();
    c.putchunk_read(1, key(0), vec![0; 10]).unwrap();
    c.on_message(msg2(2, MessageKind::Stored { chunk: key(0) }));
    c.on_message(msg2(2, MessageKind::Removed { chunk: key(0) }));
    c.backup_source_failed(1, "over".into());
    let repairs: Vec<PeerId> = ticks_with_alive(&c, &[2], 200)
        .iter()
        .filter_map(|a| match a {
            Action::Send { message, .. } => match message.kind {
                MessageKind::Repair { by, .. } => Some(by),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(repairs, vec![0; 5]);
}

// ---- Per-sender budgets ----

/// Chunk `no` of a file of its own for each `f`.
fn key_in(f: u8, no: u32) -> ChunkKey {
    ChunkKey {
        file: FileId([f; 32]),
        no,
    }
}

/// `from` backs up `chunk` (10 bytes, degree 2) at `c`; true if `c` takes it (a write or a
/// store decision).
fn offer(c: &Core, from: PeerId, chunk: ChunkKey) -> bool {
    let put = MessageKind::Putchunk {
        chunk,
        degree: 2,
        body: Bytes::from_static(&[0; 10]),
    };
    !c.on_message(msg(from, put)).is_empty()
}

fn written(c: &Core, chunk: ChunkKey) {
    c.chunk_written(chunk, 2, 10, Some(ChunkHash::of(&[0; 10])));
}

#[test]
fn a_home_fills_at_most_its_share_of_a_peers_capacity() {
    let c = core(2);
    c.reclaim(100, false); // 50 bytes for each home (the default share, a half)
    let over = || c.counters.putchunks_over_quota.load(Ordering::Relaxed);
    // Home 1: five chunks of 10 bytes (those still being written count too), not a sixth.
    for no in 0..5 {
        assert!(offer(&c, 1, key_in(1, no)));
    }
    for no in 0..3 {
        written(&c, key_in(1, no));
    }
    assert!(!offer(&c, 1, key_in(1, 5)));
    assert_eq!(over(), 1);
    // A chunk it holds already is answered again (nothing more is stored).
    assert!(offer(&c, 1, key_in(1, 0)), "STORED again");
    assert_eq!(over(), 1);
    // Another home has its share.
    assert!(offer(&c, 3, key_in(3, 0)));
    // More capacity, a larger share.
    c.reclaim(200, false);
    assert!(offer(&c, 1, key_in(1, 5)));
    // A share of 1: one home may fill it all.
    let c = unshared(2);
    c.reclaim(100, false);
    for no in 0..10 {
        assert!(offer(&c, 1, key_in(1, no)));
    }
    assert!(!offer(&c, 1, key_in(1, 10)), "full");
    assert_eq!(c.counters.putchunks_over_quota.load(Ordering::Relaxed), 0);
}

#[test]
fn a_re_backup_naming_a_home_counts_against_that_home() {
    let c = core2(2);
    c.reclaim(20, false); // 10 bytes for each home
    let rebackup = |from: PeerId, chunk: ChunkKey, home: Option<PeerId>| {
        let mut m = msg2(
            from,
            MessageKind::Putchunk {
                chunk,
                degree: 2,
                body: Bytes::from_static(&[0; 10]),
            },
        );
        m.extra_lines = home.map(repair::home_line).into_iter().collect();
        let actions = c.on_message(m);
        // An enhanced storer decides after a delay.
        let decisions: Vec<Action> = timers(&actions)
            .into_iter()
            .flat_map(|(_, event)| c.on_timer(event))
            .collect();
        decisions
            .iter()
            .any(|a| matches!(a, Action::WriteChunk { .. }))
    };
    assert!(rebackup(4, key_in(1, 0), Some(1)));
    written(&c, key_in(1, 0));
    assert_eq!(c.with_metadata(|m| m.owner_footprint(1)), 10);
    // Home 1's share is used: neither another re-backup naming it nor home 1 itself stores.
    assert!(!rebackup(4, key_in(1, 1), Some(1)));
    assert!(!rebackup(1, key_in(1, 2), None));
    // The sender's own chunks (no HOME line: it is their home) have a share of their own.
    assert!(rebackup(4, key_in(4, 0), None));
    assert_eq!(c.counters.putchunks_over_quota.load(Ordering::Relaxed), 2);
}

/// A peer (9) holding 10-byte chunks of homes 1 (four, each also held by peer 5) and 3 (one
/// also held by peers 4 and 5, a surplus copy, and one also held by peer 4), 60 bytes.
fn two_homes(c: &Core) {
    for no in 0..4 {
        offer(c, 1, key_in(1, no));
        written(c, key_in(1, no));
        c.on_message(msg(
            5,
            MessageKind::Stored {
                chunk: key_in(1, no),
            },
        ));
    }
    for (no, others) in [(0, &[4, 5][..]), (1, &[4][..])] {
        offer(c, 3, key_in(3, no));
        written(c, key_in(3, no));
        for &o in others {
            c.on_message(msg(
                o,
                MessageKind::Stored {
                    chunk: key_in(3, no),
                },
            ));
        }
    }
}

#[test]
fn reclaim_evicts_the_chunks_of_a_home_over_its_share_before_surplus_copies() {
    let c = core(9);
    two_homes(&c);
    assert_eq!(c.with_metadata(|m| m.owner_footprint(1)), 40);
    let home = |evicted: &[ChunkKey]| -> Vec<u8> { evicted.iter().map(|k| k.file.0[0]).collect() };
    // 50 bytes: home 1's share is 25, it has 40: one of its chunks goes, not home 3's
    // surplus copy.
    let (done, _) = c.reclaim(50, false);
    assert_eq!(home(&done.evicted), vec![1]);
    // 30: home 1's share is 15, it has 30: two of its chunks go.
    let (done, _) = c.reclaim(30, false);
    assert_eq!(home(&done.evicted), vec![1, 1]);
    // 20: home 3 has 20, its share is 10: its surplus copy goes first.
    let (done, _) = c.reclaim(20, false);
    assert_eq!(done.evicted, vec![key_in(3, 0)]);
    // Without shares the order is as before: the surplus copy first, whoever's.
    let c = unshared(9);
    two_homes(&c);
    assert_eq!(c.reclaim(50, false).0.evicted, vec![key_in(3, 0)]);
}

/// A holder (id 2) of `n` chunks of `key(..)` (10 bytes each) that answers one requester at
/// most `budget` bytes of CHUNK a second.
fn budgeted_holder(n: u32, budget: u64) -> Core {
    let mut cfg = Config::new(2, Version::V1_0);
    cfg.seed = 7;
    cfg.reply_budget = budget;
    let c = Core::new(cfg, Metadata::default());
    for no in 0..n {
        offer(&c, 1, key(no));
        written(&c, key(no));
    }
    c
}

#[test]
fn a_requester_gets_chunk_replies_within_its_budget_and_a_repeat_is_answered_once() {
    let c = budgeted_holder(12, 100); // ten replies a second, one more each period
    let get = |from: PeerId, no: u32| {
        timers(&c.on_message(msg(from, MessageKind::Getchunk { chunk: key(no) })))
    };
    let over = || c.counters.getchunks_over_budget.load(Ordering::Relaxed);
    // Requester 1: ten replies, not an eleventh.
    let due: Vec<TimerEvent> = (0..10)
        .map(|no| {
            let [(_, event)] = get(1, no).try_into().unwrap();
            event
        })
        .collect();
    assert!(get(1, 10).is_empty());
    assert_eq!(over(), 1);
    // Another requester has a budget of its own (and the period timer runs already).
    assert!(
        c.on_message(msg(3, MessageKind::Getchunk { chunk: key(10) }))
            .iter()
            .all(|a| !matches!(
                a,
                Action::Schedule {
                    event: TimerEvent::BudgetPeriod,
                    ..
                }
            )),
        "scheduled once"
    );
    assert!(c.replying.contains_key(&key(10)), "answered");
    // A reply another holder's CHUNK made needless gives its bytes back.
    c.on_message(chunk_msg(4, 0, vec![0; 10]));
    assert!(c.on_timer(due[0].clone()).is_empty());
    assert_eq!(get(1, 11).len(), 1);
    assert!(get(1, 0).is_empty());
    assert_eq!(over(), 2);
    // A period later a tenth of the budget is back.
    c.on_timer(TimerEvent::BudgetPeriod);
    assert_eq!(get(1, 0).len(), 1);
    // Chunk 1's reply goes out; a while later (its budget refilled meanwhile) requester 1
    // asks for it again and is answered again.
    assert_eq!(c.on_timer(due[1].clone()).len(), 1);
    assert!(c.chunk_reply_due(key(1)));
    pass_repeat_window(&c);
    let [(_, again)] = get(1, 1).try_into().unwrap();
    assert_eq!(c.on_timer(again).len(), 1);
    assert!(c.chunk_reply_due(key(1)));
    // Asking for it again at once, it is not answered; another requester is.
    assert!(get(1, 1).is_empty(), "a repeat at once");
    assert_eq!(c.counters.getchunks_repeated.load(Ordering::Relaxed), 1);
    assert_eq!(get(3, 1).len(), 1, "another requester");
    assert!(c.chunk_reply_due(key(1)));
    // Four periods on it is still a repeat; five, and it is answered.
    for _ in 0..budget::REPEAT_PERIODS {
        c.on_timer(TimerEvent::BudgetPeriod);
    }
    assert!(get(1, 1).is_empty());
    c.on_timer(TimerEvent::BudgetPeriod);
    assert_eq!(get(1, 1).len(), 1);
    assert_eq!(over(), 2);
}

#[test]
fn rebackups_after_removeds_from_one_sender_wait_for_its_budget() {
    let n = budget::REBACKUPS_PER_SECOND as u32;
    let c = holder(n + 2, &[3]);
    // Chunk 1000 is held by peer 4 too, not by peer 3.
    offer(&c, 1, key(1000));
    written(&c, key(1000));
    c.on_message(msg(4, MessageKind::Stored { chunk: key(1000) }));
    // Peer 3 says REMOVED for each of its chunks: each falls below its degree.
    let checks: Vec<TimerEvent> = (0..n + 2)
        .flat_map(|no| timers(&c.on_message(msg(3, MessageKind::Removed { chunk: key(no) }))))
        .map(|(_, event)| event)
        .collect();
    assert_eq!(checks.len(), n as usize + 2);
    let over = || c.counters.rebackups_over_budget.load(Ordering::Relaxed);
    let mut periods = 0;
    for event in checks {
        periods += c
            .on_timer(event)
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Schedule {
                        event: TimerEvent::BudgetPeriod,
                        ..
                    }
                )
            })
            .count();
    }
    assert_eq!(periods, 1, "the period timer is started once");
    assert_eq!(
        c.backups.len(),
        n as usize,
        "a second's budget of re-backups"
    );
    assert_eq!(over(), 2);
    assert_eq!(c.watches.len(), 2, "the two others wait");
    // A REMOVED from another peer draws from its own budget.
    let [(_, check)] = timers(&c.on_message(msg(4, MessageKind::Removed { chunk: key(1000) })))
        .try_into()
        .unwrap();
    c.on_timer(check);
    assert_eq!(c.backups.len(), n as usize + 1);
    // One waiting chunk is back at its degree meanwhile; the other is re-backed up once the
    // budget refills.
    c.on_message(msg(5, MessageKind::Stored { chunk: key(n) }));
    let released = timers(&c.on_timer(TimerEvent::BudgetPeriod));
    assert_eq!(released.len(), 2);
    for (delay, event) in released {
        assert_eq!(delay, Duration::ZERO);
        c.on_timer(event);
    }
    assert_eq!(c.backups.len(), n as usize + 2);
    assert_eq!(over(), 2);
}

// Secure groups: reproductions of what the review found (each failed before its fix).

fn secure_core(id: PeerId) -> Core {
    let mut cfg = Config::new(id, V2);
    cfg.seed = 11;
    cfg.window = 2;
    cfg.restore_window = 2;
    cfg.restore_tcp = Some("127.0.0.1:4000".parse().unwrap());
    cfg.group_key = Some(std::sync::Arc::new(crate::secure::GroupKey::from_secret(
        &[1; 32],
    )));
    cfg.data_key = Some(std::sync::Arc::new(crate::secure::DataKey::from_secret(
        &[id as u8; 32],
        id,
    )));
    Core::new(cfg, Metadata::default())
}

/// Catalog generation `generation` of `home` (a 10-byte document).
fn catalog_tag(home: PeerId, generation: u64) -> crate::protocol::CatalogTag {
    crate::protocol::CatalogTag {
        home,
        generation,
        size: 10,
        files: 1,
        hash: ChunkHash::of(b"doc"),
    }
}

/// Stores a catalog chunk at `holder` as sent by `sender` with `tag`, under `file`.
fn store_catalog_chunk(
    holder: &Core,
    sender: PeerId,
    file: FileId,
    tag: crate::protocol::CatalogTag,
) {
    let mut put = msg2(
        sender,
        MessageKind::Putchunk {
            chunk: ChunkKey { file, no: 0 },
            degree: 1,
            body: Bytes::from_static(b"0123456789"),
        },
    );
    put.extra_lines = vec![crate::protocol::message::catalog_line(&tag)];
    let deferred = holder.on_message(put);
    for (_, ev) in timers(&deferred) {
        holder.on_timer(ev);
    }
    holder.chunk_written(
        ChunkKey { file, no: 0 },
        1,
        10,
        Some(ChunkHash::of(b"0123456789")),
    );
}

#[test]
fn a_members_newer_catalog_tag_drops_no_generation_in_a_secure_group() {
    let tag = catalog_tag;
    let holder = secure_core(5);
    // Home 1's real generation 3 (named by its delete secret; opaque to the holder).
    let real = FileId([0x11; 32]);
    store_catalog_chunk(&holder, 1, real, tag(1, 3));
    assert!(holder.with_metadata(|m| m.stored_chunk(&ChunkKey { file: real, no: 0 }).is_some()));
    // A rogue member (sender 7) sends one PUTCHUNK of junk under a fresh id, tagged as home
    // 1's generation 1000. No DELETE, no proof.
    let junk = FileId([0x77; 32]);
    store_catalog_chunk(&holder, 7, junk, tag(1, 1000));
    assert!(
        holder.with_metadata(|m| m.stored_chunk(&ChunkKey { file: real, no: 0 }).is_some()),
        "home 1's real catalog generation was dropped without its proof"
    );
}

#[test]
fn a_member_cannot_relabel_a_stored_catalog_generation() {
    let tag = catalog_tag;
    let holder = secure_core(5);
    let real = FileId([0x11; 32]);
    store_catalog_chunk(&holder, 1, real, tag(1, 3));
    // A member re-sends a PUTCHUNK of the same file id with another tag.
    store_catalog_chunk(&holder, 7, real, tag(9, 0));
    assert_eq!(
        holder.with_metadata(|m| m.catalog_tag(&real)),
        Some(tag(1, 3)),
        "relabelled"
    );
}

#[test]
fn a_file_backed_up_again_after_its_delete_is_not_deleted_by_the_revealed_proof() {
    let c = secure_core(1);
    let mut req = request(10, 1);
    req.enhanced = true;
    c.start_backup(1, req.clone()).unwrap();
    let file = c
        .file_of_base(std::path::Path::new("/src/file"), key(0).file)
        .unwrap();
    let chunk = ChunkKey { file, no: 0 };
    c.putchunk_read(1, chunk, vec![0; 10]).unwrap();
    c.on_message(msg2(2, MessageKind::Stored { chunk }));
    assert_eq!(c.instances(), 0, "backup over");
    let actions = c
        .start_delete(2, std::path::Path::new("/src/file"), true)
        .unwrap();
    let proof = sends(&actions)
        .iter()
        .find(|m| matches!(m.kind, MessageKind::Delete { .. }))
        .unwrap()
        .extra_lines
        .clone();
    // The unchanged file is backed up again: another registration, another id, which the
    // proof a member saw on MC does not prove.
    c.start_backup(3, req).unwrap();
    let again = c
        .file_of_base(std::path::Path::new("/src/file"), key(0).file)
        .unwrap();
    assert_ne!(again, file);
    assert!(crate::secure::ownership::proves(&file, &proof));
    assert!(
        !crate::secure::ownership::proves(&again, &proof),
        "a revealed proof deletes the re-backup"
    );
}

#[test]
fn a_pending_deletion_keeps_its_proof_past_the_tombstone_limit() {
    let c = secure_core(1);
    let file_n = |n: u32| {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        FileId(id)
    };
    // Peer 3 is an enhanced peer (it spoke 2.0), then goes down.
    c.on_message(msg2(3, MessageKind::Alive));
    let n = metadata::TOMBSTONES_KEPT as u32 + 1;
    let mut first = None;
    for i in 0..n {
        let path = PathBuf::from(format!("/src/f{i}"));
        let req = BackupRequest {
            path: path.clone(),
            file: file_n(i),
            size: 1,
            degree: 1,
            enhanced: true,
            attrs: Default::default(),
            keep: 1,
        };
        c.start_backup(10 + u64::from(i), req).unwrap();
        let owned = c.file_of_base(&path, file_n(i)).unwrap();
        first.get_or_insert(owned);
        let chunk = ChunkKey { file: owned, no: 0 };
        c.putchunk_read(10 + u64::from(i), chunk, vec![1]).unwrap();
        c.on_message(msg2(2, MessageKind::Stored { chunk }));
        c.start_delete(100_000 + u64::from(i), &path, true).unwrap();
    }
    let first = first.unwrap();
    assert!(c.with_metadata(|m| m.pending_deletes().contains_key(&first)));
    // Peer 3 comes back: the DELETE of the first file goes out without its proof.
    let actions = c.on_message(msg2(3, MessageKind::Up));
    let del = sends(&actions)
        .into_iter()
        .find(|m| m.kind == MessageKind::Delete { file: first })
        .expect("a DELETE of the first file");
    assert!(
        crate::secure::ownership::proves(&first, &del.extra_lines),
        "sent without its proof: {:?}",
        del.extra_lines
    );
}
