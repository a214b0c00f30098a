//! End to end: the enhanced protocol (2.0) and its interoperation with 1.0 peers.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, wait_until};
use dbs::protocol::{Message, MessageKind};

const K: usize = 64_000;

fn run_ok(c: &Cluster, id: u32, args: &[&str]) -> serde_json::Value {
    let ap = c.ap(id);
    let mut all = vec!["--json", ap.as_str()];
    all.extend_from_slice(args);
    c.testapp(&all).ok().json()
}

fn backup(c: &Cluster, id: u32, op: &str, path: &Path, degree: u32) -> String {
    let doc = run_ok(c, id, &[op, path.to_str().unwrap(), &degree.to_string()]);
    doc["file_id"].as_str().unwrap().to_string()
}

fn restore_identical(c: &Cluster, id: u32, op: &str, path: &Path) {
    let doc = run_ok(c, id, &[op, path.to_str().unwrap()]);
    let dest = doc["restored_to"].as_str().unwrap();
    assert!(
        std::fs::read(dest).unwrap() == std::fs::read(path).unwrap(),
        "{dest} differs"
    );
    // The next restore of the file must really restore, not find it there.
    std::fs::remove_file(dest).unwrap();
}

fn all_deleted(c: &Cluster, ids: &[u32], file_id: &str) -> bool {
    ids.iter().all(|&id| c.chunk_files(id, file_id).is_empty())
}

/// A cluster of 1.0 peers `v1` and 2.0 peers `v2`.
fn mixed(v1: &[u32], v2: &[u32]) -> Cluster {
    let mut c = Cluster::empty();
    for &id in v1 {
        c.spawn_version(id, "1.0", &[]);
    }
    for &id in v2 {
        c.spawn_version(id, "2.0", &[]);
    }
    c
}

