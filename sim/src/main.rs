//! `dbs-sim`: runs a workload on a simulated dbs group (real protocol cores and executor on a
//! virtual clock, network and disks) and prints what it found. Exit 0 only when every
//! invariant held.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use dbs::sim::{PartitionSpec, Scenario, Versions, run_traced};

const AFTER_HELP: &str = "\
Each file is backed up from a random home peer, restored by it and compared with the original,
and (with --delete-share) deleted; crashes, a partition and RECLAIMs happen meanwhile. The
invariants checked: a chunk acknowledged to a client is never lost while a copy survives; a
restore is byte-identical or fails naming its chunks; after an enhanced DELETE and quiescence no
2.0 peer holds the file; no peer stores its own file's chunks; capacity is never exceeded;
per-instance state returns to zero once the group is idle.

The same seed gives the same run: the same trace_digest, byte for byte.

Exit codes: 0 every invariant held; 1 an invariant was broken (listed); 2 bad arguments.";

/// Simulate a dbs group running a workload, on a virtual clock, and check its invariants.
#[derive(Parser, Debug)]
#[command(name = "dbs-sim", after_help = AFTER_HELP)]
struct Args {
    /// Peers in the group.
    #[arg(long, default_value_t = 4)]
    peers: u32,
    /// Files to back up (each from a random home peer).
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Largest file size in bytes (sizes are drawn between --min-size and it).
    #[arg(long, default_value_t = 200_000)]
    size: u64,
    /// Smallest file size in bytes [default: half of --size]; equal to --size for files of
    /// exactly that size.
    #[arg(long)]
    min_size: Option<u64>,
    /// Replication degree, 1-9.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=9))]
    degree: u8,
    /// Probability that one delivery of a datagram to one peer is lost (0-1).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// Probability that one delivery is duplicated (0-1).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    dup: f64,
    /// Crashes per peer per simulated minute during the workload (each peer is down 1-10 s).
    #[arg(long, default_value_t = 0.0)]
    crash_rate: f64,
    /// A partition: AT:LENGTH[:SPLIT] in seconds, SPLIT the fraction of peers on one side
    /// (default 0.5). E.g. 5:20 cuts the group in two from second 5 to second 25.
    #[arg(long, value_parser = partition)]
    partition: Option<PartitionSpec>,
    /// RECLAIMs (to half a random peer's space, given back 30 s later) during the workload.
    #[arg(long, default_value_t = 0)]
    reclaims: usize,
    /// Share of the files deleted after their restore (0-1).
    #[arg(long, default_value_t = 0.5, value_parser = probability)]
    delete_share: f64,
    /// Seconds over which the files' first operations are spread.
    #[arg(long, default_value_t = 10.0)]
    spread: f64,
    /// Protocol version of the peers: 1.0, 2.0, or mixed (alternating).
    #[arg(long, default_value = "2.0", value_parser = versions)]
    version: Versions,
    /// Seed of every random choice [default: DBS_SIM_SEED, else 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Bytes a peer's receive queue holds before it drops datagrams.
    #[arg(long, default_value_t = 32 << 20)]
    rx_queue: usize,
    /// Send rate of every peer, bytes/s.
    #[arg(long, default_value_t = 250_000_000)]
    rate: u64,
    /// Peer (index from 0) that leaves for good at a time, as SECS:PEER (repeatable).
    #[arg(long, value_name = "SECS:PEER", value_parser = leave)]
    leave: Vec<(Duration, u32)>,
    /// Check self-healing: settle until every acknowledged chunk is back at its degree among
    /// the peers that did not leave (a violation if not), and report how long that took after
    /// the latest departure and the PUTCHUNK bytes sent since the first.
    #[arg(long)]
    heal: bool,
    /// Every peer is a member of one secure group with a data key of its own: messages
    /// sealed, chunks encrypted, deletions proved.
    #[arg(long)]
    secure: bool,
    /// Share of the files whose content changes once backed up whole (backed up again as a
    /// new version, the old one deleted once the new one is whole) (0-1).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    new_versions: f64,
    /// Attackers: forged DELETEs of every file backed up whole, unsealed and (with --secure)
    /// sealed by a rogue member without the home's proof.
    #[arg(long)]
    forge_deletes: bool,
    /// Path MTU in bytes: enhanced peers send chunk messages larger than a frame as pieces
    /// (each lost, or not, on its own; NACKs repair them). Default: every message whole.
    #[arg(long, value_parser = clap::value_parser!(u32).range(576..=65_535))]
    mtu: Option<u32>,
    /// Share (0-1) of TCP sends of CHUNK bodies that find the initiator's connection queue
    /// full: those holders send nothing (another holder, or the next GETCHUNK, takes it).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    tcp_busy: f64,
    /// Print the summary as one JSON object (the last line).
    #[arg(long)]
    json: bool,
    /// Write one JSON line per simulated second to FILE (traffic, drops, chunks below
    /// degree, operations, bytes stored per peer).
    #[arg(long, value_name = "FILE")]
    measure: Option<PathBuf>,
    /// Write the event trace (what `trace_digest` hashes: every datagram sent, start, crash,
    /// client operation and report, with its virtual time in microseconds) to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("must be between 0 and 1, got {p}"))
    }
}

