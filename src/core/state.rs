//! The STATE report: files backed up here, chunks stored here, capacity and use (protocol.md §7).

use std::fmt;

use serde::Serialize;

use super::Config;
use super::membership::{PeerState, View};
use super::metadata::Metadata;
use crate::protocol::{FileId, PeerId};

/// A peer's STATE, serialised as the `--json` document of `testapp STATE`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StateReport {
    /// This peer's id.
    pub peer_id: u32,
    /// Protocol version it runs.
    pub protocol_version: String,
    /// Capacity for stored chunks, KBytes (1000 bytes).
    pub capacity_kb: u64,
    /// Space used by stored chunks, KBytes.
    pub used_kb: f64,
    /// Files this peer backed up.
    pub backed_up: Vec<BackedUpReport>,
    /// Chunks stored here for other peers.
    pub stored: Vec<StoredReport>,
    /// Enhanced: the peers this one knows of and what its membership view says of them.
    #[serde(default)]
    pub membership: Vec<MemberReport>,
}

/// One peer in the membership view.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct MemberReport {
    /// Its id.
    pub id: PeerId,
    /// alive, suspected or gone.
    pub state: String,
    /// Whether it speaks 2.0 (a 1.0 peer does not announce itself and counts as alive).
    pub enhanced: bool,
    /// Seconds since it was last heard, about (absent: not since this peer started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_s: Option<u64>,
}

/// One file in a STATE report.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct BackedUpReport {
    /// Source path.
    pub path: String,
    /// File id.
    pub file_id: FileId,
    /// Desired replication degree.
    pub desired: u8,
    /// Each chunk with its perceived degree.
    pub chunks: Vec<ChunkDegree>,
}

/// A chunk of a backed-up file and its perceived degree.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ChunkDegree {
    /// Chunk number.
    pub no: u32,
    /// Distinct peers known to hold it.
    pub perceived: usize,
    /// Of those, the ones the membership view counts as alive.
    #[serde(default)]
    pub live: usize,
}

/// One stored chunk in a STATE report.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StoredReport {
    /// File id.
    pub file_id: FileId,
    /// Chunk number.
    pub no: u32,
    /// Size in KBytes.
    pub size_kb: f64,
    /// Desired replication degree.
    pub desired: u8,
    /// Distinct peers known to hold it, this one included.
    pub perceived: usize,
    /// Of those, the ones the membership view counts as alive.
    #[serde(default)]
    pub live: usize,
}

impl StateReport {
    /// Builds the report from the metadata and the membership view.
    pub fn from_metadata(cfg: &Config, meta: &Metadata, view: &View) -> Self {
        let live = |holders: &std::collections::BTreeSet<PeerId>| {
            holders.iter().filter(|&&p| view.is_alive(p)).count()
        };
        let mut known: std::collections::BTreeSet<PeerId> = meta.enhanced_peers().clone();
        for f in meta.backed_up().values() {
            for c in &f.chunks {
                known.extend(&c.holders);
            }
        }
        for chunks in meta.stored().values() {
            for c in chunks.values() {
                known.extend(&c.holders);
            }
        }
        known.remove(&cfg.id);
        let period = cfg.announce_interval.as_secs_f64();
        let membership = if cfg.enhanced() {
            known
                .into_iter()
                .map(|id| MemberReport {
                    id,
                    state: match view.state(id) {
                        PeerState::Alive => "alive",
                        PeerState::Suspected => "suspected",
                        PeerState::Gone => "gone",
                    }
                    .to_string(),
                    enhanced: meta.enhanced_peers().contains(&id),
                    silent_s: view
                        .silent_for(id)
                        .map(|ticks| (ticks as f64 * period).round() as u64),
                })
                .collect()
        } else {
            Vec::new()
        };
        StateReport {
            membership,
            peer_id: cfg.id,
            protocol_version: cfg.version.to_string(),
            capacity_kb: meta.capacity() / 1000,
            used_kb: meta.used() as f64 / 1000.0,
            backed_up: meta
                .backed_up()
                .iter()
                .filter(|(_, f)| !f.is_link() && f.is_users())
                .map(|(id, f)| BackedUpReport {
                    path: f.path.display().to_string(),
                    file_id: *id,
                    desired: f.desired,
                    chunks: f
                        .chunks
                        .iter()
                        .enumerate()
                        .map(|(no, c)| ChunkDegree {
                            no: no as u32,
                            perceived: c.holders.len(),
                            live: live(&c.holders),
                        })
                        .collect(),
                })
                .collect(),
            stored: meta
                .stored()
                .iter()
                .flat_map(|(id, chunks)| {
                    chunks.iter().map(|(no, c)| StoredReport {
                        file_id: *id,
                        no: *no,
                        size_kb: f64::from(c.size) / 1000.0,
                        desired: c.desired,
                        perceived: c.holders.len(),
                        live: live(&c.holders),
                    })
                })
                .collect(),
        }
    }
}

