//! The replication check of the scale scenario: from every peer's STATE, for every file some
//! peer backed up, how many other peers store each of its chunks.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use dbs::core::StateReport;
use dbs::protocol::FileId;
use serde_json::json;

/// Reads the STATE outputs, prints the result as one JSON line; fails if a chunk is short.
pub fn run(min: usize, paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut states = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let state: StateReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a STATE report", path.display()))?;
        states.push(state);
    }
    // (file, chunk no) -> peers storing it
    let mut holders: HashMap<(FileId, u32), Vec<u32>> = HashMap::new();
    for s in &states {
        for c in &s.stored {
            holders
                .entry((c.file_id, c.no))
                .or_default()
                .push(s.peer_id);
        }
    }
    let (mut files, mut chunks, mut short) = (0usize, 0usize, Vec::new());
    let mut fewest = usize::MAX;
    for s in &states {
        for f in &s.backed_up {
            files += 1;
            for c in &f.chunks {
                chunks += 1;
                let n = holders
                    .get(&(f.file_id, c.no))
                    .map_or(0, |h| h.iter().filter(|&&p| p != s.peer_id).count());
                fewest = fewest.min(n);
                if n < min {
                    short
                        .push(json!({"home": s.peer_id, "path": f.path, "no": c.no, "holders": n}));
                }
            }
        }
    }
    let ok = short.is_empty() && files > 0;
    let out = json!({
        "kind": "replication",
        "peers": states.len(),
        "files": files,
        "chunks": chunks,
        "min_required": min,
        "fewest_holders": if chunks > 0 { json!(fewest) } else { json!(null) },
        "short_chunks": short.len(),
        "short": short.iter().take(20).collect::<Vec<_>>(),
        "ok": ok,
    });
    println!("{out}");
    if !ok {
        anyhow::bail!(
            "{} chunks held by fewer than {min} other peers",
            short.len()
        );
    }
    Ok(())
}
