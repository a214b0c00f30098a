//! The worker pool with a bounded backlog: receivers never block; past the bound a datagram is
//! dropped and counted (the protocol's retransmissions recover it).
//!
//! The bound is in bytes, not jobs: a burst of small control messages (thousands of GETCHUNKs or
//! STOREDs) costs little memory and must not crowd out, or be dropped like, 64 KB chunk bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use threadpool::ThreadPool;

/// What one queued job costs besides its datagram (the closure, the queue slot, the allocation).
pub const JOB_OVERHEAD: usize = 256;

/// Room taken in a [`BoundedPool`]'s backlog (see [`BoundedPool::room`]).
pub struct Room {
    queued: Arc<AtomicUsize>,
    cost: usize,
}

impl Drop for Room {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.cost, Ordering::AcqRel);
    }
}

/// A thread pool whose queue of not-yet-started jobs from receivers is bounded in bytes.
pub struct BoundedPool {
    pool: ThreadPool,
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: AtomicU64,
}

impl BoundedPool {
    /// `workers` threads; at most `limit` bytes of queued jobs through
    /// [`BoundedPool::try_execute`].
    pub fn new(workers: usize, limit: usize) -> Self {
        BoundedPool {
            pool: ThreadPool::with_name("worker".into(), workers.max(1)),
            queued: Arc::new(AtomicUsize::new(0)),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `job`, which holds `bytes` of data, unless that would take the backlog past its
    /// bound; false (and counted) if dropped.
    pub fn try_execute(&self, bytes: usize, job: impl FnOnce() + Send + 'static) -> bool {
        let queued = self.offer(bytes, job).is_ok();
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Queues `job`, which holds `bytes` of data, unless that would take the backlog past its
    /// bound; then gives it back, not counted as dropped (the caller runs it itself).
    pub fn offer<F: FnOnce() + Send + 'static>(&self, bytes: usize, job: F) -> Result<(), F> {
        let cost = bytes + JOB_OVERHEAD;
        if self.queued.fetch_add(cost, Ordering::AcqRel) + cost > self.limit {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(job);
        }
        let queued = self.queued.clone();
        self.pool.execute(move || {
            queued.fetch_sub(cost, Ordering::AcqRel);
            job();
        });
        Ok(())
    }

    /// Room in the backlog for a job of `bytes` that does not exist yet (the message a piece
    /// may complete): taken now, given back when the [`Room`] is dropped, or when the job run
    /// in it ([`BoundedPool::execute_in`]) starts. `None` if the backlog has no such room (not
    /// counted: the caller drops what it holds).
    pub fn room(&self, bytes: usize) -> Option<Room> {
        let cost = bytes + JOB_OVERHEAD;
        if self.queued.fetch_add(cost, Ordering::AcqRel) + cost > self.limit {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return None;
        }
        Some(Room {
            queued: self.queued.clone(),
            cost,
        })
    }

    /// Queues `job` in the `room` taken for it.
    pub fn execute_in(&self, room: Room, job: impl FnOnce() + Send + 'static) {
        self.pool.execute(move || {
            drop(room);
            job();
        });
    }

    /// Queues internal work (timer events, client commands) that must not be dropped.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.execute(job);
    }

    /// Whether the backlog is more than an eighth full.
    pub fn filling(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > self.limit / 8
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
        // Room for two 1,000-byte jobs, or for many more small ones.
        let pool = BoundedPool::new(1, 2 * (1000 + JOB_OVERHEAD));
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
        // Occupy the only worker until the gate opens.
        pool.execute(move || {
            started_tx.send(()).unwrap();
            gate_rx.recv().unwrap();
        });
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |bytes| {
            let ran = ran.clone();
            pool.try_execute(bytes, move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let accepted: Vec<bool> = [1000, 1000, 1000, 0].into_iter().map(job).collect();
        assert_eq!(accepted, vec![true, true, false, false]);
        assert_eq!(pool.dropped(), 2);
        assert!(pool.filling(), "two of two jobs queued");
        gate_tx.send(()).unwrap();
        pool.join();
        assert!(!pool.filling());
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        // Once the backlog is empty, small jobs fit many to one large one.
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        pool.execute(move || gate_rx.recv().unwrap());
        let small = (0..8).filter(|_| job(50)).count();
        assert_eq!(small, 8);
        gate_tx.send(()).unwrap();
        pool.join();
        assert_eq!(ran.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn room_is_held_until_given_back_or_used() {
        let pool = BoundedPool::new(1, 2 * (1000 + JOB_OVERHEAD));
        let a = pool.room(1000).expect("room for one");
        let b = pool.room(1000).expect("room for two");
        assert!(pool.room(1000).is_none(), "the backlog is full of rooms");
        assert!(
            !pool.try_execute(0, || {}),
            "and has no room for a job either"
        );
        drop(a);
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.execute_in(b, move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        pool.join();
        assert!(!pool.filling(), "both rooms given back");
        assert!(pool.room(1000).is_some() && pool.room(1000).is_some());
    }
}