#[test]
fn mixed_groups_complete_every_operation_in_both_roles() {
    let c = mixed(&[1, 2], &[3, 4, 5]);
    let everyone = [1, 2, 3, 4, 5];
    // Initiators: 1.0 peer 1 (plain), 2.0 peer 3 (enhanced), 2.0 peer 4 (plain on a 2.0 peer).
    for (home, suffix) in [(1, ""), (3, "ENH"), (4, "")] {
        let path = c.make_file(&format!("f{home}"), 3 * K + 7);
        let file_id = backup(&c, home, &format!("BACKUP{suffix}"), &path, 2);
        let others: Vec<u32> = everyone.iter().copied().filter(|&p| p != home).collect();
        let holders = c.holders(&others, &file_id);
        assert_eq!(holders.len(), 4);
        assert!(holders.iter().all(|h| h.len() >= 2), "{holders:?}");
        restore_identical(&c, home, &format!("RESTORE{suffix}"), &path);
        // One holder of each version reclaims everything; the others restore the degree.
        run_ok(&c, 2, &["RECLAIM", "0"]);
        run_ok(&c, 5, &[&format!("RECLAIM{suffix}"), "0"]);
        restore_identical(&c, home, &format!("RESTORE{suffix}"), &path);
        run_ok(&c, 2, &["RECLAIM", "1000000"]);
        run_ok(&c, 5, &["RECLAIM", "1000000"]);
        run_ok(
            &c,
            home,
            &[&format!("DELETE{suffix}"), path.to_str().unwrap()],
        );
        assert!(
            wait_until(Duration::from_secs(10), || all_deleted(
                &c, &others, &file_id
            )),
            "chunks left after DELETE{suffix} from peer {home}"
        );
    }
    // A 1.0 peer refuses the enhanced operations clearly.
    let f = c.make_file("x", 10);
    let ap = c.ap(1);
    for op in ["BACKUPENH", "RESTOREENH", "DELETEENH"] {
        let mut args = vec!["--json", &ap, op, f.to_str().unwrap()];
        if op == "BACKUPENH" {
            args.push("1");
        }
        let run = c.testapp(&args);
        assert_eq!(run.code, 3, "{op}: {} {}", run.stdout, run.stderr);
        let doc = run.json();
        assert_eq!(doc["kind"], "unsupported", "{op}: {doc}");
        assert!(doc["error"].as_str().unwrap().contains("runs 1.0"), "{doc}");
    }
    let run = c.testapp(&[&ap, "RECLAIMENH", "0"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("runs 1.0"), "{}", run.stderr);
}

#[test]
fn enhanced_backup_does_not_over_replicate() {
    let c = mixed(&[], &[1, 2, 3, 4, 5, 6]);
    let path = c.make_file("big", 20_000_000);
    let file_id = backup(&c, 1, "BACKUPENH", &path, 2);
    let chunks = 20_000_000 / K + 1;
    // (average copies per chunk, fewest copies of a chunk, chunks seen)
    let measure = || {
        let copies = c.copies_on_disk(&[2, 3, 4, 5, 6], &file_id);
        let total: usize = copies.values().map(Vec::len).sum();
        let min = copies.values().map(Vec::len).min().unwrap_or(0);
        (total as f64 / chunks as f64, min, copies.len())
    };
    let at_end = measure();
    // Storers that decided at nearly the same time drop their surplus copies about a second
    // after storing; the degree never goes below 2 meanwhile.
    let mut settled = at_end;
    let ok = wait_until(Duration::from_secs(15), || {
        settled = measure();
        assert!(
            settled.1 >= 2 && settled.2 == chunks,
            "a chunk below degree 2: {settled:?}"
        );
        settled.0 <= 2.2
    });
    eprintln!(
        "enhanced backup: {:.3} copies per chunk when BACKUP returned, {:.3} settled",
        at_end.0, settled.0
    );
    assert!(ok, "average {:.3} copies per chunk", settled.0);
    restore_identical(&c, 1, "RESTOREENH", &path);
}

/// Counts CHUNK messages that carry a body on the MDR channel while it runs.
struct MdrListener {
    stop: Arc<AtomicBool>,
    bodies: Arc<AtomicU64>,
    headers: Arc<AtomicU64>,
}

impl MdrListener {
    fn start(c: &Cluster) -> MdrListener {
        let socket = dbs::net::open_receiver(
            c.channels[2],
            Ipv4Addr::LOCALHOST,
            Duration::from_millis(50),
        )
        .unwrap();
        let (stop, bodies, headers) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, b, h) = (stop.clone(), bodies.clone(), headers.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf)
                    && let Ok(Message {
                        kind: MessageKind::Chunk { body, .. },
                        ..
                    }) = Message::parse(&buf[..n])
                {
                    if body.is_empty() { &h } else { &b }.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        MdrListener {
            stop,
            bodies,
            headers,
        }
    }
}

impl Drop for MdrListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn enhanced_restore_sends_no_chunk_bodies_on_mdr() {
    let c = mixed(&[], &[1, 2, 3, 4]);
    let path = c.make_file("viatcp", 40 * K + 3);
    backup(&c, 1, "BACKUPENH", &path, 2);
    let mdr = MdrListener::start(&c);
    restore_identical(&c, 1, "RESTOREENH", &path);
    assert_eq!(
        mdr.bodies.load(Ordering::Relaxed),
        0,
        "chunk bodies multicast on MDR"
    );
    assert!(
        mdr.headers.load(Ordering::Relaxed) >= 41,
        "header-only CHUNKs keep other holders quiet"
    );
    // The plain RESTORE on the same peers still multicasts bodies (1.0).
    restore_identical(&c, 1, "RESTORE", &path);
    assert!(mdr.bodies.load(Ordering::Relaxed) >= 41);
}

#[test]
fn a_holder_that_was_down_during_delete_frees_the_space_when_it_returns() {
    let mut c = mixed(&[], &[1, 2, 3]);
    let path = c.make_file("gone", 5 * K);
    let file_id = backup(&c, 1, "BACKUPENH", &path, 2);
    assert!(!c.chunk_files(3, &file_id).is_empty());
    c.stop(3);
    run_ok(&c, 1, &["DELETEENH", path.to_str().unwrap()]);
    assert!(wait_until(Duration::from_secs(5), || c
        .chunk_files(2, &file_id)
        .is_empty()));
    // The pending deletion survives the initiator's restart.
    c.wait_saved(1);
    c.kill(1);
    c.spawn(1, &[]);
    c.spawn(3, &[]);
    assert!(
        wait_until(Duration::from_secs(15), || c
            .chunk_files(3, &file_id)
            .is_empty()
            // (It may hold a chunk of peer 1's catalog: that is not the file.)
            && c.state(3)["stored"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["file_id"] != file_id.as_str())),
        "peer 3 still holds chunks of the deleted file"
    );
}

#[test]
fn chunks_reach_their_degree_when_the_backup_initiator_dies() {
    let mut c = mixed(&[], &[1, 2, 3, 4, 5]);
    let path = c.make_file("orphan", 8_000_000);
    let client = c.testapp_in_background(&[&c.ap(1), "BACKUPENH", path.to_str().unwrap(), "3"]);
    // Kill the initiator once part of the file is out.
    assert!(wait_until(Duration::from_secs(30), || c.state(2)["stored"]
        .as_array()
        .unwrap()
        .len()
        >= 20));
    let file_id = c.state(2)["stored"][0]["file_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill(1);
    let _ = client.join();
    let holders = [2, 3, 4, 5];
    // The chunks that left the initiator before it died (at least the 20 peer 2 stored; the
    // others were never sent, so no peer can have them): each must reach degree 3, and none
    // may vanish on the way.
    let sent: Vec<u32> = c.copies_on_disk(&holders, &file_id).into_keys().collect();
    assert!(sent.len() >= 20, "chunks on disk after the kill: {sent:?}");
    let reached = |copies: &std::collections::BTreeMap<u32, Vec<u32>>| {
        sent.iter().all(|no| copies.contains_key(no)) && copies.values().all(|h| h.len() >= 3)
    };
    assert!(
        wait_until(Duration::from_secs(60), || reached(
            &c.copies_on_disk(&holders, &file_id)
        )),
        "of the chunks {sent:?}, below degree 3: {:?}",
        {
            let copies = c.copies_on_disk(&holders, &file_id);
            sent.iter()
                .map(|no| (no, copies.get(no).cloned().unwrap_or_default()))
                .filter(|(_, h)| h.len() < 3)
                .collect::<Vec<_>>()
        }
    );
}

#[test]
fn rereplication_survives_the_death_of_the_peer_running_it() {
    let mut c = mixed(&[], &[1, 2, 3, 4]);
    let path = c.make_file("heal", 10 * K);
    let file_id = backup(&c, 1, "BACKUPENH", &path, 3);
    let copies = c.copies_on_disk(&[2, 3, 4], &file_id);
    assert!(
        copies.len() == 11 && copies.values().all(|h| h.len() == 3),
        "{copies:?}"
    );
    c.spawn_version(5, "2.0", &["--capacity", "0"]); // no room yet: re-backups must wait
    run_ok(&c, 2, &["RECLAIMENH", "0"]);
    // Peers 3 and 4 re-back the chunks up (randomly split); the PUTCHUNKs find no room and are
    // resent. Kill peer 3 in the middle of that, then make room on peer 5.
    assert!(wait_until(
        Duration::from_secs(10),
        || c.counters(3)["putchunk_resends"].as_u64().unwrap() > 0
    ));
    c.kill(3);
    run_ok(&c, 5, &["RECLAIM", "1000000"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let copies = c.copies_on_disk(&[3, 4, 5], &file_id);
            copies.len() == 11 && copies.values().all(|h| h.len() >= 3)
        }),
        "chunks below degree 3: {:?}",
        c.copies_on_disk(&[3, 4, 5], &file_id)
    );
}

/// A GETCHUNK 2.0 naming a TCP address that is not its sender's (anyone on the LAN could send
/// one naming a host of theirs) is answered on MDR, never over TCP to that address; one naming
/// its sender's own address is answered over TCP.
#[test]
fn holders_send_bodies_over_tcp_only_to_the_getchunks_sender() {
    use std::net::TcpListener;
    let c = mixed(&[], &[1, 2, 3]);
    let path = c.make_file("target", 1_000);
    let file_id = backup(&c, 1, "BACKUPENH", &path, 2);
    let getchunk = |to: std::net::SocketAddr| {
        format!("GETCHUNK 2.0 9 {file_id} 0 \r\nTCP {to}\r\n\r\n").into_bytes()
    };
    let accepted = |listener: &TcpListener| {
        listener.set_nonblocking(true).unwrap();
        wait_until(Duration::from_secs(3), || listener.accept().is_ok())
    };
    // The test's datagrams come from 127.0.0.1: a listener on 127.0.0.2 is someone else.
    let elsewhere = TcpListener::bind("127.0.0.2:0").unwrap();
    c.inject(0, &getchunk(elsewhere.local_addr().unwrap()));
    assert!(
        !accepted(&elsewhere),
        "a holder connected to a foreign address"
    );
    assert!(wait_until(Duration::from_secs(5), || (2..=3).any(|id| c
        .counters(id)["foreign_tcp"]
        .as_u64()
        .unwrap_or(0)
        > 0)));
    let own = TcpListener::bind("127.0.0.1:0").unwrap();
    c.inject(0, &getchunk(own.local_addr().unwrap()));
    assert!(
        accepted(&own),
        "no holder answered over TCP to the sender's own address"
    );
}

/// An initiator that takes the holders' TCP connections and never reads them (so their
/// queues to it fill up to their bound, after which its bodies go on MDR) delays no other
/// restore: a holder's sends to initiators never block.
#[test]
fn a_restore_completes_while_another_initiator_never_reads() {
    use std::net::{SocketAddr, TcpListener};
    let c = mixed(&[], &[1, 2, 3]);
    let stuck_file = c.make_file("stuck", 120 * K);
    let path = c.make_file("wanted", 40 * K + 7);
    let stuck_id = backup(&c, 1, "BACKUPENH", &stuck_file, 2);
    backup(&c, 1, "BACKUPENH", &path, 2);
    // The initiator that never reads: a small receive buffer (its accepted connections take
    // it too), and every connection accepted and kept.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    socket.listen(64).unwrap();
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true).unwrap();
    let to = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        held.len()
    });
    // It asks for every chunk of its file over and over (as often as holders answer).
    let (s, mc) = (stop.clone(), c.channels[0]);
    let asker = std::thread::spawn(move || {
        let socket = common::sender();
        while !s.load(Ordering::Relaxed) {
            for no in 0..=120 {
                let get = format!("GETCHUNK 2.0 9 {stuck_id} {no} \r\nTCP {to}\r\n\r\n");
                let _ = socket.send_to(get.as_bytes(), mc);
            }
            std::thread::sleep(Duration::from_millis(600));
        }
    });
    let full = format!("already queued for {to}");
    assert!(
        wait_until(Duration::from_secs(60), || [2, 3]
            .iter()
            .all(|&id| c.log(id).contains(&full))),
        "the holders' queues to the initiator that never reads did not fill"
    );
    let start = std::time::Instant::now();
    restore_identical(&c, 1, "RESTOREENH", &path);
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    asker.join().unwrap();
    let held = holder.join().unwrap();
    eprintln!(
        "restored 41 chunks in {took:?} beside an initiator that never reads ({held} connections held)"
    );
    assert!(held >= 2, "{held} holders connected to the stuck initiator");
    assert!(took < Duration::from_secs(20), "the restore took {took:?}");
}

