//! The authenticated envelope of every message of a secure group, and the replay check.
//!
//! A sealed datagram (or TCP frame) is
//! `MAGIC (4) | boot (8) | seq (8) | sent_ms (8) | message | HMAC-SHA256 (32)`, big-endian,
//! the MAC under the group's key over everything before it. `boot` is the sender's start time
//! in microseconds (a restarted sender's is larger), `seq` counts its messages since, `sent_ms`
//! is its clock when it sealed the message. A receiver takes a message only if its MAC is
//! right, it was sealed within [`MAX_AGE_MS`] of the receiver's clock and not before the
//! receiver started (what it saw in an earlier life cannot come back), and its `(boot, seq)`
//! was not seen before from that sender (a window of [`WINDOW`] sequence numbers per boot;
//! the [`BOOTS`] boots of a sender heard from last are kept, so that a rogue member who seals
//! messages in another's name with a later boot does not silence the real one).

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
/// Messages a sender may have in flight out of order (per receiver, across the channels and
/// the worker pool) before an older one is dropped as a possible replay.
pub const WINDOW: u64 = 4096;

/// Boots of one sender whose windows are kept (the least recently used goes first).
pub const BOOTS: usize = 4;

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

/// The sequence numbers seen from one boot of a sender.
#[derive(Debug)]
struct Window {
    boot: u64,
    /// When it last took a message (the opener's count of messages taken).
    used: u64,
    /// Highest sequence number seen.
    top: u64,
    /// Bit `i`: `top - i` was seen.
    seen: [u64; (WINDOW / 64) as usize],
}

impl Window {
    fn new(boot: u64, seq: u64) -> Window {
        let mut w = Window {
            boot,
            used: 0,
            top: seq,
            seen: [0; (WINDOW / 64) as usize],
        };
        w.seen[0] = 1;
        w
    }

    /// Records `seq`; false if it was seen or is too old.
    fn admit(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.shift(shift);
            self.top = seq;
            self.seen[0] |= 1;
            return true;
        }
        let back = self.top - seq;
        if back >= WINDOW {
            return false;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        let fresh = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        fresh
    }

    /// Moves the window `by` sequence numbers up.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; (WINDOW / 64) as usize];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let n = self.seen.len();
        for i in (0..n).rev() {
            let from = i.checked_sub(words);
            let hi = from.map_or(0, |j| self.seen[j] << bits);
            let lo = match (from.and_then(|j| j.checked_sub(1)), bits) {
                (Some(j), b) if b > 0 => self.seen[j] >> (64 - b),
                _ => 0,
            };
            self.seen[i] = hi | lo;
        }
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
    by_sender: HashMap<PeerId, Vec<Window>>,
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
        let boots = windows.by_sender.entry(sender).or_default();
        match boots.iter_mut().find(|w| w.boot == boot) {
            Some(w) => {
                if !w.admit(seq) {
                    return Err(Rejected::Replayed);
                }
                w.used = taken;
            }
            None => {
                if boots.len() >= BOOTS
                    && let Some(lru) = (0..boots.len()).min_by_key(|&i| boots[i].used)
                {
                    boots.swap_remove(lru);
                }
                let mut w = Window::new(boot, seq);
                w.used = taken;
                boots.push(w);
            }
        }
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
    fn out_of_order_within_the_window_is_taken_and_a_new_boot_resets_it() {
        let (s, o) = pair();
        let n = WINDOW as usize + 10;
        let sealed: Vec<Vec<u8>> = (0..n).map(|_| s.seal(&msg(3), NOW)).collect();
        // The even ones first, then the odd ones backwards: each is new once, unless it fell
        // out of the window below the highest seen.
        for m in sealed.iter().step_by(2) {
            assert!(o.open(m, NOW).is_ok());
        }
        // The first odd one (n - 1) raises the highest seen.
        let top = n - 1;
        for i in (1..n).step_by(2).rev() {
            let in_window = top - i < WINDOW as usize;
            assert_eq!(o.open(&sealed[i], NOW).is_ok(), in_window, "seq {i}");
        }
        for m in &sealed {
            assert_eq!(o.open(m, NOW), Err(Rejected::Replayed));
        }
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
    fn the_window_shifts_bit_by_bit() {
        for by in [
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            1000,
            WINDOW - 1,
            WINDOW,
            WINDOW + 1,
        ] {
            let mut w = Window::new(0, 0);
            assert!(w.admit(by));
            assert!(!w.admit(by));
            assert!(!w.admit(0), "shift {by}");
            let ks: std::collections::BTreeSet<u64> = [1, by / 2, by - 1].into_iter().collect();
            for k in ks.into_iter().filter(|&k| k > 0 && k < by) {
                assert_eq!(w.admit(k), by - k < WINDOW, "shift {by}, seq {k}");
                assert!(!w.admit(k));
            }
        }
    }
}