fn leave(s: &str) -> Result<(Duration, u32), String> {
    let (at, peer) = s.split_once(':').ok_or("expected SECS:PEER")?;
    let at: f64 = at.parse().map_err(|_| format!("not a number: {at:?}"))?;
    let peer: u32 = peer
        .parse()
        .map_err(|_| format!("not a peer index: {peer:?}"))?;
    let at = Duration::try_from_secs_f64(at).map_err(|_| "SECS must be >= 0".to_string())?;
    Ok((at, peer))
}

fn versions(s: &str) -> Result<Versions, String> {
    match s {
        "1.0" => Ok(Versions::V1),
        "2.0" => Ok(Versions::V2),
        "mixed" => Ok(Versions::Mixed),
        _ => Err(format!("expected 1.0, 2.0 or mixed, got {s:?}")),
    }
}

fn partition(s: &str) -> Result<PartitionSpec, String> {
    let parts: Vec<f64> = s
        .split(':')
        .map(|p| p.parse::<f64>().map_err(|_| format!("not a number: {p:?}")))
        .collect::<Result<_, _>>()?;
    let (at, length, split) = match parts[..] {
        [at, length] => (at, length, 0.5),
        [at, length, split] => (at, length, split),
        _ => return Err("expected AT:LENGTH[:SPLIT]".into()),
    };
    if at < 0.0 || length < 0.0 || !(0.0..=1.0).contains(&split) {
        return Err("AT and LENGTH must be >= 0 and SPLIT between 0 and 1".into());
    }
    Ok(PartitionSpec {
        at: Duration::from_secs_f64(at),
        length: Duration::from_secs_f64(length),
        split,
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dbs-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let args = Args::parse();
    if args.peers < 2 {
        bail!("--peers must be at least 2");
    }
    if let Some((_, p)) = args.leave.iter().find(|(_, p)| *p >= args.peers) {
        bail!(
            "--leave names peer index {p}, but there are {} peers",
            args.peers
        );
    }
    if args.crash_rate < 0.0 || args.spread < 0.0 {
        bail!("--crash-rate and --spread must not be negative");
    }
    let seed = match args.seed {
        Some(s) => s,
        None => match std::env::var("DBS_SIM_SEED") {
            Ok(s) => s
                .parse()
                .with_context(|| format!("DBS_SIM_SEED={s:?} is not a number"))?,
            Err(_) => 1,
        },
    };
    let create = |path: &Option<PathBuf>| -> anyhow::Result<Option<Box<dyn Write>>> {
        let Some(path) = path else { return Ok(None) };
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Some(Box::new(BufWriter::new(file))))
    };
    let measure = create(&args.measure)?;
    let trace = create(&args.trace)?;
    let sc = Scenario {
        seed,
        peers: args.peers,
        files: args.files,
        size: args.size,
        min_size: args.min_size,
        degree: args.degree,
        versions: args.version,
        loss: args.loss,
        dup: args.dup,
        crash_rate: args.crash_rate,
        partition: args.partition,
        reclaims: args.reclaims,
        delete_share: args.delete_share,
        spread: Duration::from_secs_f64(args.spread),
        rate: args.rate,
        rx_queue_bytes: args.rx_queue,
        crashes: args.leave.iter().map(|&(at, p)| (at, p, None)).collect(),
        heal: args.heal,
        secure: args.secure,
        forge_deletes: args.forge_deletes,
        new_versions: args.new_versions,
        mtu: args.mtu.map(|m| m as usize),
        tcp_busy: args.tcp_busy,
        ..Scenario::default()
    };
    let summary = run_traced(sc, measure, trace);
    let ok = summary.violations.is_empty();
    // A closed standard output (`| head`) is no error of the run.
    let mut out = std::io::stdout().lock();
    let _ = print_summary(&mut out, &summary, args.json);
    Ok(ok)
}

fn print_summary(
    out: &mut impl Write,
    summary: &dbs::sim::Summary,
    json: bool,
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(summary)?);
    }
    writeln!(
        out,
        "seed {}: {} peers, {} operations ({} failed), {:.1} simulated s in {:.2} s, {} datagrams, {} events",
        summary.seed,
        summary.peers,
        summary.ops,
        summary.ops_failed,
        summary.virtual_secs,
        summary.wall_secs,
        summary.datagrams,
        summary.events
    )?;
    if let Some(h) = summary.healed_after {
        writeln!(
            out,
            "healed {h:.1} s after the latest departure; {:.1} MB of PUTCHUNKs since the first",
            summary.repair_mdb_bytes as f64 / 1e6
        )?;
    }
    for f in &summary.failures {
        writeln!(out, "  failed: {f}")?;
    }
    for v in &summary.violations {
        writeln!(out, "  VIOLATION: {v}")?;
    }
    writeln!(out, "trace digest {}", summary.trace_digest)?;
    if !summary.violations.is_empty() {
        writeln!(out, "{}", summary.replay_hint())?;
    }
    Ok(())
}
