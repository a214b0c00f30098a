//! The concurrent maps of the core's per-instance state, with a hasher seeded from the peer's
//! seed: iteration order (which backup gets room in the window first, say) then follows the
//! seed alone, so a simulated run replays exactly, while a real peer's random seed keeps the
//! hashes of keys from the network unpredictable.

use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasher, Hasher};

/// Shards of every map: fixed, so that iteration order does not depend on the machine's cores.
const SHARDS: usize = 16;

/// A concurrent map of the core.
pub type Map<K, V> = dashmap::DashMap<K, V, SeededState>;

/// SipHash (the standard library's) keyed by a seed absorbed before every key.
#[derive(Clone, Copy, Debug)]
pub struct SeededState(u64);

impl BuildHasher for SeededState {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// Constructors of [`Map`].
pub trait Seeded {
    /// An empty map whose hashes follow `seed`.
    fn seeded(seed: u64) -> Self;
}

impl<K: Eq + std::hash::Hash, V> Seeded for Map<K, V> {
    fn seeded(seed: u64) -> Self {
        dashmap::DashMap::with_hasher_and_shard_amount(SeededState(seed), SHARDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(seed: u64) -> Vec<u32> {
        let m: Map<u32, ()> = Map::seeded(seed);
        for k in 0..200 {
            m.insert(k, ());
        }
        m.iter().map(|e| *e.key()).collect()
    }

    #[test]
    fn iteration_order_follows_the_seed_alone() {
        assert_eq!(order(7), order(7));
        assert_ne!(order(7), order(8));
    }
}
