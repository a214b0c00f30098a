//! Flow control of backups: an AIMD congestion window over the PUTCHUNKs this peer has in
//! flight (all its backups together), so that it sends as fast as the receivers store and
//! answer, and backs off when they fall behind, instead of relying on retransmissions.
//!
//! The signal is the protocol's own: a chunk that reaches its degree on its first send is an
//! acknowledgement; a PUTCHUNK wait that runs out (STOREDs lost, or later than the 1 s wait
//! because the receivers' queues or disks are full) is a congestion event. The window starts
//! small, doubles per round trip (slow start) up to a threshold, then grows by one chunk per
//! window of acknowledgements; a congestion event halves it, at most once per window of
//! chunks launched (as TCP does).
//!
//! A chunk with fewer STOREDs than expected well after the longest reply delay (the missing
//! ones wait in a storer's queues) is an early, milder congestion event: the window shrinks by
//! a fifth, at most once per window, so that the queues stay short before any resend or drop.
//!
//! Restores use the same window over their GETCHUNKs: a CHUNK is the acknowledgement, a
//! GETCHUNK wait that runs out is a congestion event, and so is a CHUNK that finds the
//! initiator's own receive queue filling up (the initiator is then the slowest part, and says
//! so before its queue overflows, as an ECN mark would).

/// The congestion window, in chunks.
#[derive(Debug, Clone)]
pub struct FlowControl {
    cwnd: f64,
    ssthresh: f64,
    min: f64,
    max: f64,
    in_flight: usize,
    /// Launches so far; a chunk remembers its launch number.
    launched: u64,
    /// Chunks launched before this number cannot cause another decrease.
    recover: u64,
}

impl FlowControl {
    /// A window starting at `initial` chunks, between `min` and `max`.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        let max = max.max(1) as f64;
        let min = (min.max(1) as f64).min(max);
        FlowControl {
            cwnd: (initial as f64).clamp(min, max),
            ssthresh: max,
            min,
            max,
            in_flight: 0,
            launched: 0,
            recover: 0,
        }
    }

    /// Whether another chunk may be launched now.
    pub fn can_launch(&self) -> bool {
        (self.in_flight as f64) < self.cwnd.floor()
    }

    /// A chunk is launched; returns its launch number.
    pub fn launch(&mut self) -> u64 {
        self.in_flight += 1;
        self.launched += 1;
        self.launched
    }

    /// A chunk finished (reached its degree, or ran out of sends). `first_try`: it reached its
    /// degree without a resend, which grows the window.
    pub fn finish(&mut self, first_try: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if first_try {
            let step = if self.cwnd < self.ssthresh {
                1.0
            } else {
                1.0 / self.cwnd
            };
            self.cwnd = (self.cwnd + step).min(self.max);
        }
    }

    /// A congestion event about the chunk launched as number `launch` (its wait ran out, or
    /// its reply found a queue filling up).
    pub fn congestion(&mut self, launch: u64) {
        if launch <= self.recover {
            return; // part of a congestion event already answered
        }
        self.ssthresh = (self.cwnd / 2.0).max(self.min);
        self.cwnd = self.ssthresh;
        self.recover = self.launched;
    }

    /// The chunk launched as number `launch` is late (a queue is building): the window shrinks
    /// by a fifth, at most once per window of launches, and grows linearly from there.
    pub fn late(&mut self, launch: u64) {
        if launch <= self.recover {
            return;
        }
        self.cwnd = (self.cwnd * 0.8).max(self.min);
        self.ssthresh = self.cwnd;
        self.recover = self.launched;
    }

    /// The window, in chunks.
    pub fn window(&self) -> usize {
        self.cwnd.floor() as usize
    }

    /// Chunks in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Launches what the window allows; returns the launch numbers.
    fn fill(f: &mut FlowControl) -> Vec<u64> {
        let mut v = Vec::new();
        while f.can_launch() {
            v.push(f.launch());
        }
        v
    }

    #[test]
    fn slow_start_doubles_the_window_each_round() {
        let mut f = FlowControl::new(4, 2, 1000);
        for want in [4, 8, 16, 32] {
            let round = fill(&mut f);
            assert_eq!(round.len(), want);
            for _ in round {
                f.finish(true);
            }
        }
        assert_eq!(f.window(), 64);
    }

    #[test]
    fn one_congestion_event_halves_once_then_growth_is_linear() {
        let mut f = FlowControl::new(64, 2, 1000);
        let round = fill(&mut f);
        // Several chunks of the same round time out: one halving only.
        for &l in &round[..10] {
            f.congestion(l);
        }
        assert_eq!(f.window(), 32);
        for _ in 0..64 {
            f.finish(false);
        }
        assert_eq!(f.in_flight(), 0);
        // Congestion avoidance: about one chunk more per window of acknowledgements.
        for _ in 0..34 {
            f.launch();
            f.finish(true);
        }
        assert_eq!(f.window(), 33);
        // A timeout of a chunk launched after the halving is a new event.
        let l = f.launch();
        f.congestion(l);
        assert_eq!(f.window(), 16);
    }

    #[test]
    fn a_late_chunk_shrinks_the_window_by_a_fifth_once_per_window() {
        let mut f = FlowControl::new(100, 4, 1000);
        let round = fill(&mut f);
        f.late(round[0]);
        f.late(round[1]);
        assert_eq!(f.window(), 80);
        // Chunks launched later count again; a timeout after a late one still halves.
        let l = f.launch();
        f.late(l);
        assert_eq!(f.window(), 64);
        let l = f.launch();
        f.congestion(l);
        assert_eq!(f.window(), 32);
        // Linear growth from there (no slow start): about one chunk per window.
        for _ in 0..34 {
            let _ = f.launch();
            f.finish(true);
        }
        assert_eq!(f.window(), 32 + 1);
    }

    #[test]
    fn the_window_stays_within_its_bounds() {
        let mut f = FlowControl::new(8, 4, 10);
        for _ in 0..100 {
            let l = f.launch();
            f.finish(true);
            assert!(f.window() <= 10);
            let _ = l;
        }
        assert_eq!(f.window(), 10);
        for _ in 0..10 {
            let l = f.launch();
            f.congestion(l);
            f.finish(false);
        }
        assert_eq!(f.window(), 4);
        assert!(f.can_launch());
    }
}
