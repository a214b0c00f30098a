//! End to end: backup, delete and STATE with real peers on loopback multicast.

mod common;

use std::time::Duration;

use common::{Cluster, wait_until};
use serde_json::Value;

const K: usize = 64_000;

fn file_id_of(run: &common::Run) -> String {
    run.json()["file_id"].as_str().unwrap().to_string()
}

/// Backs up `len` bytes at `degree` from peer 1 and checks every chunk against the source.
fn backup_and_check(c: &Cluster, others: &[u32], name: &str, len: usize, degree: usize) -> String {
    let path = c.make_file(name, len);
    let run = c
        .testapp(&[
            "--json",
            &c.ap(1),
            "BACKUP",
            path.to_str().unwrap(),
            &degree.to_string(),
        ])
        .ok();
    let doc = run.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["short"], Value::Array(vec![]));
    let file_id = file_id_of(&run);
    let chunks = len / K + 1;
    assert_eq!(doc["chunks"], chunks);
    // Every chunk held by at least `degree` other peers, never by the initiator.
    let holders = c.holders(others, &file_id);
    assert_eq!(holders.len(), chunks, "chunks seen stored for {name}");
    for (no, h) in holders.iter().enumerate() {
        assert!(
            h.len() >= degree,
            "{name} chunk {no} held by {h:?}, want >= {degree}"
        );
    }
    assert!(
        c.state(1)["stored"].as_array().unwrap().is_empty(),
        "initiator stores nothing"
    );
    // Chunk bytes equal the source slices; the last chunk is strictly shorter than 64,000.
    let source = std::fs::read(&path).unwrap();
    for &id in others {
        for f in c.chunk_files(id, &file_id) {
            let no: usize = f.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let body = std::fs::read(&f).unwrap();
            let want = &source[no * K..((no + 1) * K).min(len)];
            assert!(
                body == want,
                "{name} chunk {no} at peer {id} differs from the source"
            );
        }
    }
    // The home's view: each chunk's perceived degree reaches the desired one.
    let entry = common::backed_up_entry(&c.state(1), &file_id);
    assert_eq!(entry["desired"], degree);
    assert_eq!(
        entry["path"],
        std::fs::canonicalize(&path).unwrap().to_str().unwrap()
    );
    for ch in entry["chunks"].as_array().unwrap() {
        assert!(ch["perceived"].as_u64().unwrap() >= degree as u64);
    }
    file_id
}

#[test]
fn backups_of_every_size_reach_their_degree_with_exact_chunks() {
    let c = Cluster::start(4);
    let others = [2, 3, 4];
    backup_and_check(&c, &others, "empty", 0, 1);
    backup_and_check(&c, &others, "one", 1, 2);
    backup_and_check(&c, &others, "exact", K, 3);
    backup_and_check(&c, &others, "two", 2 * K, 2);
    backup_and_check(&c, &others, "five-mb", 5_000_000 + 123, 2);
    // Nothing is left in progress once the STORED delays are over.
    c.assert_idle(&[1, 2, 3, 4]);
}

#[test]
fn delete_removes_every_chunk_everywhere_and_keeps_the_original() {
    let c = Cluster::start(3);
    let file_id = backup_and_check(&c, &[2, 3], "doomed", 3 * K + 10, 2);
    let path = c.dir.path().join("doomed");
    let before = std::fs::read(&path).unwrap();
    let run = c
        .testapp(&["--json", &c.ap(1), "DELETE", path.to_str().unwrap()])
        .ok();
    assert_eq!(run.json()["file_id"], file_id.as_str());
    assert!(
        wait_until(Duration::from_secs(5), || [2, 3]
            .iter()
            .all(|&id| c.chunk_files(id, &file_id).is_empty()
                && c.state(id)["stored"].as_array().unwrap().is_empty())),
        "chunks left after DELETE"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "DELETE touched the original"
    );
    assert!(
        c.state(1)["backed_up"].as_array().unwrap().is_empty(),
        "home forgets the file"
    );
    let again = c.testapp(&["--json", &c.ap(1), "DELETE", path.to_str().unwrap()]);
    assert_eq!(again.code, 3, "refused: {} {}", again.stdout, again.stderr);
    assert_eq!(again.json()["kind"], "not_backed_up", "{}", again.stdout);
    let again = c.testapp(&[&c.ap(1), "DELETE", path.to_str().unwrap()]);
    assert_eq!(again.code, 3);
    assert!(again.stderr.contains("not backed up"), "{}", again.stderr);
}

#[test]
fn backing_up_a_changed_file_deletes_the_old_version() {
    let c = Cluster::start(3);
    let old = backup_and_check(&c, &[2, 3], "changing", 2 * K, 1);
    let path = c.dir.path().join("changing");
    std::fs::write(&path, b"new contents").unwrap();
    let run = c
        .testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "2"])
        .ok();
    let new = file_id_of(&run);
    assert_ne!(old, new);
    assert!(
        wait_until(Duration::from_secs(5), || [2, 3]
            .iter()
            .all(|&id| c.chunk_files(id, &old).is_empty())),
        "old version's chunks left"
    );
    let home = c.state(1);
    let files = home["backed_up"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["file_id"], new.as_str());
}

