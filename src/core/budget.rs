//! Per-sender budgets for the work that costs this peer bytes, in every mode: the bytes one
//! home may store here (its share of the capacity, [`quota`]), the CHUNK replies one requester
//! gets (bytes per second, and one answer per chunk per [`REPEAT_PERIODS`]), and the
//! re-backups REMOVEDs from one sender start (chunks per second, [`REBACKUPS_PER_SECOND`]).
//!
//! The core keeps no clock: the buckets refill every [`PERIOD`] on a timer
//! ([`TimerEvent::BudgetPeriod`]) that runs only while some budget is drawn, a reply is
//! outstanding, an answer is remembered or a re-backup waits, so an idle peer schedules
//! nothing. Sender ids are not authenticated in plain mode: these budgets bind an honest but
//! greedy peer and a naive flooder, not one that varies its id (docs/protocol.md, "Limits").

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{Action, Core, TimerEvent};
use crate::protocol::{ChunkKey, PeerId};

/// How often the budgets refill (and the clock of repeated GETCHUNKs advances).
pub const PERIOD: Duration = Duration::from_millis(100);

/// [`PERIOD`]s in a second.
const PERIODS_PER_SECOND: u64 = 10;

/// Default share of this peer's capacity one home may fill ([`super::Config::max_share`]):
/// half, so that a flood under one id leaves the other half to the other homes, while a
/// group of two (one home, one storer) can still hold the home's data at degree 1 in half the
/// storer's disk.
pub const DEFAULT_MAX_SHARE: f64 = 0.5;

/// Default budget of CHUNK replies per requester, bytes per second
/// ([`super::Config::reply_budget`]): 256 MB/s, above what one holder sends at all under the
/// default pacing (`--rate` 250 MB/s), so a legitimate restore is never throttled, while a
/// GETCHUNK flood under one id gets at most that from each holder.
pub const DEFAULT_REPLY_BUDGET: u64 = 256_000_000;

/// A GETCHUNK repeated by the same requester for a chunk this peer answered it is ignored if
/// it arrives within this many whole periods after the one the answered GETCHUNK arrived in:
/// 0.4 to 0.5 s later. That is shorter than the initiator's first resend (0.6 s,
/// `getchunk_wait`), so a resend after a lost CHUNK is always answered, while a flood of one
/// chunk gets at most about two answers a second.
pub const REPEAT_PERIODS: u64 = 4;

/// Re-backups REMOVEDs from one sender may start here per second (a bucket of as many, that
/// refills at that rate). The others wait their turn (their watch stays; the chunk is checked
/// again once the sender's budget allows, and nothing is sent if the degree came back
/// meanwhile). 250 chunks are 16 MB/s of PUTCHUNK bodies, a sixteenth of the default send rate:
/// a flood of forged REMOVEDs under one id (each ~100 bytes, each worth a 64 KB PUTCHUNK and its
/// resends) cannot take more of a holder's sending, while a peer that reclaims 1 GB (15,625
/// chunks) has them re-backed up within about a minute by one holder, sooner when several
/// hold them.
pub const REBACKUPS_PER_SECOND: u64 = 250;

/// Senders with a budget of their own at most (per kind of budget): past that, the senders
/// not yet tracked share one budget. A flood under many forged ids then shares one, as do the
/// honest senders that arrive during it.
pub const MAX_SENDERS: usize = 4096;

/// Answered GETCHUNKs remembered at most (the oldest forgotten first).
pub const MAX_ANSWERS: usize = 65_536;

/// The quota of one home on a peer of `capacity` bytes, if there is one: `share` of it
/// (rounded down). None when `share` is 1 or more, or the capacity is unlimited (`u64::MAX`).
pub fn quota(capacity: u64, share: f64) -> Option<u64> {
    (share < 1.0 && capacity != u64::MAX).then(|| (capacity as f64 * share.max(0.0)) as u64)
}

/// Whose budget a piece of work is drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Payer {
    /// A sender with a budget of its own.
    Peer(PeerId),
    /// The senders past [`MAX_SENDERS`], together.
    Crowd,
}

/// Token buckets, one per payer, of `cap` tokens refilled by `refill` a period; a payer not
/// in `left` has a full bucket.
#[derive(Debug)]
struct Buckets {
    cap: u64,
    refill: u64,
    left: BTreeMap<Payer, u64>,
}

