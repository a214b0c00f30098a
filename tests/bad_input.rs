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
    // (arguments, exit code, kind in --json, text the one line on stderr names)
    let cases: &[(&[&str], i32, &str, &str)] = &[
        (&[&ap, "FROBNICATE"], 2, "usage", "unknown operation"),
        (&[&ap, "BACKUP", f], 2, "usage", "BACKUP takes"),
        (
            &[&ap, "BACKUP", f, "0"],
            2,
            "usage",
            "degree must be a digit 1-9",
        ),
        (
            &[&ap, "BACKUP", f, "10"],
            2,
            "usage",
            "degree must be a digit 1-9",
        ),
        (
            &[&ap, "BACKUP", f, "x"],
            2,
            "usage",
            "degree must be a digit 1-9",
        ),
        (
            &[&ap, "BACKUP", "/no/such/file", "1"],
            1,
            "source_unreadable",
            "/no/such/file",
        ),
        (&[&ap, "STATE", "extra"], 2, "usage", "STATE takes"),
        (
            &[&ap, "RECLAIM", "lots"],
            2,
            "usage",
            "RECLAIM takes a number",
        ),
        (&[&ap, "RESTORE"], 2, "usage", "RESTORE takes"),
        (
            &["nobody-here", "STATE"],
            4,
            "unreachable",
            "cannot reach a peer at access point nobody-here",
        ),
        (&["../x", "STATE"], 2, "usage", "access point"),
        (
            &[&ap, "BACKUPENH", f, "1"],
            3,
            "unsupported",
            "BACKUPENH needs a peer started with an enhanced protocol",
        ),
    ];
    for (args, code, kind, text) in cases {
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
        // --json: the same exit code, and one JSON document naming the kind.
        let json = c.testapp(&[&["--json"], *args].concat());
        assert_eq!(json.code, *code, "--json {args:?}: stderr {}", json.stderr);
        let doc = json.json();
        assert_eq!(doc["ok"], false, "--json {args:?}: {doc}");
        assert_eq!(doc["kind"], *kind, "--json {args:?}: {doc}");
        assert!(
            doc["error"].as_str().unwrap().contains(text),
            "--json {args:?}: {doc} lacks {text:?}"
        );
    }
    // Operation names are case-insensitive.
    c.testapp(&[&ap, "state"]).ok();
}

