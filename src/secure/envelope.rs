//! The authenticated envelope of every message of a secure group, and the replay check.
//!
//! A sealed datagram (or TCP frame) is
//! `MAGIC (4) | boot (8) | seq (8) | sent_ms (8) | message | HMAC-SHA256 (32)`, big-endian,
//! the MAC under the group's key over everything before it. `boot` is the sender's start time
//! in microseconds (a restarted sender's is larger), `seq` counts its messages since, `sent_ms`
//! is its clock when it sealed the message. A receiver takes a message only if its MAC is
//! right, it was sealed within [`MAX_AGE_MS`] of the receiver's clock and not before the
//! receiver started (what it saw in an earlier life cannot come back), and its `(boot, seq)`
//! was not taken before from that sender. What was taken is remembered for as long as a
//! replay of it could still be fresh ([`SEEN_KEEP_MS`]), as a sparse bitmap of sequence
//! numbers per boot, not as a window below the highest one: a rogue member who seals a message
//! in another's name with a huge sequence number (or a later boot) silences no one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use super::keys::{GroupKey, hmac};
use crate::protocol::{PeerId, peek_sender};

/// The first bytes of a sealed message (a plain message starts with its type, in letters).
pub const MAGIC: [u8; 4] = *b"\x00DBS";
/// Bytes before the message.
pub const HEADER: usize = 4 + 8 + 8 + 8;
/// Bytes after it.
pub const TAG: usize = 32;
/// Bytes sealing adds.
pub const OVERHEAD: usize = HEADER + TAG;
/// A message sealed longer ago than this (or this far in the receiver's future) is dropped:
/// the peers' clocks must agree within it (NTP does far better).
pub const MAX_AGE_MS: u64 = 30_000;
/// A sequence number taken is remembered this long (a replay older than [`MAX_AGE_MS`] is
/// stale anyway; twice that covers the clocks' disagreement).
pub const SEEN_KEEP_MS: u64 = 2 * MAX_AGE_MS + 5_000;
/// Boots of one sender remembered (the least recently used goes first).
pub const BOOTS: usize = 4;
/// Senders remembered (the least recently used goes first): a member forging many ids
/// cannot grow the table without bound.
pub const SENDERS: usize = 4096;

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not sealed at all (a plain peer's, or junk).
    #[error("not sealed")]
    Unsealed,
    /// Sealed, but not for this group (another key) or altered.
    #[error("bad MAC")]
    BadMac,
    /// Sealed too long ago, in the future, or before this peer started.
    #[error("too old")]
    Stale,
    /// Seen before (or older than the window).
    #[error("replayed")]
    Replayed,
}

/// Seals what one peer sends.
pub struct Sealer {
    key: std::sync::Arc<GroupKey>,
    boot: u64,
    seq: AtomicU64,
}

impl Sealer {
    /// A sealer for a peer that started at `boot_us` (microseconds since the epoch).
    pub fn new(key: std::sync::Arc<GroupKey>, boot_us: u64) -> Sealer {
        Sealer {
            key,
            boot: boot_us,
            seq: AtomicU64::new(0),
        }
    }

    /// `message` sealed at `now_ms`.
    pub fn seal(&self, message: &[u8], now_ms: u64) -> Vec<u8> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(message.len() + OVERHEAD);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(message);
        let tag = hmac(self.key.mac_key(), &[&out]);
        out.extend_from_slice(&tag);
        out
    }
}

/// The sequence numbers taken lately from one boot of a sender: 64 to a word, each word
/// with when it last took one.
#[derive(Debug)]
struct Window {
    boot: u64,
    /// When it last took a message (the opener's count of messages taken).
    used: u64,
    words: HashMap<u64, (u64, u64)>,
}

impl Window {
    fn new(boot: u64) -> Window {
        Window {
            boot,
            used: 0,
            words: HashMap::new(),
        }
    }

    /// Records `seq` at `now_ms`; false if it was taken before.
    fn admit(&mut self, seq: u64, now_ms: u64) -> bool {
        let (bits, last) = self.words.entry(seq / 64).or_insert((0, now_ms));
        let bit = 1u64 << (seq % 64);
        if *bits & bit != 0 {
            return false;
        }
        *bits |= bit;
        *last = now_ms;
        true
    }

    /// Forgets the words no replay of which could be fresh at `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        self.words
            .retain(|_, (_, last)| now_ms.saturating_sub(*last) <= SEEN_KEEP_MS);
    }
}

