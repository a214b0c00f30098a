//! Who holds a durable copy of each chunk, over every simulated disk, and which chunks lost
//! their last copy (for the invariant that an acknowledged chunk is never lost).

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;

use crate::protocol::ChunkKey;

/// Durable copies of every chunk in the simulated group.
#[derive(Default)]
pub struct Copies {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    holders: BTreeMap<ChunkKey, BTreeSet<u32>>,
    /// Chunks whose last copy went since the last [`Copies::take_lost`], and from which disk.
    lost: Vec<(ChunkKey, u32)>,
}

impl Copies {
    /// Disk `who` now holds `chunk` durably.
    pub fn add(&self, chunk: ChunkKey, who: u32) {
        self.state
            .lock()
            .holders
            .entry(chunk)
            .or_default()
            .insert(who);
    }

    /// Disk `who` no longer holds `chunk`.
    pub fn remove(&self, chunk: ChunkKey, who: u32) {
        let mut st = self.state.lock();
        if let Some(h) = st.holders.get_mut(&chunk) {
            h.remove(&who);
            if h.is_empty() {
                st.holders.remove(&chunk);
                st.lost.push((chunk, who));
            }
        }
    }

    /// Number of disks holding `chunk`.
    pub fn count(&self, chunk: &ChunkKey) -> usize {
        self.state
            .lock()
            .holders
            .get(chunk)
            .map_or(0, BTreeSet::len)
    }

    /// The chunks that lost their last copy since the last call.
    pub fn take_lost(&self) -> Vec<(ChunkKey, u32)> {
        std::mem::take(&mut self.state.lock().lost)
    }
}
