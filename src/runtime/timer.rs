//! A hashed timer wheel: `schedule(delay, event) -> handle`, `cancel(handle)`; one thread
//! advances it every tick and hands due events to a callback (the worker pool).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Names one scheduled event, for [`Wheel::cancel`] and [`TimerService::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    id: u64,
    slot: usize,
}

struct Entry<E> {
    id: u64,
    due: u64,
    event: E,
}

/// Room for this many entries a slot keeps at most once it has few left. A slot's Vec grows to
/// the largest burst due at its tick (REMOVED repeats after a large RECLAIM, STOREDs of a burst
/// of PUTCHUNKs: hundreds of entries of 208 bytes each); kept, that room added up over time as
/// bursts fell on other slots, until every slot held its largest burst (the heap grew by about
/// 400 kB a minute in a soak).
const SLOT_KEEP: usize = 4;

/// The wheel itself, in ticks, with no clock: deterministic and unit-tested.
pub struct Wheel<E> {
    slots: Vec<Vec<Entry<E>>>,
    /// Last tick advanced to.
    now: u64,
    next_id: u64,
    len: usize,
}

impl<E> Wheel<E> {
    /// A wheel with `slots` slots, at tick 0.
    pub fn new(slots: usize) -> Self {
        Wheel {
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            now: 0,
            next_id: 0,
            len: 0,
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tick last advanced to.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Schedules `event` for tick `due` (a past tick fires at the next advance).
    pub fn insert(&mut self, due: u64, event: E) -> TimerHandle {
        let due = due.max(self.now + 1);
        let slot = (due % self.slots.len() as u64) as usize;
        let id = self.next_id;
        self.next_id += 1;
        self.slots[slot].push(Entry { id, due, event });
        self.len += 1;
        TimerHandle { id, slot }
    }

    /// Removes a scheduled event; `None` if it already fired or was cancelled.
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<E> {
        let slot = self.slots.get_mut(handle.slot)?;
        let pos = slot.iter().position(|e| e.id == handle.id)?;
        self.len -= 1;
        Some(slot.swap_remove(pos).event)
    }

    /// Advances to tick `to`, returning every event due by then, earliest tick first.
    pub fn advance(&mut self, to: u64) -> Vec<E> {
        if to <= self.now {
            return Vec::new();
        }
        let n = self.slots.len() as u64;
        let ticks = (to - self.now).min(n);
        let mut due: Vec<Entry<E>> = Vec::new();
        for t in (self.now + 1)..=(self.now + ticks) {
            let slot = &mut self.slots[(t % n) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].due <= to {
                    due.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            // Give back the room of a burst once it has fired (with slack, so that a slot
            // refilled at every turn is not reallocated each time).
            if slot.capacity() > SLOT_KEEP && slot.len() <= slot.capacity() / 4 {
                slot.shrink_to((2 * slot.len()).max(SLOT_KEEP));
            }
        }
        due.sort_by_key(|e| (e.due, e.id));
        self.len -= due.len();
        self.now = to;
        due.into_iter().map(|e| e.event).collect()
    }

    /// Entries the slots have room for, all together.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.iter().map(Vec::capacity).sum()
    }
}

struct Inner<E> {
    wheel: Mutex<Wheel<E>>,
    start: Instant,
    tick: Duration,
    stop: AtomicBool,
}

impl<E> Inner<E> {
    fn ticks(&self, d: Duration) -> u64 {
        d.as_nanos().div_ceil(self.tick.as_nanos()) as u64
    }
}

/// A wheel driven by its own thread in real time.
pub struct TimerService<E: Send + 'static> {
    inner: Arc<Inner<E>>,
    thread: Option<JoinHandle<()>>,
}

impl<E: Send + 'static> TimerService<E> {
    /// Starts the thread; due events go to `fire`, on the timer thread (keep it short: hand
    /// the event to a worker).
    pub fn start(tick: Duration, slots: usize, fire: impl Fn(E) + Send + 'static) -> Self {
        let inner = Arc::new(Inner {
            wheel: Mutex::new(Wheel::new(slots)),
            start: Instant::now(),
            tick,
            stop: AtomicBool::new(false),
        });
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("timer-wheel".into())
            .spawn(move || {
                let inner = thread_inner;
                while !inner.stop.load(Ordering::Relaxed) {
                    let now = inner.start.elapsed();
                    let next = inner.tick * (inner.wheel.lock().now() as u32 + 1);
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let to = (inner.start.elapsed().as_nanos() / inner.tick.as_nanos()) as u64;
                    let fired = inner.wheel.lock().advance(to);
                    for e in fired {
                        fire(e);
                    }
                }
            })
            .expect("spawn timer thread");
        TimerService {
            inner,
            thread: Some(thread),
        }
    }

