//! The worker pool with a bounded backlog: receivers never block; past the bound a datagram is
//! dropped and counted (the protocol's retransmissions recover it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use threadpool::ThreadPool;

/// A thread pool whose queue of not-yet-started jobs from receivers is bounded.
pub struct BoundedPool {
    pool: ThreadPool,
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: AtomicU64,
}

impl BoundedPool {
    /// `workers` threads; at most `limit` queued jobs through [`BoundedPool::try_execute`].
    pub fn new(workers: usize, limit: usize) -> Self {
        BoundedPool {
            pool: ThreadPool::with_name("worker".into(), workers.max(1)),
            queued: Arc::new(AtomicUsize::new(0)),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `job` unless the backlog is full; false (and counted) if dropped.
    pub fn try_execute(&self, job: impl FnOnce() + Send + 'static) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let queued = self.queued.clone();
        self.pool.execute(move || {
            queued.fetch_sub(1, Ordering::AcqRel);
            job();
        });
        true
    }

    /// Queues internal work (timer events, client commands) that must not be dropped.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.execute(job);
    }

    /// Jobs dropped because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every queued job ran.
    pub fn join(&self) {
        self.pool.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drops_past_the_bound_and_counts() {
        let pool = BoundedPool::new(1, 2);
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
        // Occupy the only worker until the gate opens.
        pool.execute(move || {
            started_tx.send(()).unwrap();
            gate_rx.recv().unwrap();
        });
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let accepted: Vec<bool> = (0..4)
            .map(|_| {
                let ran = ran.clone();
                pool.try_execute(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        assert_eq!(accepted, vec![true, true, false, false]);
        assert_eq!(pool.dropped(), 2);
        gate_tx.send(()).unwrap();
        pool.join();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
