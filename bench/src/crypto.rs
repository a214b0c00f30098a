//! The CPU cost of a secure group's cryptography alone, on one thread: sealing and opening
//! 64,000-byte messages (HMAC-SHA256 of the envelope, `dbs::secure::{Sealer, Opener}`),
//! encrypting and decrypting 63,960-byte chunks (XChaCha20-Poly1305 with a synthetic nonce,
//! `dbs::secure::chunks`), and, for reference, SHA-256 of a 64,000-byte body (what every peer
//! already computes for each chunk it stores or restores).
//!
//! What a secure peer adds per chunk: the initiator of a backup encrypts it and seals its
//! PUTCHUNK, every storer opens that PUTCHUNK; in a restore each holder that answers seals its
//! CHUNK, every peer opens every CHUNK it receives (a secure peer reads them whole to check the
//! seal), and the initiator decrypts it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use dbs::protocol::{ChunkKey, FileId};
use dbs::secure::{DataKey, GroupKey, Opener, Sealer, chunks};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{CHUNK_BYTES, round2};

/// Options of `dbs-bench crypto`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// MB (10^6 bytes) each operation processes per round.
    #[arg(long, default_value_t = 256)]
    mb: u64,
    /// Rounds; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Messages sealed (or chunks encrypted) ahead of each timed batch of opens (decryptions).
const BATCH: usize = 64;

/// The clock the sealer and opener use (ms): fixed, so that nothing goes stale.
const NOW_MS: u64 = 1_800_000_000_000;

/// CPU time of this thread, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Wall and CPU seconds of what was timed.
#[derive(Clone, Copy, Default)]
struct Timed {
    wall: f64,
    cpu: f64,
}

impl Timed {
    fn add(&mut self, f: impl FnOnce()) {
        let (w, c) = (Instant::now(), thread_cpu_s());
        f();
        self.cpu += thread_cpu_s() - c;
        self.wall += w.elapsed().as_secs_f64();
    }
}

/// One operation: its name, the bytes each call processes, and a round of `calls` calls (which
/// times only the operation, not the preparation of its inputs).
struct Op {
    name: &'static str,
    what: &'static str,
    bytes: usize,
    round: Box<dyn FnMut(usize) -> Timed>,
}

/// A PUTCHUNK 1.0 of exactly `CHUNK_BYTES` bytes in all (header and body), from peer 1.
fn putchunk_message() -> Vec<u8> {
    let mut m = format!("PUTCHUNK 1.0 1 {} 0 2 \r\n\r\n", "ab".repeat(32)).into_bytes();
    let body = CHUNK_BYTES - m.len();
    m.extend((0..body).map(|i| (i * 7 + 3) as u8));
    m
}