impl Buckets {
    /// Buckets of `per_second` tokens (a second's worth), refilled at that rate.
    fn new(per_second: u64) -> Self {
        Buckets {
            cap: per_second,
            refill: per_second.div_ceil(PERIODS_PER_SECOND),
            left: BTreeMap::new(),
        }
    }

    fn payer(&self, peer: PeerId) -> Payer {
        let p = Payer::Peer(peer);
        if self.left.contains_key(&p) || self.left.len() < MAX_SENDERS {
            p
        } else {
            Payer::Crowd
        }
    }

    /// Tokens `peer`'s payer has left.
    fn tokens(&self, payer: Payer) -> u64 {
        self.left.get(&payer).copied().unwrap_or(self.cap)
    }

    /// Takes `cost` tokens (at most a full bucket's) from `peer`'s payer, if it has them.
    fn take(&mut self, peer: PeerId, cost: u64) -> Option<Payer> {
        let payer = self.payer(peer);
        let cost = cost.min(self.cap);
        let left = self.tokens(payer).checked_sub(cost)?;
        self.left.insert(payer, left);
        Some(payer)
    }

    /// Gives `cost` tokens back to `payer` (work drawn for and not done).
    fn give_back(&mut self, payer: Payer, cost: u64) {
        if let Some(left) = self.left.get_mut(&payer) {
            *left = left.saturating_add(cost.min(self.cap));
            if *left >= self.cap {
                self.left.remove(&payer);
            }
        }
    }

    /// One period's refill; full buckets are forgotten.
    fn refill(&mut self) {
        let (cap, refill) = (self.cap, self.refill);
        self.left.retain(|_, left| {
            *left = left.saturating_add(refill);
            *left < cap
        });
    }
}

/// A CHUNK reply drawn from a requester's budget, until it goes out or is not needed.
#[derive(Clone, Copy, Debug)]
pub struct Drawn {
    /// Whose budget.
    payer: Payer,
    /// Bytes drawn.
    cost: u64,
    /// The requester.
    requester: PeerId,
    /// The period its GETCHUNK arrived in.
    asked: u64,
}

/// Every per-sender budget of a peer (in its core, behind a mutex).
#[derive(Debug)]
pub struct Budgets {
    /// Periods so far (while the timer runs; it stands still while nothing is tracked).
    now: u64,
    /// CHUNK replies, bytes (`None`: no budget).
    replies: Option<Buckets>,
    /// Replies drawn and not yet sent or given back.
    outstanding: usize,
    /// Re-backups after REMOVED, chunks.
    rebackups: Buckets,
    /// Chunks whose re-backup waits for their REMOVED sender's budget, in order.
    waiting: BTreeMap<Payer, VecDeque<ChunkKey>>,
    /// Chunks released from `waiting`, their re-backup drawn already, until checked again.
    released: BTreeMap<ChunkKey, Payer>,
    /// GETCHUNKs answered recently: the period each arrived in, by requester and chunk.
    answered: BTreeMap<(PeerId, ChunkKey), u64>,
    /// The same, oldest first (to forget them).
    answered_order: VecDeque<(u64, PeerId, ChunkKey)>,
    /// The period timer is scheduled.
    timer: bool,
}

impl Budgets {
    /// Budgets with `reply_budget` bytes per second of CHUNK replies per requester (0: none).
    pub fn new(reply_budget: u64) -> Self {
        Budgets {
            now: 0,
            replies: (reply_budget > 0).then(|| Buckets::new(reply_budget)),
            outstanding: 0,
            rebackups: Buckets::new(REBACKUPS_PER_SECOND),
            waiting: BTreeMap::new(),
            released: BTreeMap::new(),
            answered: BTreeMap::new(),
            answered_order: VecDeque::new(),
            timer: false,
        }
    }

    /// Whether `requester` was answered `chunk` less than [`REPEAT_PERIODS`] ago.
    pub fn repeated(&self, requester: PeerId, chunk: ChunkKey) -> bool {
        self.answered
            .get(&(requester, chunk))
            .is_some_and(|&at| self.now - at <= REPEAT_PERIODS)
    }

    /// Draws a CHUNK reply of `cost` bytes to `requester` from its budget, if it has room.
    pub fn draw_reply(&mut self, requester: PeerId, cost: u64) -> Option<Drawn> {
        let payer = match &mut self.replies {
            Some(b) => b.take(requester, cost)?,
            None => Payer::Peer(requester),
        };
        self.outstanding += 1;
        Some(Drawn {
            payer,
            cost,
            requester,
            asked: self.now,
        })
    }

