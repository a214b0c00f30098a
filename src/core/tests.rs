//! Deterministic tests of the protocol core: messages and timer events in, actions out.

use std::path::PathBuf;
use std::time::Duration;

use super::backup::BackupRequest;
use super::*;
use crate::protocol::{ChunkKey, FileId, Message, MessageKind, Version};

fn core(id: PeerId) -> Core {
    let mut cfg = Config::new(id, Version::V1_0);
    cfg.seed = 7;
    cfg.window = 2;
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
        body: body.to_vec(),
    }
}

fn request(size: u64, degree: u8) -> BackupRequest {
    BackupRequest {
        path: PathBuf::from("/src/file"),
        file: key(0).file,
        size,
        degree,
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

fn timers(actions: &[Action]) -> Vec<(Duration, TimerEvent)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Schedule { delay, event } => Some((*delay, event.clone())),
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
        actions,
        vec![Action::WriteChunk {
            chunk: key(0),
            desired: 2,
            body: b"abc".to_vec()
        }]
    );
    // While the write is under way a repeated PUTCHUNK does nothing.
    assert!(c.on_message(msg(1, putchunk(0, b"abc"))).is_empty());
    let after = c.chunk_written(key(0), 2, 3, true);
    let [(delay, event)] = timers(&after).try_into().unwrap();
    assert!(delay <= Duration::from_millis(400));
    assert_eq!(event, TimerEvent::SendStored { chunk: key(0) });
    let sent = c.on_timer(event);
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
    // A held chunk is answered again, without a second write.
    let again = c.on_message(msg(3, putchunk(0, b"abc")));
    assert!(matches!(
        again[..],
        [Action::Schedule {
            event: TimerEvent::SendStored { .. },
            ..
        }]
    ));
    assert_eq!(c.state().stored[0].perceived, 1);
}

#[test]
fn own_messages_and_own_files_are_ignored() {
    let c = core(1);
    assert!(c.on_message(msg(1, putchunk(0, b"x"))).is_empty());
    c.start_backup(1, request(10, 1)).unwrap();
    // Another peer re-backing up a chunk of our own file: never stored here.
    assert!(c.on_message(msg(5, putchunk(0, b"x"))).is_empty());
}

#[test]
fn capacity_is_never_exceeded() {
    let c = core(2);
    c.set_capacity(5);
    assert!(c.on_message(msg(1, putchunk(0, b"123456"))).is_empty());
    assert_eq!(c.on_message(msg(1, putchunk(1, b"12345"))).len(), 1);
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
fn window_bounds_chunks_in_flight() {
    let c = core(1);
    let first = c.start_backup(1, request(64_000 * 4, 1)).unwrap();
    assert_eq!(sent_putchunks(&first), vec![0, 1], "window of 2");
    let next = c.on_message(msg(2, MessageKind::Stored { chunk: key(1) }));
    assert_eq!(sent_putchunks(&next), vec![2]);
}

#[test]
fn delete_removes_every_chunk_of_the_file() {
    let c = core(2);
    for no in 0..3 {
        c.on_message(msg(1, putchunk(no, b"x")));
        c.chunk_written(key(no), 2, 1, true);
    }
    // A write still under way when DELETE arrives is removed when it finishes.
    c.on_message(msg(1, putchunk(3, b"x")));
    let actions = c.on_message(msg(1, MessageKind::Delete { file: key(0).file }));
    assert_eq!(actions.len(), 3);
    assert!(c.state().stored.is_empty());
    assert_eq!(
        c.chunk_written(key(3), 2, 1, true),
        vec![Action::RemoveChunk { chunk: key(3) }]
    );
}

#[test]
fn delete_is_sent_three_times_then_reported() {
    let c = core(1);
    let first = c.start_backup(1, request(5, 1)).unwrap();
    let (_, _) = timers(&first)[0].clone();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let mut actions = c.start_delete(2, "/src/file".as_ref()).unwrap();
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
    assert!(c.start_delete(3, "/src/file".as_ref()).is_err());
}

#[test]
fn backing_up_a_changed_file_deletes_the_old_version() {
    let c = core(1);
    c.start_backup(1, request(5, 1)).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let mut changed = request(6, 1);
    changed.file = FileId([0xcd; 32]);
    let actions = c.start_backup(2, changed).unwrap();
    assert!(
        actions.iter().any(|a| matches!(a,
        Action::Send { message, .. } if message.kind == MessageKind::Delete { file: key(0).file }))
    );
    assert_eq!(c.state().backed_up.len(), 1);
}

#[test]
fn rebackup_of_an_unchanged_file_skips_chunks_at_their_degree() {
    let c = core(1);
    c.start_backup(1, request(64_000, 1)).unwrap();
    c.on_message(msg(2, MessageKind::Stored { chunk: key(0) }));
    let finished = c.on_message(msg(2, MessageKind::Stored { chunk: key(1) }));
    assert_eq!(done(&finished), Some(vec![]));
    c.on_message(msg(2, MessageKind::Removed { chunk: key(1) }));
    let again = c.start_backup(2, request(64_000, 1)).unwrap();
    assert_eq!(sent_putchunks(&again), vec![1]);
}

#[test]
fn removed_lowers_the_perceived_degree() {
    let c = core(2);
    c.on_message(msg(1, putchunk(0, b"x")));
    c.chunk_written(key(0), 2, 1, true);
    c.on_message(msg(3, MessageKind::Stored { chunk: key(0) }));
    assert_eq!(c.state().stored[0].perceived, 2);
    c.on_message(msg(3, MessageKind::Removed { chunk: key(0) }));
    assert_eq!(c.state().stored[0].perceived, 1);
}