#[test]
fn state_survives_a_clean_restart() {
    let mut c = Cluster::start(3);
    let file_id = backup_and_check(&c, &[2, 3], "kept", K + 5, 2);
    let before: Vec<Value> = (1..=3).map(|id| c.state(id)).collect();
    for id in 1..=3 {
        assert_eq!(c.stop(id), Some(0), "SIGTERM ends the peer with exit 0");
    }
    for id in 1..=3 {
        c.spawn(id, &[]);
    }
    let after: Vec<Value> = (1..=3).map(|id| c.state(id)).collect();
    assert_eq!(before, after);
    assert_eq!(c.holders(&[2, 3], &file_id).len(), 2);
}

#[test]
fn several_clients_back_up_at_once_on_one_peer() {
    let c = Cluster::start(3);
    let files: Vec<_> = (0..3)
        .map(|i| c.make_file(&format!("f{i}"), 300_000 + i))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                s.spawn(|| c.testapp(&["--json", &c.ap(1), "BACKUP", f.to_str().unwrap(), "2"]))
            })
            .collect();
        for h in handles {
            let run = h.join().unwrap().ok();
            let doc = run.json();
            let holders = c.holders(&[2, 3], doc["file_id"].as_str().unwrap());
            assert_eq!(holders.len(), 5);
            assert!(holders.iter().all(|h| h.len() == 2));
        }
    });
    assert_eq!(c.state(1)["backed_up"].as_array().unwrap().len(), 3);
}

#[test]
fn a_full_peer_stores_nothing_and_the_degree_is_reached_elsewhere() {
    let mut c = Cluster::empty();
    c.spawn(1, &[]);
    c.spawn(2, &["--capacity", "0"]);
    c.spawn(3, &[]);
    c.spawn(4, &[]);
    let file_id = backup_and_check(&c, &[2, 3, 4], "big", 2 * K, 2);
    let st = c.state(2);
    assert!(st["stored"].as_array().unwrap().is_empty());
    assert_eq!(st["capacity_kb"], 0);
    assert!(c.chunk_files(2, &file_id).is_empty());
}

#[test]
fn a_backup_nobody_stores_stops_after_a_few_chunks_and_says_why() {
    // Alone on the groups: nobody answers. Each chunk would take 31 s to give up, a few at a
    // time; the backup stops once four chunks got no STORED at all.
    let c = Cluster::start(1);
    let path = c.make_file("unheard", 40 * 64_000);
    let run = c.testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "1"]);
    assert_eq!(run.code, 1, "stdout {} stderr {}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["kind"], "incomplete", "{doc}");
    assert_eq!(doc["short"].as_array().unwrap().len(), 41, "{doc}");
    let message = doc["message"].as_str().unwrap();
    assert!(
        message.contains("no peer stored any chunk")
            && message.contains("(41 of 41 chunks not backed up)"),
        "{message}"
    );
    assert_eq!(c.counters(1)["instances"], 0, "nothing left in progress");
}

#[test]
fn backup_fails_clearly_when_too_few_peers_answer() {
    let c = Cluster::start(2);
    let path = c.make_file("lonely", 10);
    let run = c.testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "2"]);
    assert_eq!(run.code, 1, "stdout {} stderr {}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["kind"], "incomplete", "{doc}");
    assert_eq!(doc["short"], serde_json::json!([0]), "{doc}");
    let message = doc["message"].as_str().unwrap();
    assert!(
        message.contains("below the desired degree") && message.contains(": 0"),
        "{message}"
    );
}

#[test]
fn every_client_operation_is_logged_when_it_starts_and_ends() {
    let c = Cluster::start(3);
    let file = c.make_file("logged.bin", 3 * K + 5);
    let f = file.to_str().unwrap();
    let ap = c.ap(1);
    c.testapp(&[&ap, "BACKUP", f, "2"]).ok();
    c.testapp(&[&ap, "RESTORE", f]).ok();
    c.testapp(&[&ap, "DELETE", f]).ok();
    let refused = c.testapp(&[&ap, "RESTORE", f]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    c.testapp(&[&c.ap(2), "RECLAIM", "0"]).ok();
    let log = c.log(1);
    let canonical = file.canonicalize().unwrap();
    let path = canonical.display();
    for line in [
        format!("BACKUP {path} at degree 2: started"),
        "BACKUP done in".to_string(),
        format!("backed up {path}: 4 chunks at the desired degree"),
        format!("RESTORE {path}: started"),
        "RESTORE done in".to_string(),
        format!("DELETE {path}: started"),
        "DELETE done in".to_string(),
        "RESTORE failed in".to_string(),
    ] {
        let found = log
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains(&line));
        assert!(found, "no info line with {line:?} in:\n{log}");
    }
    let reclaim = c.log(2);
    assert!(
        reclaim
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("RECLAIM done in")),
        "{reclaim}"
    );
}
