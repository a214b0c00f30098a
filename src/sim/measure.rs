//! The measurement log of a simulated run (as Protopeer's MeasurementLog): one JSON line per
//! simulated second, for analysis after the run.

use std::io::Write;

use super::world::World;

impl World {
    /// Writes this second's line, if a measurement log is kept.
    pub(super) fn measure(&mut self) {
        if self.measure.is_none() {
            return;
        }
        let now = &self.counts;
        let was = &self.measured;
        let sent: Vec<serde_json::Value> = now
            .sent
            .iter()
            .zip(&was.sent)
            .map(|(n, w)| {
                serde_json::json!({"datagrams": n.datagrams - w.datagrams, "bytes": n.bytes - w.bytes})
            })
            .collect();
        let stored: Vec<u64> = self.slots.iter().map(|s| s.disk.chunk_bytes()).collect();
        let line = serde_json::json!({
            "t": self.now.as_secs(),
            "sent": {"MC": sent[0], "MDB": sent[1], "MDR": sent[2]},
            "lost": now.lost - was.lost,
            "queue_full": now.queue_full - was.queue_full,
            "unreachable": now.unreachable - was.unreachable,
            "chunks_below_degree": self.chunks_below_degree(),
            "ops_in_flight": self.ledger.in_flight(),
            "ops_done": self.ledger.ops_done,
            "peers_up": self.slots.iter().filter(|s| s.exec.is_some()).count(),
            "stored_bytes": stored,
        });
        self.measured = self.counts.clone();
        if let Some(m) = &mut self.measure {
            let _ = writeln!(m, "{line}");
        }
    }
}