/// Opens what one peer receives.
pub struct Opener {
    key: std::sync::Arc<GroupKey>,
    started_ms: u64,
    windows: Mutex<Windows>,
}

/// Every sender's windows, and the count of messages taken (for least recently used).
#[derive(Default)]
struct Windows {
    by_sender: HashMap<PeerId, (u64, Vec<Window>)>,
    taken: u64,
}

impl Opener {
    /// An opener for a peer that started at `started_ms` (milliseconds since the epoch).
    pub fn new(key: std::sync::Arc<GroupKey>, started_ms: u64) -> Opener {
        Opener {
            key,
            started_ms,
            windows: Mutex::new(Windows::default()),
        }
    }

    /// The message inside `sealed`, if it is authentic, fresh and new, at `now_ms`.
    pub fn open<'a>(&self, sealed: &'a [u8], now_ms: u64) -> Result<&'a [u8], Rejected> {
        if sealed.len() < OVERHEAD || sealed[..4] != MAGIC {
            return Err(Rejected::Unsealed);
        }
        let (body, tag) = sealed.split_at(sealed.len() - TAG);
        let expected = hmac(self.key.mac_key(), &[body]);
        if !bool::from(expected.ct_eq(tag)) {
            return Err(Rejected::BadMac);
        }
        let field = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (boot, seq, sent) = (field(4), field(12), field(20));
        if sent.saturating_add(MAX_AGE_MS) < now_ms
            || sent > now_ms.saturating_add(MAX_AGE_MS)
            || sent < self.started_ms
        {
            return Err(Rejected::Stale);
        }
        let message = &body[HEADER..];
        let sender = peek_sender(message).ok_or(Rejected::BadMac)?;
        let mut windows = self.windows.lock();
        windows.taken += 1;
        let taken = windows.taken;
        if taken.is_multiple_of(4096) {
            for (_, boots) in windows.by_sender.values_mut() {
                boots.iter_mut().for_each(|w| w.prune(now_ms));
            }
        }
        if !windows.by_sender.contains_key(&sender)
            && windows.by_sender.len() >= SENDERS
            && let Some(lru) = windows
                .by_sender
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(id, _)| *id)
        {
            windows.by_sender.remove(&lru);
        }
        let (used, boots) = windows.by_sender.entry(sender).or_default();
        *used = taken;
        let w = match boots.iter().position(|w| w.boot == boot) {
            Some(i) => &mut boots[i],
            None => {
                if boots.len() >= BOOTS
                    && let Some(lru) = (0..boots.len()).min_by_key(|&i| boots[i].used)
                {
                    boots.swap_remove(lru);
                }
                boots.push(Window::new(boot));
                boots.last_mut().expect("pushed")
            }
        };
        if !w.admit(seq, now_ms) {
            return Err(Rejected::Replayed);
        }
        w.used = taken;
        Ok(message)
    }
}

