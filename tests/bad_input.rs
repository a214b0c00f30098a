//! Bad input: wrong command lines give clear errors and exit codes; malformed datagrams on
//! every channel crash nothing, store nothing and write nothing outside a peer's tree.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, bin, wait_until};

const HEX: &str = "6f1ed002ab5595859014ebf0951522d9a3f0c3b4d5e6f708192a3b4c5d6e7f80";

#[test]
fn testapp_rejects_bad_command_lines() {
    let c = Cluster::start(1);
    let ap = c.ap(1);
    let file = c.make_file("f", 10);
    let f = file.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&[&ap, "FROBNICATE"], 2, "unknown operation"),
        (&[&ap, "BACKUP", f], 2, "BACKUP takes"),
        (&[&ap, "BACKUP", f, "0"], 2, "degree must be a digit 1-9"),
        (&[&ap, "BACKUP", f, "10"], 2, "degree must be a digit 1-9"),
        (&[&ap, "BACKUP", f, "x"], 2, "degree must be a digit 1-9"),
        (&[&ap, "BACKUP", "/no/such/file", "1"], 1, "/no/such/file"),
        (&[&ap, "STATE", "extra"], 2, "STATE takes"),
        (&[&ap, "RECLAIM", "lots"], 2, "RECLAIM takes a number"),
        (&[&ap, "RESTORE"], 2, "RESTORE takes"),
        (
            &["nobody-here", "STATE"],
            1,
            "cannot reach a peer at access point nobody-here",
        ),
        (&["../x", "STATE"], 2, "access point"),
        (
            &[&ap, "BACKUPENH", f, "1"],
            1,
            "BACKUPENH needs a peer started with an enhanced protocol",
        ),
    ];
    for (args, code, text) in cases {
        let run = c.testapp(args);
        assert_eq!(run.code, *code, "{args:?}: stderr {}", run.stderr);
        assert!(
            run.stderr.contains(text),
            "{args:?}: stderr {:?} lacks {text:?}",
            run.stderr
        );
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{args:?}: one line, got {:?}",
            run.stderr
        );
    }
    // Operation names are case-insensitive; --json errors are one JSON document too.
    c.testapp(&[&ap, "state"]).ok();
    let run = c.testapp(&["--json", &ap, "BACKUP", "/no/such/file", "1"]);
    assert_eq!(run.json()["ok"], false);
    assert!(
        run.json()["error"]
            .as_str()
            .unwrap()
            .contains("/no/such/file")
    );
}

#[test]
fn peer_rejects_bad_arguments_with_exit_2() {
    let c = Cluster::empty();
    let good = c.peer_args(1);
    let with = |i: usize, v: &str| {
        let mut a = good.clone();
        a[i] = v.to_string();
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (good[..8].to_vec(), "required"),
        (with(0, "3.0"), "not supported"),
        (with(0, "1"), "version"),
        (with(1, "0"), "peer id must be a positive integer"),
        (with(1, "-3"), "peer id must be a positive integer"),
        (with(1, "x"), "peer id must be a positive integer"),
        (with(3, "10.0.0.1"), "not a multicast address"),
        (with(3, "999.1.1.1"), "not an IPv4 address"),
        (with(4, "0"), "port must be a number from 1 to 65535"),
        (with(6, "70000"), "port must be a number from 1 to 65535"),
        (with(2, "a/b"), "access point"),
    ];
    for (args, text) in cases {
        let out = Command::new(bin("peer"))
            .args(&args)
            .arg("--dir")
            .arg(c.dir.path().join("never"))
            .env("DBS_RUNTIME_DIR", &c.runtime)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(text), "{args:?}: {stderr:?} lacks {text:?}");
    }
    assert!(
        !c.dir.path().join("never").exists(),
        "a refused peer created its tree"
    );
}

