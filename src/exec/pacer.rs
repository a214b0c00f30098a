//! Send pacing: one byte rate shared by a peer's channels, allowing a short burst, so that
//! bursts do not overrun the receivers' buffers. Time is a [`Duration`] since any fixed
//! start: the real clock's, or the simulator's virtual one.
//!
//! The rate adapts below its cap: loss signals (NACKs for pieces this peer sent) take a tenth
//! off, at most once per [`SLOW_GAP`], down to a twentieth of the cap; every [`GROW_EVERY`],
//! on a clock the signals do not reset, a twentieth of the cap comes back. So steady random
//! loss (a signal every few milliseconds) costs a balance near the cap, not the floor.

use std::time::Duration;

use parking_lot::Mutex;

/// Loss signals closer together than this count once.
pub const SLOW_GAP: Duration = Duration::from_millis(100);
/// The rate grows back this often.
pub const GROW_EVERY: Duration = Duration::from_millis(50);

/// Paces sends to a rate of at most `cap` bytes per second across all channels, allowing a
/// short burst.
pub struct Pacer {
    cap: f64,
    burst: Duration,
    state: Mutex<State>,
}

struct State {
    next: Duration,
    rate: f64,
    /// When the rate last went down, and last went up.
    slowed: Duration,
    grown: Duration,
}

impl Pacer {
    /// A pacer for at most `rate` bytes/s (0 = unpaced).
    pub fn new(rate: u64) -> Self {
        Pacer {
            cap: rate as f64,
            burst: Duration::from_millis(2),
            state: Mutex::new(State {
                next: Duration::ZERO,
                rate: rate as f64,
                slowed: Duration::ZERO,
                grown: Duration::ZERO,
            }),
        }
    }

    /// How long to wait before sending `bytes` at time `now`; reserves the slot.
    pub fn reserve(&self, bytes: usize, now: Duration) -> Duration {
        if self.cap <= 0.0 {
            return Duration::ZERO;
        }
        let mut st = self.state.lock();
        if now.saturating_sub(st.grown) >= GROW_EVERY {
            st.rate = (st.rate + self.cap / 20.0).min(self.cap);
            st.grown = now;
        }
        let start = st.next.max(now.saturating_sub(self.burst));
        st.next = start + Duration::from_secs_f64(bytes as f64 / st.rate);
        start.saturating_sub(now)
    }

    /// A loss signal at `now`: the rate goes down (see the module's doc).
    pub fn slow_down(&self, now: Duration) {
        if self.cap <= 0.0 {
            return;
        }
        let mut st = self.state.lock();
        if now.saturating_sub(st.slowed) >= SLOW_GAP || st.slowed.is_zero() {
            st.rate = (st.rate * 0.9).max(self.cap / 20.0);
            st.slowed = now.max(Duration::from_nanos(1));
        }
    }

    /// The rate now, bytes per second.
    pub fn rate(&self) -> f64 {
        self.state.lock().rate
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

    #[test]
    fn loss_signals_slow_it_and_clean_time_lets_it_grow_back_to_the_cap() {
        let p = Pacer::new(100_000_000);
        let t = Duration::from_secs(1);
        p.slow_down(t);
        p.slow_down(t + Duration::from_millis(1)); // within SLOW_GAP: once
        assert_eq!(p.rate(), 90_000_000.0);
        for i in 1..=100 {
            p.slow_down(t + SLOW_GAP * i);
        }
        assert_eq!(p.rate(), 5_000_000.0, "floor: a twentieth of the cap");
        let mut now = t + SLOW_GAP * 100;
        for _ in 0..25 {
            now += GROW_EVERY;
            p.reserve(1, now);
        }
        assert_eq!(p.rate(), 100_000_000.0);
        // Found in review: a loss signal every 20 ms (steady 1 % loss) must not sink it to the
        // floor: growth runs on its own clock.
        let p = Pacer::new(100_000_000);
        let mut now = Duration::from_secs(1);
        for _ in 0..500 {
            now += Duration::from_millis(20);
            p.slow_down(now);
            p.reserve(1, now);
        }
        assert!(p.rate() > 60_000_000.0, "{}", p.rate());
    }
}