impl BackedUpReport {
    /// One line on whether the file is safe: its chunks, their lowest perceived degree, and
    /// how many are below the desired degree.
    pub fn summary(&self) -> String {
        let Some(lowest) = self.chunks.iter().map(|c| c.perceived).min() else {
            return "summary: no chunks recorded".to_string();
        };
        let below = self
            .chunks
            .iter()
            .filter(|c| c.perceived < usize::from(self.desired))
            .count();
        let live_below = self
            .chunks
            .iter()
            .filter(|c| c.live < usize::from(self.desired))
            .count();
        let verdict = if below == 0 {
            "every chunk at its desired degree".to_string()
        } else {
            format!("{below} below the desired degree")
        };
        let live = if live_below > below {
            format!(", {live_below} below it among live peers")
        } else {
            String::new()
        };
        format!(
            "summary: {} chunk(s), lowest perceived degree {lowest}, {verdict}{live}",
            self.chunks.len()
        )
    }
}

impl fmt::Display for StateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Peer {} (protocol {})",
            self.peer_id, self.protocol_version
        )?;
        writeln!(f, "Files backed up by this peer: {}", self.backed_up.len())?;
        for file in &self.backed_up {
            writeln!(f, "  {}", file.path)?;
            writeln!(
                f,
                "    file id {}  desired degree {}",
                file.file_id, file.desired
            )?;
            writeln!(f, "    {}", file.summary())?;
            for c in &file.chunks {
                writeln!(
                    f,
                    "    chunk {:>6}  perceived degree {}  live {}",
                    c.no, c.perceived, c.live
                )?;
            }
        }
        writeln!(f, "Chunks stored here: {}", self.stored.len())?;
        for c in &self.stored {
            writeln!(
                f,
                "  {} #{:<6} {:>7.3} KB  perceived {} / desired {}  live {}",
                c.file_id, c.no, c.size_kb, c.perceived, c.desired, c.live
            )?;
        }
        if !self.membership.is_empty() {
            writeln!(
                f,
                "Peers known (1.0 peers do not announce themselves and count as alive):"
            )?;
            for m in &self.membership {
                let silent = m.silent_s.map_or_else(
                    || "not heard since this peer started".to_string(),
                    |s| format!("last heard {s} s ago"),
                );
                let version = if m.enhanced { "2.0" } else { "1.0" };
                writeln!(f, "  peer {:<6} {:<9} {version}  {silent}", m.id, m.state)?;
            }
        }
        write!(
            f,
            "Storage: {:.3} KB used of {} KB capacity",
            self.used_kb, self.capacity_kb
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(desired: u8, perceived: &[usize]) -> BackedUpReport {
        BackedUpReport {
            path: "/a".into(),
            file_id: "ab".repeat(32).parse().unwrap(),
            desired,
            chunks: perceived
                .iter()
                .enumerate()
                .map(|(no, &perceived)| ChunkDegree {
                    no: no as u32,
                    perceived,
                    live: perceived,
                })
                .collect(),
        }
    }

    #[test]
    fn a_file_summary_names_its_lowest_degree_and_the_chunks_below_the_desired_one() {
        assert_eq!(
            report(2, &[3, 2, 2]).summary(),
            "summary: 3 chunk(s), lowest perceived degree 2, every chunk at its desired degree"
        );
        assert_eq!(
            report(3, &[3, 1, 2, 3]).summary(),
            "summary: 4 chunk(s), lowest perceived degree 1, 2 below the desired degree"
        );
        assert_eq!(report(1, &[]).summary(), "summary: no chunks recorded");
    }
}