#[test]
fn second_peer_on_a_live_access_point_is_refused() {
    let mut c = Cluster::start(1);
    let mut args = c.peer_args(9);
    args[2] = c.ap(1);
    let out = Command::new(bin("peer"))
        .args(&args)
        .arg("--dir")
        .arg(c.dir.path().join("p9"))
        .env("DBS_RUNTIME_DIR", &c.runtime)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert!(c.alive(1));
    c.testapp(&[&c.ap(1), "STATE"]).ok();
}

/// Datagrams no peer may act on.
fn hostile() -> Vec<(usize, Vec<u8>)> {
    let mut v: Vec<(usize, Vec<u8>)> = Vec::new();
    let body = vec![b'A'; 100];
    let with_body = |h: String, b: &[u8]| {
        let mut d = h.into_bytes();
        d.extend_from_slice(b);
        d
    };
    for ch in 0..3 {
        v.push((ch, common::random_bytes(1000, ch as u64)));
        v.push((ch, common::random_bytes(65_000, 99 + ch as u64)));
        v.push((ch, Vec::new()));
        v.push((ch, b"PUTCHUNK 1.0 7".to_vec()));
        v.push((ch, format!("PUTCHUNK 1.0 7 {HEX} 0 1 \r\n").into_bytes()));
    }
    let bad_headers = [
        "PUTCHUNK 1.0 7 ../../../../../../../../../../../../../../../../../../../../../tmp/x 0 1 \r\n\r\n".to_string(),
        "PUTCHUNK 1.0 7 ../.. 0 1 \r\n\r\n".to_string(),
        format!("PUTCHUNK 1.0 7 {HEX} -1 1 \r\n\r\n"),
        format!("PUTCHUNK 1.0 7 {HEX} 1000000 1 \r\n\r\n"),
        format!("PUTCHUNK 1.0 7 {HEX} 0 0 \r\n\r\n"),
        format!("PUTCHUNK 1.0 7 {HEX} 0 12 \r\n\r\n"),
        format!("PUTCHUNK 1.0 -7 {HEX} 0 1 \r\n\r\n"),
        format!("PUTCHUNK 1,0 7 {HEX} 0 1 \r\n\r\n"),
        format!("PUTCHUNK 1.0 7 {} 0 1 \r\n\r\n", &HEX[..63]),
    ];
    for h in bad_headers {
        v.push((1, with_body(h, &body)));
    }
    // Oversized body on the data channels.
    v.push((
        1,
        with_body(
            format!("PUTCHUNK 1.0 7 {HEX} 0 1 \r\n\r\n"),
            &vec![0; 64_001],
        ),
    ));
    v.push((
        2,
        with_body(format!("CHUNK 1.0 7 {HEX} 0 \r\n\r\n"), &vec![0; 64_001]),
    ));
    // A valid PUTCHUNK on the wrong channel (MC, MDR) must not be stored either.
    v.push((
        0,
        with_body(format!("PUTCHUNK 1.0 7 {HEX} 0 1 \r\n\r\n"), &body),
    ));
    v.push((
        2,
        with_body(format!("PUTCHUNK 1.0 7 {HEX} 0 1 \r\n\r\n"), &body),
    ));
    // Control messages with bodies or bad fields.
    v.push((
        0,
        with_body(format!("DELETE 1.0 7 {HEX} \r\n\r\n"), b"junk"),
    ));
    v.push((0, b"DELETE 1.0 7 ../.. \r\n\r\n".to_vec()));
    v.push((0, format!("STORED 1.0 7 {HEX} -1 \r\n\r\n").into_bytes()));
    v.push((0, format!("REMOVED 1.0 7 {HEX} \r\n\r\n").into_bytes()));
    v.push((
        0,
        format!("GETCHUNK 1.0 7 {HEX} 99999999 \r\n\r\n").into_bytes(),
    ));
    v.push((0, format!("DELETED 1.0 7 {HEX} \r\n\r\n").into_bytes()));
    v.push((0, b"UP 1.0 7 \r\n\r\n".to_vec()));
    v
}

