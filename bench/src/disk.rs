//! The disk limit: 64,000-byte chunk files made durable the way a peer makes them, with
//! [`ChunkFiles::stage`] on writer threads (the peer's workers) and [`ChunkFiles::commit`] of
//! whatever is staged on one commit thread, at most every 5 ms (the peer's group commit).
//! `--trees P` writes P such trees at once, as P storing peers on one machine do.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dbs::protocol::{ChunkKey, FileId};
use dbs::storage::ChunkFiles;
use dbs::storage::chunk_files::Staged;
use serde_json::json;

use crate::{CHUNK_BYTES, mbps, round2};

/// The commit thread's longest sleep (the peer's `METADATA_SAVE_EVERY`).
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// Least time between two commits (the peer's `COMMIT_MIN_GAP`).
const COMMIT_MIN_GAP: Duration = Duration::from_millis(5);

/// Options of `dbs-bench disk`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Directory for the chunk trees (created; the files are left there, for the caller to
    /// remove). Put it on the filesystem the peers use.
    #[arg(long)]
    dir: PathBuf,
    /// Chunk files to write per measurement (in all trees together).
    #[arg(long, default_value_t = 4000)]
    count: u32,
    /// Chunk trees written at once, each with its own writers and commit thread, as that many
    /// storing peers do; repeat the option to measure several (e.g. --trees 1 --trees 3).
    #[arg(long = "trees", default_values_t = [1])]
    trees: Vec<u32>,
    /// Threads staging chunks at once in each tree (a peer has 4 workers).
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Rounds; each measures every --trees value and the single file once, in its own
    /// subdirectory `round<N>`. The rates reported are the medians.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// What one measurement of chunk files took (in one tree, or all trees together).
#[derive(Default)]
struct Round {
    secs: f64,
    /// Time until every chunk was staged (created and written, not yet durable).
    staged_secs: f64,
    /// Time spent in commits (fsync, rename, directory fsync), summed over the trees.
    commit_secs: f64,
    commits: u32,
    largest: usize,
}

