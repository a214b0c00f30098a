//! End to end: restore (verified, with holders down or corrupt), space reclaim with
//! re-replication, and peers that survive SIGKILL.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, wait_until};

const K: usize = 64_000;

fn backup(c: &Cluster, id: u32, path: &Path, degree: u32) -> String {
    let run = c
        .testapp(&[
            "--json",
            &c.ap(id),
            "BACKUP",
            path.to_str().unwrap(),
            &degree.to_string(),
        ])
        .ok();
    run.json()["file_id"].as_str().unwrap().to_string()
}

/// Restores `path` at peer `id`, checks it is byte-identical, and returns where it went.
fn restore_identical(c: &Cluster, id: u32, path: &Path) -> PathBuf {
    // A copy restored before would make this restore a no-op: every call really restores.
    let _ = std::fs::remove_file(
        c.peer_dir(id)
            .join("restored")
            .join(path.file_name().unwrap()),
    );
    let run = c
        .testapp(&["--json", &c.ap(id), "RESTORE", path.to_str().unwrap()])
        .ok();
    let doc = run.json();
    let dest = PathBuf::from(doc["restored_to"].as_str().expect("restored_to"));
    assert_eq!(
        dest,
        c.peer_dir(id)
            .join("restored")
            .join(path.file_name().unwrap())
    );
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(path).unwrap(),
        "{} differs",
        dest.display()
    );
    dest
}

#[test]
fn restores_are_byte_identical_for_every_size_and_initiator() {
    let c = Cluster::start(4);
    for (i, len) in [0, 1, K, 2 * K, 20_000_000].into_iter().enumerate() {
        let home = 1 + (i as u32 % 2);
        let path = c.make_file(&format!("r{i}"), len);
        backup(&c, home, &path, 2);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        restore_identical(&c, home, &path);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before,
            "original touched"
        );
    }
    // Restoring again replaces the restored file; nothing is left in the peer's tmp/.
    let path = c.dir.path().join("r1");
    restore_identical(&c, 2, &path);
    assert_eq!(
        std::fs::read_dir(c.peer_dir(2).join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // A file this peer did not back up: refused.
    let run = c.testapp(&["--json", &c.ap(3), "RESTORE", path.to_str().unwrap()]);
    assert_eq!(run.code, 3, "{} {}", run.stdout, run.stderr);
    assert_eq!(run.json()["kind"], "not_backed_up", "{}", run.stdout);
    let run = c.testapp(&[&c.ap(3), "RESTORE", path.to_str().unwrap()]);
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains("not backed up by this peer"),
        "{}",
        run.stderr
    );
    c.assert_idle(&[1, 2, 3, 4]);
    assert_eq!(c.counters(1)["bad_bodies"], 0);
}

#[test]
fn restores_and_a_backup_run_at_once_on_one_peer() {
    let c = Cluster::start(3);
    let a = c.make_file("a", 2_000_000);
    let b = c.make_file("b", 1_500_000);
    let fresh = c.make_file("fresh", 1_000_000);
    backup(&c, 1, &a, 2);
    backup(&c, 1, &b, 2);
    std::thread::scope(|s| {
        let ra = s.spawn(|| restore_identical(&c, 1, &a));
        let rb = s.spawn(|| restore_identical(&c, 1, &b));
        let bk = s.spawn(|| backup(&c, 1, &fresh, 2));
        ra.join().unwrap();
        rb.join().unwrap();
        bk.join().unwrap();
    });
    restore_identical(&c, 1, &fresh);
    c.assert_idle(&[1, 2, 3]);
    assert_eq!(c.counters(1)["bad_bodies"], 0);
}

#[test]
fn restore_works_with_one_of_two_holders_down() {
    let mut c = Cluster::start(3);
    let path = c.make_file("half", 5 * K + 17);
    backup(&c, 1, &path, 2);
    c.kill(3);
    restore_identical(&c, 1, &path);
}