#[test]
fn malformed_datagrams_crash_nothing_and_store_nothing() {
    let mut c = Cluster::start(3);
    let outside_before = std::fs::read_dir(c.dir.path()).unwrap().count();
    let datagrams = hostile();
    for (ch, d) in &datagrams {
        c.inject(*ch, d);
    }
    // Every peer counts the drops (proof they were received and refused), and stays up.
    // Every datagram is received and all but two are refused as malformed: UP and DELETED
    // are well-formed enhanced messages, which a 1.0 peer ignores.
    let total = datagrams.len() as u64;
    let counts = |id: u32| {
        let k = c.counters(id);
        (
            k["received"].as_u64().unwrap(),
            k["malformed"].as_u64().unwrap(),
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || (1..=3)
            .all(|id| counts(id) == (total, total - 2))),
        "want (received, malformed) = ({total}, {}), got {:?}",
        total - 2,
        (1..=3).map(counts).collect::<Vec<_>>()
    );
    for id in 1..=3 {
        assert!(c.alive(id), "peer {id} died");
        let st = c.state(id);
        assert!(
            st["stored"].as_array().unwrap().is_empty(),
            "peer {id} stored something"
        );
        assert_eq!(st["used_kb"], 0.0);
        let chunks = std::fs::read_dir(c.peer_dir(id).join("chunks"))
            .unwrap()
            .count();
        assert_eq!(chunks, 0, "peer {id} has chunk directories");
    }
    assert_eq!(
        std::fs::read_dir(c.dir.path()).unwrap().count(),
        outside_before,
        "something was written outside the trees"
    );
    assert!(!std::path::Path::new("/tmp/x").exists());
    // And they still work.
    let f = c.make_file("after", 1000);
    c.testapp(&[&c.ap(1), "BACKUP", f.to_str().unwrap(), "2"])
        .ok();
}

#[test]
fn tcp_access_point_works() {
    let mut c = Cluster::empty();
    let ap = format!("127.0.0.1:{}", c.tcp_port());
    c.spawn_at(1, &ap, &[]);
    let st = c.testapp(&["--json", &ap, "STATE"]).ok().json();
    assert_eq!(st["peer_id"], 1);
    assert_eq!(st["protocol_version"], "1.0");
}

#[test]
fn garbage_requests_on_the_access_point_get_errors_and_the_socket_is_private() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let c = Cluster::start(1);
    let sock = c.runtime.join("peer1.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&c.runtime).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let ask = |bytes: &[u8]| -> String {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    for bad in [
        &b"hello\n"[..],
        b"{\"op\":\"format\"}\n",
        b"{\"op\":\"backup\",\"path\":1}\n",
        &[0xff; 100],
    ] {
        let mut bytes = bad.to_vec();
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        let reply: serde_json::Value = serde_json::from_str(&ask(&bytes)).unwrap();
        assert_eq!(reply["type"], "error", "{reply}");
    }
    let reply: serde_json::Value = serde_json::from_str(&ask(&vec![b'x'; 70_000])).unwrap();
    assert!(
        reply["message"].as_str().unwrap().contains("longer than"),
        "{reply}"
    );
    c.testapp(&[&c.ap(1), "STATE"]).ok();
}