/// The message inside a sealed datagram, unchecked (to tell our own multicast apart cheaply);
/// a plain datagram as it is.
pub fn unchecked_message(datagram: &[u8]) -> &[u8] {
    if datagram.len() >= OVERHEAD && datagram[..4] == MAGIC {
        &datagram[HEADER..datagram.len() - TAG]
    } else {
        datagram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000_000;

    fn pair() -> (Sealer, Opener) {
        let key = Arc::new(GroupKey::from_secret(&[9; 32]));
        (
            Sealer::new(key.clone(), NOW * 1000),
            Opener::new(key, NOW - 1000),
        )
    }

    fn msg(sender: u32) -> Vec<u8> {
        format!("STORED 2.0 {sender} {} 0 \r\n\r\n", "a".repeat(64)).into_bytes()
    }

    #[test]
    fn a_sealed_message_opens_once() {
        let (s, o) = pair();
        let sealed = s.seal(&msg(3), NOW);
        assert_eq!(o.open(&sealed, NOW + 5).unwrap(), msg(3).as_slice());
        assert_eq!(o.open(&sealed, NOW + 5), Err(Rejected::Replayed));
        assert_eq!(unchecked_message(&sealed), msg(3).as_slice());
    }

    #[test]
    fn altered_foreign_plain_stale_and_early_messages_are_refused() {
        let (s, o) = pair();
        let mut sealed = s.seal(&msg(3), NOW);
        let n = sealed.len();
        sealed[n - 40] ^= 1;
        assert_eq!(o.open(&sealed, NOW), Err(Rejected::BadMac));
        let other = Sealer::new(Arc::new(GroupKey::from_secret(&[8; 32])), NOW * 1000);
        assert_eq!(
            o.open(&other.seal(&msg(3), NOW), NOW),
            Err(Rejected::BadMac)
        );
        assert_eq!(o.open(&msg(3), NOW), Err(Rejected::Unsealed));
        assert_eq!(o.open(&[0; 10], NOW), Err(Rejected::Unsealed));
        let old = s.seal(&msg(3), NOW);
        assert_eq!(o.open(&old, NOW + MAX_AGE_MS + 1), Err(Rejected::Stale));
        let future = s.seal(&msg(3), NOW + MAX_AGE_MS + 1);
        assert_eq!(o.open(&future, NOW), Err(Rejected::Stale));
        // A member's clock at the end of time (found by fuzzing: no overflow).
        let end = s.seal(&msg(3), u64::MAX - 5);
        assert_eq!(o.open(&end, NOW), Err(Rejected::Stale));
        // Sealed before the receiver started: seen (or not) in an earlier life.
        let before = s.seal(&msg(3), NOW - 2000);
        assert_eq!(o.open(&before, NOW), Err(Rejected::Stale));
    }

    #[test]
    fn any_order_is_taken_once_and_forgotten_only_when_stale() {
        let (s, o) = pair();
        let sealed: Vec<Vec<u8>> = (0..10_000).map(|_| s.seal(&msg(3), NOW)).collect();
        // The even ones, then the odd ones backwards: each is new once, however far apart.
        for m in sealed.iter().step_by(2) {
            assert!(o.open(m, NOW).is_ok());
        }
        for m in sealed.iter().skip(1).step_by(2).rev() {
            assert!(o.open(m, NOW).is_ok());
        }
        for m in &sealed {
            assert_eq!(o.open(m, NOW + 1), Err(Rejected::Replayed));
        }
        // Pruning keeps what could still be fresh.
        o.windows
            .lock()
            .by_sender
            .values_mut()
            .for_each(|(_, b)| b.iter_mut().for_each(|w| w.prune(NOW + MAX_AGE_MS)));
        assert_eq!(
            o.open(&sealed[0], NOW + MAX_AGE_MS),
            Err(Rejected::Replayed)
        );
        // Windows are per sender.
        assert!(o.open(&s.seal(&msg(4), NOW), NOW).is_ok());
    }

    #[test]
    fn each_boot_has_its_window_and_a_forged_boot_silences_no_one() {
        let (s, o) = pair();
        let key = Arc::new(GroupKey::from_secret(&[9; 32]));
        let first = s.seal(&msg(3), NOW);
        assert!(o.open(&first, NOW).is_ok());
        // The sender restarted (a later boot starts again at 0), or a member seals in its
        // name with a later boot: the first boot's messages are still taken, once.
        let later = Sealer::new(key.clone(), NOW * 1000 + 1);
        assert!(o.open(&later.seal(&msg(3), NOW), NOW).is_ok());
        assert!(o.open(&s.seal(&msg(3), NOW), NOW).is_ok());
        assert_eq!(o.open(&first, NOW), Err(Rejected::Replayed));
        // Boots past the kept ones push out the least recently used, not the one in use.
        for b in 2..2 + BOOTS as u64 {
            let forged = Sealer::new(key.clone(), NOW * 1000 + b);
            assert!(o.open(&forged.seal(&msg(3), NOW), NOW).is_ok());
            assert!(o.open(&s.seal(&msg(3), NOW), NOW).is_ok());
        }
        assert_eq!(o.open(&first, NOW), Err(Rejected::Replayed));
    }

    #[test]
    fn a_member_jumping_anothers_seq_silences_no_one() {
        let (s, o) = pair();
        assert!(o.open(&s.seal(&msg(3), NOW), NOW).is_ok());
        // A member forges peer 3's message with its boot (seen on the wire) and a huge seq.
        let key = Arc::new(GroupKey::from_secret(&[9; 32]));
        let forger = Sealer::new(key, NOW * 1000);
        forger.seq.store(u64::MAX / 2, Ordering::Relaxed);
        assert!(o.open(&forger.seal(&msg(3), NOW), NOW).is_ok());
        // The real peer 3 is not silenced.
        assert!(o.open(&s.seal(&msg(3), NOW), NOW).is_ok(), "silenced");
        assert!(o.open(&s.seal(&msg(3), NOW), NOW).is_ok(), "silenced");
    }
}