/// The exit codes (and `--json` kinds) tell a refusal (3) from a peer nobody answers at (4)
/// and from an operation that failed (1).
#[test]
fn refusals_unreachable_peers_and_lost_connections_have_their_own_exit_codes() {
    let mut c = Cluster::start(1);
    let ap = c.ap(1);
    let never = c.make_file("never", 10);
    let never = never.to_str().unwrap();
    let refused = |args: &[&str], kind: &str, text: &str| {
        let run = c.testapp(&[&["--json", &ap], args].concat());
        assert_eq!(run.code, 3, "{args:?}: {} {}", run.stdout, run.stderr);
        let doc = run.json();
        assert_eq!(doc["ok"], false, "{args:?}: {doc}");
        assert_eq!(doc["kind"], kind, "{args:?}: {doc}");
        assert!(
            doc["error"].as_str().unwrap().contains(text),
            "{args:?}: {doc} lacks {text:?}"
        );
    };
    refused(&["RESTORE", never], "not_backed_up", "not backed up");
    refused(&["DELETE", never], "not_backed_up", "not backed up");

    // Alone on its groups, the peer backs up a 40-chunk file for half a minute: meanwhile
    // another BACKUP or a DELETE of that file is refused as busy.
    let long = c.make_file("long", 40 * 64_000);
    let long = long.to_str().unwrap();
    let first = c.testapp_in_background(&["--json", &ap, "BACKUP", long, "1"]);
    assert!(
        wait_until(
            Duration::from_secs(10),
            || c.counters(1)["putchunk_launches"].as_u64().unwrap() > 0
        ),
        "the backup did not start"
    );
    refused(&["BACKUP", long, "1"], "busy", "already running");
    refused(&["DELETE", long], "busy", "already running");

    // The peer dies under the running backup: the outcome is unknown (1, disconnected).
    c.kill(1);
    let lost = first.join().unwrap();
    assert_eq!(lost.code, 1, "{} {}", lost.stdout, lost.stderr);
    assert_eq!(lost.json()["kind"], "disconnected", "{}", lost.stdout);

    // Nobody answers: at a socket the killed peer left behind, at a name never used, at a TCP
    // port nobody listens on (4, unreachable).
    assert!(c.runtime.join("peer1.sock").exists());
    let port = c.tcp_port().to_string();
    for ap in [ap.as_str(), "nobody-here", port.as_str()] {
        let run = c.testapp(&["--json", ap, "STATE"]);
        assert_eq!(run.code, 4, "{ap}: {} {}", run.stdout, run.stderr);
        let doc = run.json();
        assert_eq!(doc["kind"], "unreachable", "{ap}: {doc}");
        assert!(
            doc["error"]
                .as_str()
                .unwrap()
                .contains("cannot reach a peer"),
            "{ap}: {doc}"
        );
        let run = c.testapp(&[ap, "RESTORE", never]);
        assert_eq!(run.code, 4, "{ap}: {}", run.stderr);
    }
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
    let log_level = |v: &str| {
        let mut a = good.clone();
        a.extend(["--log-level".to_string(), v.to_string()]);
        a
    };
    let opt = |name: &str, v: &str| {
        let mut a = good.clone();
        a.extend([name.to_string(), v.to_string()]);
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
        (with(2, "0.0.0.0:8123"), "--allow-remote"),
        (log_level("loud"), "\"loud\" is not a log level"),
        (log_level("warning"), "\"warning\" is not a log level"),
        (
            log_level("info,dbs=chatty"),
            "\"chatty\" is not a log level",
        ),
        (
            opt("--suspect-after", "1"),
            "at least three announce intervals",
        ),
        (opt("--announce-interval", "0"), "at least 0.05 s"),
        (opt("--repair-after", "soon"), "not a number of seconds"),
        (
            opt("--repair-after", "1e30"),
            "not a number of seconds from 0 to 86400",
        ),
        (opt("--repair-concurrency", "0"), "repair-concurrency"),
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

/// `--max-share` takes a fraction above 0 and at most 1, `--reply-budget` a number of MB/s:
/// anything else is a usage error (exit 2) naming the flag, and no tree is created.
#[test]
fn peer_refuses_budget_flags_out_of_range() {
    let c = Cluster::empty();
    let cases = [
        ("--max-share", "0", "not a fraction above 0 and at most 1"),
        ("--max-share", "1.5", "not a fraction above 0 and at most 1"),
        ("--max-share", "-0.5", "--max-share"),
        ("--max-share", "NaN", "not a fraction above 0 and at most 1"),
        (
            "--max-share",
            "half",
            "not a fraction above 0 and at most 1",
        ),
        ("--max-share", "", "not a fraction above 0 and at most 1"),
        ("--reply-budget", "fast", "--reply-budget"),
        ("--reply-budget", "-1", "--reply-budget"),
    ];
    for (flag, value, text) in cases {
        let out = Command::new(bin("peer"))
            .args(c.peer_args(1))
            .arg("--dir")
            .arg(c.dir.path().join("never"))
            .arg(format!("{flag}={value}"))
            .env("DBS_RUNTIME_DIR", &c.runtime)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(text),
            "{flag} {value:?}: {stderr:?} lacks {flag} or {text:?}"
        );
    }
    assert!(
        !c.dir.path().join("never").exists(),
        "a refused peer created its tree"
    );
}

/// A PUTCHUNK flood under one forged id fills at most that id's share of a peer (half its
/// capacity by default): a home's backup afterwards still finds room, and a RECLAIM evicts
/// the flood's chunks, not the home's.
#[test]
fn a_putchunk_flood_under_one_id_takes_at_most_its_share() {
    use dbs::protocol::{ChunkKey, Message, MessageKind, Version};
    let mut c = Cluster::empty();
    c.spawn(1, &[]);
    c.spawn(2, &["--capacity", "1000"]); // 1000 KB: 500 KB for each home
    let file = HEX.parse().unwrap();
    let socket = common::sender();
    // 20 chunks of 64 KB (1.28 MB) from "peer 99", sent twice (a datagram lost is sent again).
    for _ in 0..2 {
        for no in 0..20 {
            let d = Message::new(
                Version::V1_0,
                99,
                MessageKind::Putchunk {
                    chunk: ChunkKey { file, no },
                    degree: 1,
                    body: vec![no as u8; 64_000].into(),
                },
            )
            .encode();
            socket.send_to(&d, c.channels[1]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let stored = |c: &Cluster, file_id: &str| {
        c.state(2)["stored"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["file_id"] == file_id)
            .count()
    };
    let over = |c: &Cluster| c.counters(2)["putchunks_over_quota"].as_u64().unwrap();
    // Seven chunks (448 KB) fit in the share; the thirteen others are refused (twice, but for
    // any datagram lost).
    assert!(
        wait_until(Duration::from_secs(10), || stored(&c, HEX) == 7
            && over(&c) >= 13
            && c.counters(2)["instances"] == 0),
        "stored {} chunks, refused {} PUTCHUNKs: {}",
        stored(&c, HEX),
        over(&c),
        c.state(2)
    );
    assert_eq!(c.state(2)["used_kb"], 448.0);
    // Peer 1's backup (5 chunks, 256 KB) finds room on peer 2, its only other peer.
    let path = c.make_file("mine", 4 * 64_000 + 1);
    let run = c
        .testapp(&["--json", &c.ap(1), "BACKUP", path.to_str().unwrap(), "1"])
        .ok();
    assert_eq!(run.json()["short"], serde_json::json!([]));
    let mine = run.json()["file_id"].as_str().unwrap().to_string();
    assert_eq!(stored(&c, &mine), 5);
    // RECLAIM to 600 KB (a share of 300 KB): the flood's chunks go first, the home's stay.
    let run = c.testapp(&["--json", &c.ap(2), "RECLAIM", "600"]).ok();
    assert_eq!(run.json()["evicted"], 2, "{}", run.stdout);
    assert_eq!(stored(&c, &mine), 5);
    assert_eq!(stored(&c, HEX), 5);
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

#[test]
fn the_course_script_passes_options_to_the_testapp() {
    let c = Cluster::start(1);
    let ap = c.ap(1);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test.sh");
    let run = |args: &[&str]| {
        Command::new(&script)
            .args(args)
            .env("DBS_TESTAPP", bin("testapp"))
            .env("DBS_RUNTIME_DIR", &c.runtime)
            .output()
            .unwrap()
    };
    for args in [&["--json", &ap, "STATE"][..], &[&ap, "STATE", "--json"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON document");
        assert_eq!(doc["ok"], true, "{args:?}: {doc}");
    }
    let out = run(&["--json", &ap, "STATE", "extra"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STATE takes 0 operand(s), got 1"));
    // Options with a value keep it: the peer is asked (and has nothing backed up), not a usage
    // error about two operands.
    let out = run(&[&ap, "RESTORE", "--to", "/tmp/somewhere", "/no/such/file"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = run(&["--json", &ap, "LIST"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(&[&ap, "VERIFY", "a", "b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VERIFY takes 0 or 1 operand(s), got 2"));
}

#[test]
fn second_peer_on_a_live_tree_is_refused_naming_the_first() {
    let mut c = Cluster::start(1);
    // Another access point, the same tree.
    let out = Command::new(bin("peer"))
        .args(c.peer_args(9))
        .arg("--dir")
        .arg(c.peer_dir(1))
        .env("DBS_RUNTIME_DIR", &c.runtime)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let named = format!("is in use by another peer process (pid {})", c.pid(1));
    assert!(stderr.contains(&named), "{stderr:?} lacks {named:?}");
    assert!(c.alive(1));
    c.testapp(&[&c.ap(1), "STATE"]).ok();
    // A peer that dies leaves its lock file behind, but not the lock: the tree is free again.
    c.kill(1);
    assert!(c.peer_dir(1).join("peer.lock").exists());
    c.spawn(1, &[]);
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
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::empty();
    let ap = format!("127.0.0.1:{}", c.tcp_port());
    c.spawn_at(1, &ap, &[]);
    let st = c.testapp(&["--json", &ap, "STATE"]).ok().json();
    assert_eq!(st["peer_id"], 1);
    assert_eq!(st["protocol_version"], "1.0");
    // Without the token (a client that has not got it), or with a wrong one, nothing runs.
    use std::io::{BufRead, BufReader, Write};
    let ask = |first: &str| -> serde_json::Value {
        let mut s = std::net::TcpStream::connect(&ap).unwrap();
        s.write_all(format!("{first}{{\"op\":\"state\"}}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    for first in ["", "TOKEN 00\n", "TOKEN \n"] {
        let reply = ask(first);
        assert_eq!(reply["type"], "error", "{first:?}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("token"),
            "{reply}"
        );
    }
    let token = std::fs::read_to_string(c.peer_dir(1).join("access-token")).unwrap();
    assert_eq!(ask(&format!("TOKEN {token}\n"))["type"], "done");
    // The token file in the tree works with --token too; a wrong file is refused.
    let file = c.peer_dir(1).join("access-token");
    c.testapp(&["--token", file.to_str().unwrap(), &ap, "STATE"])
        .ok();
    let wrong = c.dir.path().join("wrong");
    std::fs::write(&wrong, "ab").unwrap();
    let refused = c.testapp(&["--token", wrong.to_str().unwrap(), &ap, "STATE"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
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
        assert_eq!(reply["kind"], "bad_request", "{reply}");
    }
    let reply: serde_json::Value = serde_json::from_str(&ask(&vec![b'x'; 70_000])).unwrap();
    assert_eq!(reply["kind"], "bad_request", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("longer than"),
        "{reply}"
    );
    // Well-formed requests testapp would not send: the peer checks them itself.
    let file = c.make_file("f", 10);
    let fifo = c.dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let dir = c.dir.path();
    for (request, kind, text) in [
        (
            serde_json::json!({"op": "backup", "path": file, "degree": 0}),
            "bad_request",
            "degree must be 1 to 9",
        ),
        (
            serde_json::json!({"op": "backup", "path": "/no/such/file", "degree": 1}),
            "source_unreadable",
            "/no/such/file",
        ),
        (
            serde_json::json!({"op": "backup", "path": fifo, "degree": 1}),
            "source_unreadable",
            "neither a regular file nor a directory",
        ),
        (
            serde_json::json!({"op": "backup", "path": dir, "degree": 10}),
            "bad_request",
            "degree must be 1 to 9",
        ),
        (
            serde_json::json!({"op": "restore", "path": "/"}),
            "not_backed_up",
            "neither a file nor a directory holding one",
        ),
        (
            serde_json::json!({"op": "list", "path": 7}),
            "bad_request",
            "malformed request",
        ),
    ] {
        let reply: serde_json::Value =
            serde_json::from_str(&ask(format!("{request}\n").as_bytes())).unwrap();
        assert_eq!(reply["type"], "error", "{request}: {reply}");
        assert_eq!(reply["kind"], kind, "{request}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(text),
            "{request}: {reply}"
        );
    }
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

#[test]
fn a_peer_tree_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(1);
    let mode = std::fs::metadata(c.peer_dir(1))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}