/// 100,000 random and mutated datagrams on all three channels: the peers stay up, store
/// nothing (no mutation that is still a valid PUTCHUNK is sent), write nothing outside their
/// trees, and their memory stays flat.
#[test]
fn a_hundred_thousand_hostile_datagrams_change_nothing() {
    use dbs::protocol::{ChunkKey, Message, MessageKind, Version};
    let mut c = Cluster::start(3);
    let outside_before = std::fs::read_dir(c.dir.path()).unwrap().count();
    let rss_before: Vec<u64> = (1..=3).map(|id| c.rss_kb(id)).collect();
    let chunk = ChunkKey {
        file: HEX.parse().unwrap(),
        no: 3,
    };
    let valid: Vec<(usize, Vec<u8>)> = vec![
        (
            1,
            Message::new(
                Version::V1_0,
                9,
                MessageKind::Putchunk {
                    chunk,
                    degree: 2,
                    body: vec![7; 1000].into(),
                },
            )
            .encode(),
        ),
        (
            0,
            Message::new(Version::V1_0, 9, MessageKind::Stored { chunk }).encode(),
        ),
        (
            0,
            Message::new(Version::V1_0, 9, MessageKind::Getchunk { chunk }).encode(),
        ),
        (
            2,
            Message::new(
                Version::V1_0,
                9,
                MessageKind::Chunk {
                    chunk,
                    body: vec![1; 500].into(),
                },
            )
            .encode(),
        ),
        (
            0,
            Message::new(Version::V1_0, 9, MessageKind::Delete { file: chunk.file }).encode(),
        ),
        (
            0,
            Message::new(Version::V1_0, 9, MessageKind::Removed { chunk }).encode(),
        ),
        (0, Message::new(Version::V2_0, 9, MessageKind::Up).encode()),
    ];
    let mut rng = fastrand::Rng::with_seed(2026);
    let socket = common::sender();
    let mut sent = 0;
    while sent < 100_000 {
        let (ch, mut d) = if rng.u8(..) < 40 {
            (
                rng.usize(..3),
                common::random_bytes(rng.usize(..2000), rng.u64(..)),
            )
        } else {
            valid[rng.usize(..valid.len())].clone()
        };
        for _ in 0..rng.usize(1..4) {
            if d.is_empty() {
                break;
            }
            let i = rng.usize(..d.len());
            match rng.u8(..4) {
                0 => d[i] = rng.u8(..),
                1 => d.truncate(i),
                2 => d.insert(i, rng.u8(..)),
                _ => {
                    d.remove(i);
                }
            }
        }
        // A mutation that still is a valid PUTCHUNK would rightly be stored: skip those.
        if matches!(
            Message::parse(&d),
            Ok(Message {
                kind: MessageKind::Putchunk { .. },
                ..
            })
        ) {
            continue;
        }
        let _ = socket.send_to(&d, c.channels[ch]);
        sent += 1;
        if sent % 500 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // paced: ~250k datagrams/s at most
        }
    }
    // Every datagram was received or dropped by the kernel; wait for the peers to drain them.
    let settled =
        |c: &Cluster, id| c.counters(id)["instances"] == 0 && c.counters(id)["timers"] == 0;
    assert!(wait_until(Duration::from_secs(30), || (1..=3)
        .all(|id| settled(&c, id))));
    for id in 1..=3u32 {
        assert!(c.alive(id), "peer {id} died");
        let st = c.state(id);
        assert!(
            st["stored"].as_array().unwrap().is_empty(),
            "peer {id} stored something"
        );
        assert_eq!(
            std::fs::read_dir(c.peer_dir(id).join("chunks"))
                .unwrap()
                .count(),
            0
        );
        let k = c.counters(id);
        assert!(k["malformed"].as_u64().unwrap() > 10_000, "peer {id}: {k}");
        let (before, after) = (rss_before[id as usize - 1], c.rss_kb(id));
        assert!(
            after < before + 16 * 1024,
            "peer {id} memory grew from {before} KiB to {after} KiB"
        );
    }
    assert_eq!(
        std::fs::read_dir(c.dir.path()).unwrap().count(),
        outside_before
    );
    let f = c.make_file("after", 1000);
    c.testapp(&[&c.ap(1), "BACKUP", f.to_str().unwrap(), "2"])
        .ok();
}

#[test]
fn a_half_open_client_blocks_nobody_and_is_dropped() {
    use std::io::{Read, Write};
    let c = Cluster::start(1);
    let sock = c.runtime.join("peer1.sock");
    let mut idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    idle.write_all(b"{\"op\":\"sta").unwrap(); // half a request, then nothing
    // Other clients are served meanwhile.
    for _ in 0..5 {
        c.testapp(&[&c.ap(1), "STATE"]).ok();
    }
    // The peer gives up on the silent client (10 s) and closes the connection.
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "connection not closed"
    );
}