#[test]
fn a_corrupt_copy_at_one_holder_is_never_restored() {
    let c = Cluster::start(3);
    let path = c.make_file("rot", 3 * K);
    let file_id = backup(&c, 1, &path, 2);
    // Flip a byte of every chunk at peer 2 (all but the empty last one); peer 3 keeps good
    // copies.
    let mut flipped = Vec::new();
    for f in c.chunk_files(2, &file_id) {
        let mut bytes = std::fs::read(&f).unwrap();
        if let Some(b) = bytes.first_mut() {
            *b ^= 0xff;
            std::fs::write(&f, bytes).unwrap();
            flipped.push(f.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert_eq!(flipped, ["0", "1", "2"]);
    // Every restore is byte-identical. Peer 2 reads a copy only when its CHUNK would go out
    // before peer 3's (which silences it), so restore until it has come to each corrupt copy:
    // it must find it corrupt, drop it and announce REMOVED, never send it.
    let caught = |no: &String| {
        c.log(2)
            .contains(&format!("stored chunk {file_id}#{no} is corrupt"))
    };
    let mut restores = 0;
    let all_caught = wait_until(Duration::from_secs(60), || {
        restore_identical(&c, 1, &path);
        restores += 1;
        flipped.iter().all(caught)
    });
    assert!(
        all_caught,
        "after {restores} restores, peer 2 found corrupt only {:?} of chunks {flipped:?}",
        flipped.iter().filter(|no| caught(no)).collect::<Vec<_>>()
    );
    assert_eq!(
        c.counters(1)["bad_bodies"],
        0,
        "a corrupt body was sent to the restorer"
    );
    // No corrupt file is left at peer 2 (after REMOVED, peer 3 restores the degree, maybe onto
    // peer 2 again, with the right bytes).
    let source = std::fs::read(&path).unwrap();
    let corrupt_at_2 = || {
        c.chunk_files(2, &file_id)
            .into_iter()
            .filter(|f| {
                let no: usize = f.file_name().unwrap().to_str().unwrap().parse().unwrap();
                let want = &source[no * K..((no + 1) * K).min(source.len())];
                // (A copy may be removed while this looks.)
                std::fs::read(f).is_ok_and(|bytes| bytes != want)
            })
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || corrupt_at_2().is_empty()),
        "corrupt copies left at peer 2: {:?}",
        corrupt_at_2()
    );
}

#[test]
fn restore_of_a_chunk_nobody_holds_fails_naming_it() {
    let c = Cluster::start(3);
    let path = c.make_file("holey", 3 * K);
    let file_id = backup(&c, 1, &path, 2);
    for id in [2, 3] {
        std::fs::remove_file(c.peer_dir(id).join("chunks").join(&file_id).join("1")).unwrap();
    }
    let run = c.testapp(&["--json", &c.ap(1), "RESTORE", path.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["kind"], "incomplete", "{doc}");
    assert_eq!(doc["missing"], serde_json::json!([1]));
    let run = c.testapp(&[&c.ap(1), "RESTORE", path.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("chunk(s) 1"), "{}", run.stderr);
    assert!(
        !c.peer_dir(1).join("restored").join("holey").exists(),
        "a partial file under the final name"
    );
    assert_eq!(
        std::fs::read_dir(c.peer_dir(1).join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // The holders noticed the missing file when asked and announced REMOVED: the home knows.
    let home = c.state(1);
    assert_eq!(home["backed_up"][0]["chunks"][1]["perceived"], 0);
}

#[test]
fn reclaim_zero_moves_every_chunk_to_other_peers() {
    let mut c = Cluster::start(3);
    let path = c.make_file("moving", 4 * K + 1);
    let file_id = backup(&c, 1, &path, 2);
    c.spawn(4, &[]); // a peer with room that holds nothing yet
    let run = c.testapp(&["--json", &c.ap(2), "RECLAIM", "0"]).ok();
    assert_eq!(run.json()["evicted"], 5);
    assert_eq!(run.json()["used_kb"], 0.0);
    assert!(
        wait_until(Duration::from_secs(15), || {
            let h = c.holders(&[3, 4], &file_id);
            h.len() == 5 && h.iter().all(|h| h.len() >= 2)
        }),
        "chunks did not return to degree 2 on peers 3 and 4: {:?}",
        c.holders(&[2, 3, 4], &file_id)
    );
    let st = c.state(2);
    assert!(st["stored"].as_array().unwrap().is_empty());
    assert_eq!(st["capacity_kb"], 0);
    assert!(c.chunk_files(2, &file_id).is_empty());
    restore_identical(&c, 1, &path);
}

#[test]
fn partial_reclaim_fits_the_limit_and_a_full_peer_stays_out() {
    let c = Cluster::start(3);
    let first = c.make_file("first", 10 * K);
    backup(&c, 1, &first, 2);
    // 640 KB stored; a limit of 300 KB keeps 4 full chunks (256 KB) and the empty last one,
    // leaving 43,999 bytes of room (an empty chunk counts as one byte).
    let run = c.testapp(&["--json", &c.ap(2), "RECLAIM", "300"]).ok();
    assert_eq!(run.json()["evicted"], 6);
    let st = c.state(2);
    assert_eq!(st["used_kb"], 256.0, "{st}");
    assert_eq!(st["capacity_kb"], 300);

    // No chunk of a new file fits on peer 2 now: they go to peer 3 alone, and peer 2 sends
    // no STORED (the home perceives exactly one holder per chunk).
    let second = c.make_file("second", 3 * K + 50_000);
    let file_id = backup(&c, 1, &second, 1);
    assert!(c.chunk_files(2, &file_id).is_empty());
    let entry = common::backed_up_entry(&c.state(1), &file_id);
    for ch in entry["chunks"].as_array().unwrap() {
        assert_eq!(ch["perceived"], 1, "{entry}");
    }
}

#[test]
fn a_killed_holder_comes_back_with_its_state_and_serves_alone() {
    let mut c = Cluster::start(3);
    let path = c.make_file("durable", 6 * K + 5);
    backup(&c, 1, &path, 2);
    c.assert_idle(&[1, 2, 3]);
    c.wait_saved(2);
    let before = c.state(2);
    c.kill(2);
    c.spawn(2, &[]);
    assert_eq!(c.state(2), before);
    c.kill(3);
    restore_identical(&c, 1, &path);
    // The home survives SIGKILL too, with its chunk hashes (the restore verifies with them).
    c.wait_saved(1);
    let home = c.state(1);
    c.kill(1);
    c.spawn(1, &[]);
    assert_eq!(c.state(1), home);
    restore_identical(&c, 1, &path);
}
