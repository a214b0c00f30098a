//! Crashes and full disks: what a SIGKILL at the worst moment, or a disk that refuses writes,
//! may and may not lose.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, wait_until};

const K: usize = 64_000;

fn stored_count(c: &Cluster, id: u32) -> usize {
    c.state(id)["stored"].as_array().unwrap().len()
}

fn home_chunks_at_degree(c: &Cluster, degree: u64) -> usize {
    let home = c.state(1);
    home["backed_up"][0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ch| ch["perceived"].as_u64().unwrap() >= degree)
        .count()
}

/// Every chunk file of `file_id` in the tree at `tree` holds exactly the source's bytes;
/// returns how many there are.
fn chunk_files_match(tree: &Path, file_id: &str, source: &Path) -> usize {
    let bytes = std::fs::read(source).unwrap();
    let files: Vec<_> = std::fs::read_dir(tree.join("chunks").join(file_id))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for f in &files {
        let no: usize = f.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let want = &bytes[no * K..((no + 1) * K).min(bytes.len())];
        assert!(
            std::fs::read(f).unwrap() == want,
            "{} is not the source's chunk",
            f.display()
        );
    }
    files.len()
}

#[test]
fn a_killed_initiator_resumes_its_backup_without_resending_finished_chunks() {
    let mut c = Cluster::start(4);
    let path = c.make_file("resumable", 12_000_000);
    let p = path.to_str().unwrap().to_string();
    let first = c.testapp_in_background(&[&c.ap(1), "BACKUP", &p, "2"]);
    assert!(wait_until(Duration::from_secs(30), || stored_count(&c, 2) >= 40));
    c.kill(1);
    let out = first.join().unwrap();
    assert_ne!(out.code, 0, "the interrupted backup did not succeed");
    c.spawn(1, &[]);
    // Let the holders' last STOREDs (up to 400 ms late) reach the restarted home first.
    let quiet = |id| c.counters(id)["timers"] == 0;
    assert!(wait_until(Duration::from_secs(10), || [2, 3, 4]
        .into_iter()
        .all(quiet)));
    let total = 12_000_000 / K + 1;
    let done = home_chunks_at_degree(&c, 2);
    assert!(
        done > 0 && done < total,
        "{done} of {total} chunks at degree after the kill"
    );
    let run = c.testapp(&["--json", &c.ap(1), "BACKUP", &p, "2"]).ok();
    assert_eq!(run.json()["short"], serde_json::json!([]));
    let launched = c.counters(1)["putchunk_launches"].as_u64().unwrap() as usize;
    assert_eq!(
        launched,
        total - done,
        "only the chunks below their degree are sent again"
    );
    assert_eq!(home_chunks_at_degree(&c, 2), total);
}

#[test]
fn a_holder_killed_while_writing_serves_no_partial_chunk_after_restart() {
    let mut c = Cluster::start(4);
    let path = c.make_file("torn", 10_000_000);
    let p = path.to_str().unwrap().to_string();
    let backup = c.testapp_in_background(&["--json", &c.ap(1), "BACKUP", &p, "2"]);
    assert!(wait_until(Duration::from_secs(30), || stored_count(&c, 2) >= 20));
    c.kill(2);
    let doc = backup.join().unwrap().ok().json();
    let file_id = doc["file_id"].as_str().unwrap().to_string();
    c.spawn(2, &[]);
    // Whatever peer 2 kept is complete and correct, and its records match its files.
    assert_eq!(
        std::fs::read_dir(c.peer_dir(2).join("tmp"))
            .unwrap()
            .count(),
        0
    );
    let kept = chunk_files_match(&c.peer_dir(2), &file_id, &path);
    assert_eq!(
        stored_count(&c, 2),
        kept,
        "STATE lists exactly the chunk files on disk"
    );
    assert!(kept >= 20);
    // And it serves them: with the other holders gone, exactly the chunks it kept come back
    // (each verified against its hash); the others are reported missing.
    c.kill(3);
    c.kill(4);
    let run = c.testapp(&["--json", &c.ap(1), "RESTORE", &p]);
    let total = 10_000_000 / K + 1;
    let missing = run.json()["missing"].as_array().map_or(0, Vec::len);
    assert_eq!(missing, total - kept, "{}", run.stdout);
    assert_eq!(c.counters(1)["bad_bodies"], 0);
}

#[test]
fn a_restore_survives_a_holder_killed_in_the_middle() {
    let mut c = Cluster::start(4);
    let path = c.make_file("steady", 15_000_000);
    let p = path.to_str().unwrap().to_string();
    c.testapp(&[&c.ap(1), "BACKUP", &p, "2"]).ok();
    let restore = c.testapp_in_background(&["--json", &c.ap(1), "RESTORE", &p]);
    c.kill(3);
    let doc = restore.join().unwrap().ok().json();
    let dest = doc["restored_to"].as_str().unwrap();
    assert!(std::fs::read(dest).unwrap() == std::fs::read(&path).unwrap());
}

#[test]
fn a_peer_whose_disk_is_full_keeps_running_and_reports_it() {
    let mut c = Cluster::empty();
    c.spawn(1, &[]);
    c.spawn(3, &[]);
    // Peer 2's tree is a 400 KB tmpfs in its own mount namespace: a few chunks fit, then every
    // write fails with ENOSPC.
    let dir = c.peer_dir(2);
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = format!(
        "exec unshare -m --propagation private sh -c 'mount -t tmpfs -o size=400k tmpfs {} && exec \"$@\"' sh \"$@\"",
        dir.display()
    );
    c.spawn_wrapped(2, &wrapper, &[]);
    let path = c.make_file("big", 40 * K);
    let run = c
        .testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "1"])
        .ok();
    assert_eq!(
        run.json()["short"],
        serde_json::json!([]),
        "the degree is reached elsewhere"
    );
    assert!(c.alive(2), "the full peer keeps running");
    let k = c.counters(2);
    assert!(k["disk_errors"].as_u64().unwrap() > 0, "{k}");
    let text = c.testapp(&[&c.ap(2), "STATE"]).ok().stdout;
    assert!(
        text.contains("Disk errors:") && text.contains("No space left"),
        "{text}"
    );
    assert!(c.log(2).contains("No space left on device"));
    // What it did store is recorded and intact (its tree, seen from its mount namespace).
    let st = c.state(2);
    let file_id = run.json()["file_id"].as_str().unwrap().to_string();
    let tree = Path::new(&format!("/proc/{}/root", c.pid(2))).join(dir.strip_prefix("/").unwrap());
    let kept = chunk_files_match(&tree, &file_id, &path);
    assert!(kept > 0, "some chunks fit before the disk was full");
    assert_eq!(st["stored"].as_array().unwrap().len(), kept);
}
