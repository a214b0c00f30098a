//! VERIFY on real peers: holders prove they have each chunk (CHECK / CHECKED) without moving
//! a body; a corrupted copy, a missing one and a peer that is down are found and the chunks
//! named; `--read-data` reads everything back and writes nothing; 1.0 holders are unconfirmed.

mod common;

use std::time::Duration;

use common::{Cluster, wait_until};
use serde_json::Value;

/// Chunks of 64,000 bytes in the test file.
const CHUNKS: u64 = 4;

fn verify(c: &Cluster, extra: &[&str]) -> (i32, Value) {
    let ap = c.ap(1);
    let mut args = vec!["--json", ap.as_str(), "VERIFY"];
    args.extend_from_slice(extra);
    let run = c.testapp(&args);
    (run.code, run.json())
}

/// The challenge report of the one file in a VERIFY document.
fn challenge(doc: &Value) -> Value {
    doc["files"][0]["challenge"].clone()
}

/// The numbers of the chunks a report lists under `key` (below, unconfirmed).
fn nos(report: &Value, key: &str) -> Vec<u64> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["no"].as_u64().unwrap())
        .collect()
}

#[test]
fn verify_finds_corrupted_missing_and_unreachable_copies_and_read_data_writes_nothing() {
    let mut c = Cluster::empty();
    for id in 1..=3 {
        c.spawn_version(id, "2.0", &[]);
    }
    let path = c.make_file("doc", (CHUNKS as usize - 1) * 64_000 + 10);
    let p = path.to_str().unwrap();
    let file_id = c
        .testapp(&["--json", &c.ap(1), "BACKUPENH", p, "2"])
        .ok()
        .json()["file_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Every chunk at peers 2 and 3: proven at degree 2; reading it all back writes nothing.
    let (code, doc) = verify(&c, &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(challenge(&doc)["verified"], CHUNKS, "{doc}");
    assert_eq!(challenge(&doc)["fresh"], true);
    let (code, doc) = verify(&c, &[p, "--read-data"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["files"][0]["read_data"], "ok", "{doc}");
    let restored = c.peer_dir(1).join("restored");
    assert!(!restored.exists() || std::fs::read_dir(&restored).unwrap().next().is_none());

    // Peer 3 goes down (nobody can repair a copy now); at peer 2, chunk 0 is corrupted and
    // chunk 1's file is gone.
    c.kill(3);
    let chunk = |no: u64| {
        c.peer_dir(2)
            .join("chunks")
            .join(&file_id)
            .join(no.to_string())
    };
    let mut body = std::fs::read(chunk(0)).unwrap();
    body[100] ^= 0xff;
    std::fs::write(chunk(0), body).unwrap();
    std::fs::remove_file(chunk(1)).unwrap();

    let (code, doc) = verify(&c, &[]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["kind"], "incomplete");
    let report = challenge(&doc);
    assert_eq!(report["verified"], 0, "{doc}");
    assert_eq!(
        nos(&report, "below"),
        (0..CHUNKS).collect::<Vec<_>>(),
        "{doc}"
    );
    for finding in report["below"].as_array().unwrap() {
        let no = finding["no"].as_u64().unwrap();
        let proven: Vec<u64> = serde_json::from_value(finding["proven"].clone()).unwrap();
        // The damaged copies prove nothing (peer 2 dropped them); the others are proven at 2.
        assert_eq!(
            proven,
            if no < 2 { vec![] } else { vec![2] },
            "chunk {no}: {doc}"
        );
        assert!(
            finding["silent"].as_array().unwrap().contains(&3.into()),
            "peer 3 is down: {finding}"
        );
    }
    assert_eq!(report["fresh"], true, "a new nonce each time");
    assert!(
        c.log(2).contains("is corrupt"),
        "the holder noticed its bad copy"
    );

    // Reading back now fails on the chunks no live peer has.
    let (code, doc) = verify(&c, &["--read-data"]);
    assert_eq!(code, 1, "{doc}");
    let read = &doc["files"][0]["read_data"];
    assert!(
        read["message"].as_str().unwrap().contains("chunk(s) 0, 1"),
        "{doc}"
    );
}

#[test]
fn verify_on_1_0_holders_is_unconfirmed_and_a_1_0_peer_reads_data_back() {
    let mut c = Cluster::empty();
    c.spawn_version(1, "2.0", &[]);
    c.spawn(2, &[]);
    c.spawn(3, &[]);
    let path = c.make_file("plain", 70_000);
    let p = path.to_str().unwrap();
    c.testapp(&[&c.ap(1), "BACKUP", p, "2"]).ok();
    // Peers 2 and 3 run 1.0: they cannot prove anything, but hold every chunk.
    let (code, doc) = verify(&c, &[p]);
    assert_eq!(code, 0, "{doc}");
    let report = challenge(&doc);
    assert_eq!(report["verified"], 0);
    assert_eq!(nos(&report, "unconfirmed"), vec![0, 1], "{doc}");
    assert_eq!(
        report["unconfirmed"][0]["unverified"],
        serde_json::json!([2, 3])
    );

    // A 1.0 home cannot challenge, but reads its data back.
    let q = c.make_file("other", 1_000);
    let q = q.to_str().unwrap();
    c.testapp(&[&c.ap(2), "BACKUP", q, "1"]).ok();
    let run = c.testapp(&["--json", &c.ap(2), "VERIFY"]);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert_eq!(run.json()["kind"], "unsupported");
    let run = c.testapp(&["--json", &c.ap(2), "VERIFY", "--read-data"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.json()["files"][0]["read_data"], "ok");
    assert!(wait_until(
        Duration::from_secs(5),
        || c.counters(2)["instances"] == 0
    ));
}