    /// A reply drawn is not sent (another holder answered, the chunk went): its bytes go back.
    pub fn reply_dropped(&mut self, d: Drawn) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(b) = &mut self.replies {
            b.give_back(d.payer, d.cost);
        }
    }

    /// A reply drawn goes out: its requester's repeats are ignored for a while.
    pub fn reply_sent(&mut self, d: Drawn, chunk: ChunkKey) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self
            .answered
            .insert((d.requester, chunk), d.asked)
            .is_none()
        {
            self.answered_order.push_back((d.asked, d.requester, chunk));
        }
        while self.answered_order.len() > MAX_ANSWERS {
            self.forget_oldest_answer();
        }
    }

    fn forget_oldest_answer(&mut self) {
        if let Some((at, requester, chunk)) = self.answered_order.pop_front()
            && self.answered.get(&(requester, chunk)) == Some(&at)
        {
            self.answered.remove(&(requester, chunk));
        }
    }

    /// Draws one re-backup of `chunk` from REMOVED sender `sender`'s budget (drawn already if
    /// the chunk was just released); without room, or with chunks of that sender waiting
    /// already, the chunk waits its turn.
    pub fn draw_rebackup(&mut self, sender: PeerId, chunk: ChunkKey) -> bool {
        if self.released.remove(&chunk).is_some() {
            return true;
        }
        let payer = self.rebackups.payer(sender);
        let queued = self.waiting.get(&payer).is_some_and(|q| !q.is_empty());
        if !queued && self.rebackups.take(sender, 1).is_some() {
            return true;
        }
        self.waiting.entry(payer).or_default().push_back(chunk);
        false
    }

    /// A chunk released from waiting needs no re-backup after all (its degree came back, its
    /// watch ended): the re-backup drawn for it goes back.
    pub fn rebackup_not_needed(&mut self, chunk: ChunkKey) {
        if let Some(payer) = self.released.remove(&chunk) {
            self.rebackups.give_back(payer, 1);
        }
    }

    /// One period is over: the budgets refill, answers older than [`REPEAT_PERIODS`] are
    /// forgotten, and the chunks waiting for a re-backup are released as their senders'
    /// budgets allow (each is checked again, [`TimerEvent::CheckDegree`]).
    pub fn period_over(&mut self) -> Vec<ChunkKey> {
        self.now += 1;
        if let Some(b) = &mut self.replies {
            b.refill();
        }
        self.rebackups.refill();
        while let Some(&(at, _, _)) = self.answered_order.front() {
            if self.now - at <= REPEAT_PERIODS {
                break;
            }
            self.forget_oldest_answer();
        }
        let mut released = Vec::new();
        for (&payer, queue) in &mut self.waiting {
            let room = self.rebackups.tokens(payer);
            let n = (room as usize).min(queue.len());
            if n == 0 {
                continue;
            }
            self.rebackups.left.insert(payer, room - n as u64);
            for chunk in queue.drain(..n) {
                self.released.insert(chunk, payer);
                released.push(chunk);
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        released
    }

    /// Whether anything needs the period timer.
    fn busy(&self) -> bool {
        self.outstanding > 0
            || self.replies.as_ref().is_some_and(|b| !b.left.is_empty())
            || !self.rebackups.left.is_empty()
            || !self.waiting.is_empty()
            || !self.released.is_empty()
            || !self.answered.is_empty()
    }

    /// Whether the period timer must be scheduled now (it was not, and something needs it).
    fn arm(&mut self) -> bool {
        let start = !self.timer && self.busy();
        self.timer |= start;
        start
    }
}

impl Core {
    /// The period timer, if the budgets need it and it is not scheduled.
    pub(super) fn budget_timer(&self) -> Option<Action> {
        self.budgets.lock().arm().then_some(Action::Schedule {
            delay: PERIOD,
            event: TimerEvent::BudgetPeriod,
        })
    }

    /// [`TimerEvent::BudgetPeriod`]: refills the budgets, checks the chunks whose re-backups
    /// may start now, and schedules the next period while anything is tracked.
    pub(super) fn budget_period(&self) -> Vec<Action> {
        let mut budgets = self.budgets.lock();
        let released = budgets.period_over();
        budgets.timer = false;
        drop(budgets);
        let mut actions: Vec<Action> = released
            .into_iter()
            .map(|chunk| Action::Schedule {
                delay: Duration::ZERO,
                event: TimerEvent::CheckDegree { chunk },
            })
            .collect();
        actions.extend(self.budget_timer());
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FileId;

    fn key(no: u32) -> ChunkKey {
        ChunkKey {
            file: FileId([1; 32]),
            no,
        }
    }

    #[test]
    fn a_quota_is_a_share_of_a_limited_capacity() {
        assert_eq!(quota(1000, 0.5), Some(500));
        assert_eq!(quota(1001, 0.5), Some(500));
        assert_eq!(quota(1000, 1.0), None);
        assert_eq!(quota(u64::MAX, 0.5), None);
        assert_eq!(quota(0, 0.5), Some(0));
    }

    #[test]
    fn reply_buckets_refill_per_period_and_take_back_what_was_not_sent() {
        let mut b = Budgets::new(100);
        let draws: Vec<_> = (0..10).map(|_| b.draw_reply(1, 10)).collect();
        assert!(draws.iter().all(Option::is_some));
        assert!(b.draw_reply(1, 10).is_none(), "a second's worth at most");
        assert!(
            b.draw_reply(2, 10).is_some(),
            "another requester has its own"
        );
        b.reply_dropped(draws[0].unwrap());
        assert!(b.draw_reply(1, 10).is_some(), "given back");
        assert!(b.draw_reply(1, 1).is_none());
        b.period_over();
        assert!(b.draw_reply(1, 10).is_some(), "a tenth back each period");
        assert!(b.draw_reply(1, 1).is_none());
        // A chunk larger than the whole budget is answered once a full bucket has it all.
        let mut small = Budgets::new(5);
        assert!(small.draw_reply(1, 64_000).is_some());
        assert!(small.draw_reply(1, 1).is_none());
        assert!(
            Budgets::new(0).draw_reply(1, u64::MAX).is_some(),
            "no budget"
        );
    }

    #[test]
    fn an_answer_silences_repeats_for_four_periods_only() {
        let mut b = Budgets::new(1000);
        let d = b.draw_reply(1, 10).unwrap();
        assert!(b.arm());
        assert!(!b.arm(), "once");
        b.period_over(); // the reply went out in the next period
        b.reply_sent(d, key(0));
        assert!(b.repeated(1, key(0)));
        assert!(!b.repeated(2, key(0)) && !b.repeated(1, key(1)));
        for _ in 0..3 {
            b.period_over();
            assert!(b.repeated(1, key(0)));
        }
        b.period_over();
        assert!(!b.repeated(1, key(0)), "five periods after its GETCHUNK");
        for _ in 0..10 {
            b.period_over();
        }
        assert!(!b.busy(), "all refilled and forgotten");
    }

    #[test]
    fn senders_past_the_limit_share_one_budget() {
        let mut b = Budgets::new(10);
        for p in 0..MAX_SENDERS as u32 {
            assert_eq!(b.draw_reply(p, 10).unwrap().payer, Payer::Peer(p));
        }
        let new = b.draw_reply(u32::MAX, 6).unwrap();
        assert_eq!(new.payer, Payer::Crowd);
        assert!(
            b.draw_reply(u32::MAX - 1, 6).is_none(),
            "the crowd's budget is one"
        );
    }

    #[test]
    fn rebackups_past_the_budget_wait_in_order_and_are_released_as_it_refills() {
        let mut b = Budgets::new(1);
        let n = REBACKUPS_PER_SECOND as u32;
        assert!((0..n).all(|no| b.draw_rebackup(7, key(no))));
        assert!(!b.draw_rebackup(7, key(n)));
        assert!(!b.draw_rebackup(7, key(n + 1)));
        assert!(b.draw_rebackup(8, key(0)), "another sender has its own");
        assert!(!b.draw_rebackup(7, key(n + 2)));
        // A period's refill releases them, first come first, their re-backups drawn already.
        assert_eq!(b.period_over(), vec![key(n), key(n + 1), key(n + 2)]);
        assert!(b.waiting.is_empty());
        let refill = REBACKUPS_PER_SECOND.div_ceil(PERIODS_PER_SECOND);
        assert_eq!(b.rebackups.tokens(Payer::Peer(7)), refill - 3);
        assert!(b.draw_rebackup(7, key(n)), "released, drawn already");
        b.rebackup_not_needed(key(n + 1));
        assert_eq!(b.rebackups.tokens(Payer::Peer(7)), refill - 2, "given back");
    }
}