fn ops() -> Vec<Op> {
    let group = Arc::new(GroupKey::from_secret(
        b"dbs-bench crypto group secret, 32+ bytes",
    ));
    let data = Arc::new(DataKey::from_secret(
        b"dbs-bench crypto data key, 32+ bytes",
        1,
    ));
    let message = putchunk_message();
    let plain: Vec<u8> = (0..chunks::SEALED_PAYLOAD)
        .map(|i| (i * 13 + 1) as u8)
        .collect();
    let chunk = |no: u32| ChunkKey {
        file: FileId([0x5a; 32]),
        no,
    };

    let seal = {
        let (group, message) = (group.clone(), message.clone());
        let sealer = Sealer::new(group, NOW_MS * 1000);
        move |calls: usize| {
            let mut t = Timed::default();
            t.add(|| {
                for _ in 0..calls {
                    black_box(sealer.seal(black_box(&message), NOW_MS));
                }
            });
            t
        }
    };
    let open = {
        let (group, message) = (group.clone(), message.clone());
        let sealer = Sealer::new(group.clone(), NOW_MS * 1000);
        let opener = Opener::new(group, NOW_MS - 1000);
        move |calls: usize| {
            let mut t = Timed::default();
            let mut left = calls;
            while left > 0 {
                let n = left.min(BATCH);
                let sealed: Vec<Vec<u8>> = (0..n).map(|_| sealer.seal(&message, NOW_MS)).collect();
                t.add(|| {
                    for s in &sealed {
                        let m = opener.open(black_box(s), NOW_MS).expect("opens");
                        black_box(m);
                    }
                });
                left -= n;
            }
            t
        }
    };
    let encrypt = {
        let (data, plain) = (data.clone(), plain.clone());
        let mut no = 0u32;
        move |calls: usize| {
            let mut t = Timed::default();
            t.add(|| {
                for _ in 0..calls {
                    no = (no + 1) % 1_000_000;
                    black_box(chunks::encrypt(&data, &chunk(no), black_box(&plain)));
                }
            });
            t
        }
    };
    let decrypt = {
        let mut no = 0u32;
        move |calls: usize| {
            let mut t = Timed::default();
            let mut left = calls;
            while left > 0 {
                let n = left.min(BATCH);
                let bodies: Vec<(u32, Vec<u8>)> = (0..n)
                    .map(|_| {
                        no = (no + 1) % 1_000_000;
                        (no, chunks::encrypt(&data, &chunk(no), &plain))
                    })
                    .collect();
                t.add(|| {
                    for (no, body) in &bodies {
                        let p = chunks::decrypt(&data, &chunk(*no), black_box(body));
                        black_box(p.expect("decrypts"));
                    }
                });
                left -= n;
            }
            t
        }
    };
    let sha256 = {
        let body = message.clone();
        move |calls: usize| {
            let mut t = Timed::default();
            t.add(|| {
                for _ in 0..calls {
                    black_box(Sha256::digest(black_box(&body)));
                }
            });
            t
        }
    };
    vec![
        Op {
            name: "seal",
            what: "Sealer::seal of a 64,000-byte message (HMAC-SHA256, copy into the envelope)",
            bytes: CHUNK_BYTES,
            round: Box::new(seal),
        },
        Op {
            name: "open",
            what: "Opener::open of a sealed 64,000-byte message (HMAC-SHA256, replay window)",
            bytes: CHUNK_BYTES,
            round: Box::new(open),
        },
        Op {
            name: "encrypt",
            what: "chunks::encrypt of a 63,960-byte chunk (HKDF file key, HMAC nonce, XChaCha20-Poly1305)",
            bytes: chunks::SEALED_PAYLOAD,
            round: Box::new(encrypt),
        },
        Op {
            name: "decrypt",
            what: "chunks::decrypt of a 64,000-byte encrypted chunk (HKDF file key, XChaCha20-Poly1305)",
            bytes: chunks::SEALED_PAYLOAD,
            round: Box::new(decrypt),
        },
        Op {
            name: "sha256",
            what: "reference: SHA-256 of a 64,000-byte body (what peers compute already)",
            bytes: CHUNK_BYTES,
            round: Box::new(sha256),
        },
    ]
}

/// Rounds to 4 decimals for printing.
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Times each operation, prints a table on stderr and one JSON line on stdout.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.mb >= 1 && opts.rounds >= 1,
        "--mb and --rounds must be at least 1"
    );
    let mut results = serde_json::Map::new();
    eprintln!(
        "{:<8} {:>10} {:>10} {:>12} {:>12}  what (median of {} rounds of {} MB)",
        "op", "MB/s", "CPU MB/s", "CPU us/MB", "wall us/op", opts.rounds, opts.mb
    );
    for mut op in ops() {
        let calls = (opts.mb * 1_000_000).div_ceil(op.bytes as u64) as usize;
        (op.round)(calls.min(BATCH)); // warm-up
        let mut rounds: Vec<Timed> = (0..opts.rounds).map(|_| (op.round)(calls)).collect();
        rounds.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
        let t = rounds[rounds.len() / 2];
        let mb = (calls * op.bytes) as f64 / 1e6;
        let wall_mbps = mb / t.wall;
        let cpu_mbps = mb / t.cpu;
        let cpu_us_per_mb = t.cpu * 1e6 / mb;
        let wall_us_per_op = t.wall * 1e6 / calls as f64;
        eprintln!(
            "{:<8} {:>10.1} {:>10.1} {:>12.1} {:>12.1}  {}",
            op.name, wall_mbps, cpu_mbps, cpu_us_per_mb, wall_us_per_op, op.what
        );
        results.insert(
            op.name.into(),
            json!({
                "what": op.what,
                "bytes_per_call": op.bytes,
                "calls": calls,
                "wall_s": round4(t.wall),
                "cpu_s": round4(t.cpu),
                "mbps": round2(wall_mbps),
                "cpu_mbps": round2(cpu_mbps),
                "cpu_us_per_mb": round2(cpu_us_per_mb),
                "wall_us_per_call": round2(wall_us_per_op),
                "rounds_cpu_s": rounds.iter().map(|r| round4(r.cpu)).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "{}",
        json!({"kind": "crypto", "mb_per_round": opts.mb, "rounds": opts.rounds, "ops": results})
    );
    Ok(())
}