    /// Fires `event` after `delay` (rounded up to whole ticks).
    pub fn schedule(&self, delay: Duration, event: E) -> TimerHandle {
        let due = self.inner.ticks(self.inner.start.elapsed() + delay);
        self.inner.wheel.lock().insert(due, event)
    }

    /// Cancels a scheduled event; `None` if it already fired.
    pub fn cancel(&self, handle: TimerHandle) -> Option<E> {
        self.inner.wheel.lock().cancel(handle)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.inner.wheel.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<E: Send + 'static> Drop for TimerService<E> {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_due_order_and_only_when_due() {
        let mut w = Wheel::new(8);
        w.insert(5, "b");
        w.insert(3, "a");
        w.insert(20, "late"); // wraps the wheel more than twice
        assert!(w.advance(2).is_empty());
        assert_eq!(w.advance(5), vec!["a", "b"]);
        assert_eq!(w.len(), 1);
        assert!(w.advance(19).is_empty());
        assert_eq!(w.advance(20), vec!["late"]);
        assert!(w.is_empty());
    }

    #[test]
    fn long_jumps_fire_everything_due() {
        let mut w = Wheel::new(4);
        for due in [1, 2, 3, 4, 5, 9, 100] {
            w.insert(due, due);
        }
        assert_eq!(w.advance(50), vec![1, 2, 3, 4, 5, 9]);
        assert_eq!(w.advance(1000), vec![100]);
    }

    #[test]
    fn past_due_fires_at_next_advance_and_cancel_removes() {
        let mut w = Wheel::new(16);
        w.advance(10);
        w.insert(3, "past");
        let h = w.insert(12, "cancelled");
        assert_eq!(w.cancel(h), Some("cancelled"));
        assert_eq!(w.cancel(h), None);
        assert_eq!(w.advance(11), vec!["past"]);
        assert!(w.advance(30).is_empty());
    }

    #[test]
    fn slots_give_back_the_room_of_a_burst_once_it_fired() {
        let mut w = Wheel::new(64);
        let baseline = w.capacity();
        // Bursts due at one tick each (as REMOVED repeats after a large RECLAIM), on every
        // slot in turn, and one entry due two turns later that must stay.
        let late = w.insert(200, u32::MAX);
        for round in 0..64u64 {
            for i in 0..500 {
                w.insert(round + 1, i);
            }
        }
        assert!(w.capacity() >= 64 * 500);
        assert_eq!(w.advance(64).len(), 64 * 500);
        assert_eq!(w.len(), 1);
        assert!(
            w.capacity() <= baseline + 64 * SLOT_KEEP,
            "slots kept room for {} entries after the bursts fired (baseline {baseline})",
            w.capacity()
        );
        // A slot refilled a little at every turn keeps its room.
        let slot_of_3 = w.insert(64 + 3, 0);
        let kept = w.capacity();
        w.insert(64 + 3, 1);
        assert_eq!(w.capacity(), kept);
        assert_eq!(w.cancel(slot_of_3), Some(0));
        assert_eq!(w.advance(100), vec![1]);
        assert_eq!(w.cancel(late), Some(u32::MAX));
        assert!(w.is_empty());
    }

    #[test]
    fn service_fires_after_the_delay_and_cancels() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let svc = TimerService::start(Duration::from_millis(2), 64, move |e: u32| {
            let _ = tx.send((e, Instant::now()));
        });
        let t0 = Instant::now();
        svc.schedule(Duration::from_millis(30), 1);
        let h = svc.schedule(Duration::from_millis(10), 2);
        assert_eq!(svc.cancel(h), Some(2));
        let (e, at) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(e, 1);
        assert!(
            at - t0 >= Duration::from_millis(30),
            "fired early: {:?}",
            at - t0
        );
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "cancelled event fired"
        );
    }
}
