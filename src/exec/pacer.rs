//! Send pacing: one byte rate shared by a peer's channels, allowing a short burst, so that
//! bursts do not overrun the receivers' buffers. Time is a [`Duration`] since any fixed
//! start: the real clock's, or the simulator's virtual one.

use std::time::Duration;

use parking_lot::Mutex;

/// Paces sends to `rate` bytes per second across all channels, allowing a short burst.
pub struct Pacer {
    rate: f64,
    burst: Duration,
    next: Mutex<Duration>,
}

impl Pacer {
    /// A pacer for `rate` bytes/s (0 = unpaced).
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate: rate as f64,
            burst: Duration::from_millis(2),
            next: Mutex::new(Duration::ZERO),
        }
    }

    /// How long to wait before sending `bytes` at time `now`; reserves the slot.
    pub fn reserve(&self, bytes: usize, now: Duration) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut next = self.next.lock();
        let start = (*next).max(now.saturating_sub(self.burst));
        *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        start.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_sends_by_rate() {
        let p = Pacer::new(1_000_000); // 1 MB/s: 64 kB takes 64 ms
        let t0 = Duration::from_secs(5);
        assert_eq!(p.reserve(64_000, t0), Duration::ZERO);
        let w = p.reserve(64_000, t0);
        assert!(
            w >= Duration::from_millis(60) && w <= Duration::from_millis(64),
            "{w:?}"
        );
        assert_eq!(Pacer::new(0).reserve(1 << 20, t0), Duration::ZERO);
    }
}