/// Runs the rounds and prints the rates as one JSON line.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.trees.iter().any(|&t| t == 0 || t > opts.count) || opts.writers == 0 || opts.rounds == 0
    {
        bail!("--trees, --writers and --rounds must be positive, and --count at least --trees");
    }
    let mut chunk_rounds: Vec<Vec<Round>> = opts.trees.iter().map(|_| Vec::new()).collect();
    let mut file_secs = Vec::new();
    let file_bytes = u64::from(opts.count) * CHUNK_BYTES as u64;
    for r in 1..=opts.rounds {
        let round_dir = opts.dir.join(format!("round{r}"));
        for (i, &trees) in opts.trees.iter().enumerate() {
            let round = chunk_round(opts, trees, &round_dir.join(format!("trees{trees}")))?;
            let bytes = u64::from(opts.count / trees * trees) * CHUNK_BYTES as u64;
            eprintln!(
                "[dbs-bench disk] round {r}: {} chunk files in {trees} trees: {:.3} s, {:.1} MB/s",
                opts.count / trees * trees,
                round.secs,
                mbps(bytes, round.secs),
            );
            chunk_rounds[i].push(round);
        }
        let secs = one_file(opts.count, &round_dir)?;
        eprintln!(
            "[dbs-bench disk] round {r}: one file of {} MB: {secs:.3} s, {:.1} MB/s",
            file_bytes / 1_000_000,
            mbps(file_bytes, secs)
        );
        file_secs.push(secs);
    }
    let chunk_files: Vec<_> = opts
        .trees
        .iter()
        .zip(&chunk_rounds)
        .map(|(&trees, rounds)| {
            let files = opts.count / trees * trees;
            let bytes = u64::from(files) * CHUNK_BYTES as u64;
            let rate = median(rounds.iter().map(|r| mbps(bytes, r.secs)).collect());
            json!({
                "trees": trees,
                "files": files,
                "mbps": round2(rate),
                "files_per_s": round2(rate * 1e6 / CHUNK_BYTES as f64),
                "rounds": rounds.iter().map(|r| json!({
                    "seconds": round3(r.secs),
                    "mbps": round2(mbps(bytes, r.secs)),
                    "all_staged_s": round3(r.staged_secs),
                    "commit_s_sum": round3(r.commit_secs),
                    "commits": r.commits,
                    "largest_batch": r.largest,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let file_rates: Vec<f64> = file_secs.iter().map(|&s| mbps(file_bytes, s)).collect();
    let mut out = json!({
        "kind": "disk",
        "dir": opts.dir,
        "chunk_bytes": CHUNK_BYTES,
        "writers_per_tree": opts.writers,
        "chunk_files": chunk_files,
        "one_file_mbps": round2(median(file_rates.clone())),
        "one_file_rounds_mbps": file_rates.into_iter().map(round2).collect::<Vec<_>>(),
    });
    // Flat copies of the medians, easy to pick out of the line with grep.
    for c in &chunk_files {
        out[format!("chunk_mbps_trees_{}", c["trees"])] = c["mbps"].clone();
    }
    println!("{out}");
    Ok(())
}

/// The median of some rates.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds to 3 decimals for printing.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `--count` chunk files in `trees` trees under `dir` at once.
fn chunk_round(opts: &Options, trees: u32, dir: &Path) -> anyhow::Result<Round> {
    let per_tree = opts.count / trees;
    let start = Instant::now();
    let threads: Vec<_> = (1..=trees)
        .map(|t| {
            let dir = dir.join(format!("tree{t}"));
            let writers = opts.writers;
            std::thread::spawn(move || write_chunks(per_tree, writers, &dir))
        })
        .collect();
    let mut round = Round::default();
    for t in threads {
        let tree = t.join().expect("tree thread")?;
        round.staged_secs = round.staged_secs.max(tree.staged_secs);
        round.commit_secs += tree.commit_secs;
        round.commits += tree.commits;
        round.largest = round.largest.max(tree.largest);
    }
    round.secs = start.elapsed().as_secs_f64();
    Ok(round)
}

/// One file of `count` chunk-sized pieces written at their offsets, then fsynced and renamed
/// into place, the way a restore writes the restored file. Returns the seconds it took.
fn one_file(count: u32, dir: &Path) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let (part, dest) = (dir.join("restored.part"), dir.join("restored"));
    let body = noise(CHUNK_BYTES, 99);
    let start = Instant::now();
    let file =
        std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?;
    for i in 0..u64::from(count) {
        file.write_all_at(&body, i * CHUNK_BYTES as u64)
            .with_context(|| format!("write {}", part.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("sync {}", part.display()))?;
    std::fs::rename(&part, &dest).with_context(|| format!("rename {}", part.display()))?;
    dbs::storage::sync_dir(dir)?;
    Ok(start.elapsed().as_secs_f64())
}

/// One round in one tree: stages `count` chunks on `writers` threads and commits them on this
/// one.
fn write_chunks(count: u32, writers: u32, dir: &Path) -> anyhow::Result<Round> {
    let files =
        ChunkFiles::open(dir).with_context(|| format!("open a chunk tree in {}", dir.display()))?;
    // A file id unlikely to collide with an earlier run's in the same directory.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&nanos.to_le_bytes());
    let file = FileId(id);

    let staged: Arc<Mutex<Vec<Staged>>> = Arc::default();
    let (signal, wake) = channel::<()>();
    let start = Instant::now();
    let mut threads = Vec::new();
    for w in 0..writers {
        let (files, staged, signal) = (files.clone(), staged.clone(), signal.clone());
        let step = writers;
        threads.push(std::thread::spawn(move || -> anyhow::Result<f64> {
            let mut body = noise(CHUNK_BYTES, u64::from(w) + 1);
            for no in (w..count).step_by(step as usize) {
                body[..4].copy_from_slice(&no.to_le_bytes());
                let s = files.stage(ChunkKey { file, no }, &body)?;
                staged.lock().expect("not poisoned").push(s);
                let _ = signal.send(());
            }
            Ok(start.elapsed().as_secs_f64())
        }));
    }
    drop(signal);

    // The commit thread's loop, here on the main thread.
    let (mut done, mut batches, mut largest) = (0u32, 0u32, 0usize);
    let (mut writers_done, mut commit_secs) = (false, 0.0);
    while done < count {
        if !writers_done {
            match wake.recv_timeout(COMMIT_EVERY) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => writers_done = true,
            }
            // One commit takes whatever was staged meanwhile, whatever the signals.
            loop {
                match wake.try_recv() {
                    Ok(()) => {}
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        writers_done = true;
                        break;
                    }
                }
            }
        }
        let batch = std::mem::take(&mut *staged.lock().expect("not poisoned"));
        if batch.is_empty() {
            if writers_done {
                break;
            }
            continue;
        }
        batches += 1;
        largest = largest.max(batch.len());
        let commit_start = Instant::now();
        for (key, result) in files.commit(batch) {
            result.with_context(|| format!("commit chunk {}", key.no))?;
            done += 1;
        }
        commit_secs += commit_start.elapsed().as_secs_f64();
        std::thread::sleep(COMMIT_MIN_GAP);
    }
    let mut staged_secs = 0.0f64;
    for t in threads {
        staged_secs = staged_secs.max(t.join().expect("writer thread")?);
    }
    let secs = start.elapsed().as_secs_f64();
    if done != count {
        bail!("only {done} of {count} chunks were committed");
    }
    Ok(Round {
        secs,
        staged_secs,
        commit_secs,
        commits: batches,
        largest,
    })
}

/// `len` pseudo-random bytes (xorshift), so that nothing on the way can compress them.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