/// Benchmark: what UDP GSO buys when chunk messages travel as pieces. On loopback with
/// `--mtu 1500` (so every chunk is about 49 pieces), 4 enhanced peers back up 128 MB at degree
/// 2 from peer 1, with GSO and with `--no-gso`; prints MB/s, the home's CPU seconds and its
/// system calls per datagram sent. Run by hand:
/// `unshare -rn bash -c 'ip link set lo up; cargo test --release --test enhanced -- --ignored --nocapture gso_effect'`
#[test]
#[ignore = "a benchmark (about half a minute), run by hand"]
fn gso_effect() {
    const MB: usize = 128_000_000;
    for gso in [true, false] {
        let mut c = Cluster::empty();
        let mut opts = vec!["--mtu", "1500"];
        if !gso {
            opts.push("--no-gso");
        }
        for id in 1..=4 {
            c.spawn_version(id, "2.0", &opts);
        }
        let path = c.make_file("big", MB);
        let cpu = |c: &Cluster| -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.pid(1))).unwrap();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            let ticks: f64 =
                fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
            ticks / 100.0
        };
        let cpu0 = cpu(&c);
        let start = std::time::Instant::now();
        c.testapp(&[&c.ap(1), "BACKUPENH", path.to_str().unwrap(), "2"])
            .ok();
        let secs = start.elapsed().as_secs_f64();
        let k = c.counters(1);
        let (sent, calls) = (
            k["sent"].as_u64().unwrap(),
            k["send_calls"].as_u64().unwrap(),
        );
        eprintln!(
            "GSO {gso}: {:.1} MB/s, home CPU {:.2} s, {sent} datagrams in {calls} send calls \
             ({:.1} per call), {} pieces repaired",
            MB as f64 / 1e6 / secs,
            cpu(&c) - cpu0,
            sent as f64 / calls.max(1) as f64,
            k["pieces_repaired"]
        );
    }
}
