//! Chunk datagrams that fit the path MTU (enhanced): a PUTCHUNK 2.0 or CHUNK 2.0 larger than
//! one frame travels as *pieces*, each one datagram naming its chunk and its place, so that no
//! IP fragmentation is needed. Receivers put the pieces together in user space (memory bounded
//! in bytes, the oldest incomplete chunk evicted, a timeout), ask for the pieces they miss with
//! a NACK after a random backoff (suppressed when another receiver already asked for as much, as
//! NORM and UFTP do), and the sender resends only what was asked for. The whole message is then
//! handled as if it had arrived in one datagram. Wire format and decisions: docs/protocol.md,
//! "9. Pieces".
//!
//! Sans-IO: the executor feeds pieces, NACKs and check timers in, with the wall clock's
//! milliseconds, and sends what comes out.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::core::Channel;
use crate::protocol::ids::{hex_lower, parse_hex};
use crate::protocol::{ChunkKey, ChunkNo, FileId, PeerId};

/// Room kept in a frame for a piece's header (its longest is 139 bytes).
pub const PIECE_HEADER: usize = 144;
/// IPv4 and UDP headers.
const IP_UDP: usize = 28;
/// Incomplete chunks kept at most, in bytes of their messages (the oldest goes first): 250
/// chunks, 130 ms of a 1 Gbit/s link, where a chunk waiting for its repair waits 20-80 ms.
pub const ASSEMBLY_BYTES: usize = 16 << 20;
/// Messages kept for repairs at most, in bytes (the oldest goes first): as much again. (With
/// 64 MB a backup's home went past its 64 MB of memory.)
pub const REPAIR_BYTES: usize = 16 << 20;
/// A message is kept for repairs this long after it was sent.
const REPAIR_KEEP_MS: u64 = 10_000;
/// A piece is resent at most once in this long (NACKs from several receivers ask for it).
const REPAIR_GAP_MS: u64 = 15;
/// The first look at an incomplete chunk comes this long (plus as much at random) after its
/// first piece: a message's pieces leave back to back.
const FIRST_CHECK_MS: u64 = 20;
/// Later looks, after a NACK (or a suppressed one), come this long plus as much at random.
const RECHECK_MS: u64 = 40;
/// A NACK heard this recently that asked for every piece we miss suppresses ours.
const SUPPRESS_MS: u64 = 30;
/// NACKs one receiver sends for one chunk at most.
const MAX_NACKS: u8 = 12;
/// An incomplete chunk with no new piece for this long is dropped.
const EXPIRE_MS: u64 = 3_000;
/// A message put together is remembered this long (its repairs for others are ignored).
const DONE_KEEP_MS: u64 = 20_000;
/// Pieces of one message at most (a NACK's bitmap fits a datagram; 4 digits on the wire, so
/// that every piece of a message but the last has the same length: one GSO send).
pub const MAX_PIECES: usize = 1024;

/// Which message: its sender, the sender's number for it, its chunk and channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The message's sender.
    pub origin: PeerId,
    /// The sender's number of the message (each message sent as pieces has its own: a
    /// PUTCHUNK sent again is another message).
    pub seq: u64,
    /// Its chunk.
    pub chunk: ChunkKey,
    /// MDB (a PUTCHUNK) or MDR (a CHUNK).
    pub channel: Channel,
}

/// A piece as received.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Whose message, which chunk, which channel.
    pub key: Key,
    /// Its place.
    pub index: usize,
    /// Pieces of the message.
    pub count: usize,
    /// Bytes of the message.
    pub total: usize,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// A NACK as received: `from` misses pieces `missing` of `key`'s message.
#[derive(Debug, PartialEq, Eq)]
pub struct Nack {
    /// Who asks.
    pub from: PeerId,
    /// Which message.
    pub key: Key,
    /// Pieces of it.
    pub count: usize,
    /// The indexes it misses, ascending.
    pub missing: Vec<usize>,
}

fn channel_name(c: Channel) -> &'static str {
    c.name()
}

fn channel_of(name: &[u8]) -> Option<Channel> {
    match name {
        b"MDB" => Some(Channel::Mdb),
        b"MDR" => Some(Channel::Mdr),
        _ => None,
    }
}

/// Bytes of a message a piece carries on a path of `mtu` bytes, with `seal` bytes of envelope.
pub fn piece_payload(mtu: usize, seal: usize) -> usize {
    mtu.saturating_sub(IP_UDP + PIECE_HEADER + seal).max(256)
}

/// The pieces of `message` (for `key`; its sender is `key.origin`), `payload` bytes of it
/// each.
pub fn split(key: Key, message: &[u8], payload: usize) -> Vec<Vec<u8>> {
    let count = message.len().div_ceil(payload).clamp(1, MAX_PIECES);
    (0..count).map(|i| piece(key, message, i, count)).collect()
}

/// Piece `index` of `count` of `message`.
fn piece(key: Key, message: &[u8], index: usize, count: usize) -> Vec<u8> {
    let size = message.len().div_ceil(count);
    let start = (index * size).min(message.len());
    let end = (start + size).min(message.len());
    let mut out = format!(
        "PIECE 2.0 {} {} {} {} {} {index:04} {count:04} {:05} \r\n\r\n",
        key.origin,
        key.seq,
        key.chunk.file,
        key.chunk.no,
        channel_name(key.channel),
        message.len()
    )
    .into_bytes();
    out.extend_from_slice(&message[start..end]);
    out
}

/// The header fields of a datagram (its first line, split at spaces) and its body, if it is
/// `PIECE 2.0 …` or `NACK 2.0 …`.
fn fields<'a>(datagram: &'a [u8], kind: &[u8]) -> Option<(Vec<&'a [u8]>, &'a [u8])> {
    let end = datagram.windows(4).position(|w| w == b"\r\n\r\n")?;
    let line = &datagram[..end];
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    (words.first() == Some(&kind) && words.get(1) == Some(&&b"2.0"[..]))
        .then(|| (words, &datagram[end + 4..]))
}

fn number<T: std::str::FromStr>(f: &[u8]) -> Option<T> {
    (f.len() <= 20 && f.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(f).ok()?.parse().ok())
        .flatten()
}

/// The message key named by the wire fields `origin seq fileid chunkno channel`.
fn key_of(fields: &[&[u8]]) -> Option<Key> {
    let [origin, seq, file, no, channel] = fields else {
        return None;
    };
    Some(Key {
        origin: number(origin).filter(|&id| id > 0)?,
        seq: number(seq)?,
        chunk: chunk_of(file, no)?,
        channel: channel_of(channel)?,
    })
}

fn chunk_of(file: &[u8], no: &[u8]) -> Option<ChunkKey> {
    Some(ChunkKey {
        file: FileId::from_hex(file).ok()?,
        no: number::<ChunkNo>(no)?,
    })
}

/// Whether `datagram` is a piece or a NACK (handled here, not by the message codec).
pub fn is_piece_or_nack(datagram: &[u8]) -> bool {
    datagram.starts_with(b"PIECE ") || datagram.starts_with(b"NACK ")
}

/// The channel and chunk a piece's header names, without its body (a truncated read).
pub fn peek_chunk(datagram: &[u8]) -> Option<(Channel, ChunkKey)> {
    let (w, _) = fields(datagram, b"PIECE")?;
    let key = key_of(w.get(2..7)?)?;
    Some((key.channel, key.chunk))
}

/// Parses a piece (`None`: not one, or malformed).
pub fn parse_piece(datagram: &[u8]) -> Option<Piece<'_>> {
    let (w, bytes) = fields(datagram, b"PIECE")?;
    let [_, _, key @ .., index, count, total] = w.as_slice() else {
        return None;
    };
    let (index, count, total) = (
        number::<usize>(index)?,
        number::<usize>(count)?,
        number::<usize>(total)?,
    );
    let size = total.div_ceil(count.max(1));
    // Every piece starts inside the message (so `count` is the fewest pieces of `size`).
    let fits = index < count
        && count <= MAX_PIECES
        && total > 0
        && total <= 70_000
        && count == total.div_ceil(size)
        && bytes.len() == size.min(total - index * size);
    fits.then_some(Piece {
        key: key_of(key)?,
        index,
        count,
        total,
        bytes,
    })
}

/// The NACK of `from` for the pieces `missing` of `key`'s message of `count` pieces.
pub fn nack(from: PeerId, key: Key, count: usize, missing: &[usize]) -> Vec<u8> {
    let mut bits = vec![0u8; count.div_ceil(8)];
    for &i in missing {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    format!(
        "NACK 2.0 {from} {} {} {} {} {} {count} {} \r\n\r\n",
        key.origin,
        key.seq,
        key.chunk.file,
        key.chunk.no,
        channel_name(key.channel),
        hex_lower(&bits)
    )
    .into_bytes()
}

/// Parses a NACK.
pub fn parse_nack(datagram: &[u8]) -> Option<Nack> {
    let (w, _) = fields(datagram, b"NACK")?;
    let [_, _, from, key @ .., count, bitmap] = w.as_slice() else {
        return None;
    };
    let count = number::<usize>(count).filter(|&c| c > 0 && c <= MAX_PIECES)?;
    if bitmap.len() != count.div_ceil(8) * 2 {
        return None;
    }
    let bytes: Vec<u8> = bitmap
        .chunks(2)
        .map(|h| parse_hex::<1>(h).map(|b| b[0]))
        .collect::<Option<_>>()?;
    let missing = (0..count)
        .filter(|&i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    Some(Nack {
        from: number(from).filter(|&id| id > 0)?,
        key: key_of(key)?,
        count,
        missing,
    })
}

/// One message being put together.
struct Partial {
    serial: u64,
    count: usize,
    total: usize,
    buf: Vec<u8>,
    have: Vec<bool>,
    got: usize,
    /// When its last new piece came.
    last_ms: u64,
    nacks: u8,
}

/// What a piece did.
#[derive(Debug, PartialEq, Eq)]
pub enum Took {
    /// The message is whole: here it is.
    Whole(Vec<u8>),
    /// The first piece of a message: look at it after this long.
    Check(Duration),
    /// Kept (or a duplicate, or not believable).
    Kept,
}

/// What a check of an incomplete message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Send this NACK, then look again after the delay.
    Nack(Vec<u8>, Duration),
    /// Look again after the delay (pieces still arrive, or another receiver asked).
    Again(Duration),
    /// Nothing more to do (whole, given up, or gone).
    Done,
}

/// Counters of the pieces' traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PieceStats {
    /// Messages put together from pieces.
    pub assembled: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// NACKs not sent because another receiver had asked for as much.
    pub nacks_suppressed: u64,
    /// Pieces resent on a NACK.
    pub repaired: u64,
    /// Incomplete messages evicted for room.
    pub evicted: u64,
    /// Incomplete messages dropped after [`EXPIRE_MS`] without progress (or too many NACKs).
    pub expired: u64,
}

/// A message sent as pieces, kept for repairs.
struct Sent {
    message: Vec<u8>,
    count: usize,
    sent_ms: u64,
    /// When each piece was last resent.
    repaired_ms: Vec<u64>,
}

/// The receiving and repairing side of one peer.
pub struct Pieces {
    me: PeerId,
    rng: fastrand::Rng,
    serial: u64,
    partial: HashMap<Key, Partial>,
    /// Incomplete messages by arrival.
    order: std::collections::BTreeMap<u64, Key>,
    assembly_bytes: usize,
    /// NACKs heard lately: when, and the pieces asked for.
    heard: HashMap<Key, (u64, Vec<usize>)>,
    /// Messages put together lately, and when (their late pieces, repairs asked for by
    /// others, are not the start of another message).
    done: HashMap<Key, u64>,
    /// `done`'s size at which it is pruned next.
    done_limit: usize,
    /// The number of the last message this peer sent as pieces.
    next_seq: u64,
    sent: HashMap<Key, Sent>,
    sent_order: VecDeque<Key>,
    sent_bytes: usize,
    /// What happened so far.
    pub stats: PieceStats,
}

impl Pieces {
    /// The pieces state of peer `me` (random backoffs from `seed`), whose messages are
    /// numbered from `first_seq` on (the wall clock at start, so that a restarted peer's do not
    /// meet its earlier ones).
    pub fn new(me: PeerId, seed: u64, first_seq: u64) -> Pieces {
        Pieces {
            me,
            rng: fastrand::Rng::with_seed(seed),
            serial: 0,
            partial: HashMap::new(),
            order: std::collections::BTreeMap::new(),
            assembly_bytes: 0,
            heard: HashMap::new(),
            done: HashMap::new(),
            done_limit: 65_536,
            next_seq: first_seq,
            sent: HashMap::new(),
            sent_order: VecDeque::new(),
            sent_bytes: 0,
            stats: PieceStats::default(),
        }
    }

    fn jitter(&mut self, base: u64) -> Duration {
        Duration::from_millis(base + self.rng.u64(0..=base))
    }

    /// Takes a received piece at `now_ms`.
    pub fn take(&mut self, p: &Piece<'_>, now_ms: u64) -> Took {
        if p.key.origin == self.me || self.done.contains_key(&p.key) {
            return Took::Kept;
        }
        let mut first = false;
        if !self.partial.contains_key(&p.key) {
            if p.count == 1 {
                self.stats.assembled += 1;
                return Took::Whole(p.bytes.to_vec());
            }
            self.make_room(p.total);
            self.serial += 1;
            self.order.insert(self.serial, p.key);
            self.assembly_bytes += p.total;
            self.partial.insert(
                p.key,
                Partial {
                    serial: self.serial,
                    count: p.count,
                    total: p.total,
                    buf: vec![0; p.total],
                    have: vec![false; p.count],
                    got: 0,
                    last_ms: now_ms,
                    nacks: 0,
                },
            );
            first = true;
        }
        let part = self.partial.get_mut(&p.key).expect("inserted");
        if part.count != p.count || part.total != p.total || part.have[p.index] {
            return Took::Kept; // another message's piece, or a duplicate
        }
        let size = p.total.div_ceil(p.count);
        part.buf[p.index * size..p.index * size + p.bytes.len()].copy_from_slice(p.bytes);
        part.have[p.index] = true;
        part.got += 1;
        part.last_ms = now_ms;
        if part.got == part.count {
            let part = self.forget(&p.key).expect("present");
            self.stats.assembled += 1;
            self.completed(p.key, now_ms);
            return Took::Whole(part.buf);
        }
        if first {
            Took::Check(self.jitter(FIRST_CHECK_MS))
        } else {
            Took::Kept
        }
    }

    /// Remembers that `key`'s message was put together (for [`DONE_KEEP_MS`]).
    fn completed(&mut self, key: Key, now_ms: u64) {
        self.done.insert(key, now_ms);
        if self.done.len() > self.done_limit {
            self.done
                .retain(|_, at| now_ms.saturating_sub(*at) <= DONE_KEEP_MS);
            // The next prune when it has doubled: amortised constant time per message.
            self.done_limit = (self.done.len() * 2).max(65_536);
        }
    }

    /// A new key for a message of this peer's about `chunk` on `channel`.
    pub fn next_key(&mut self, chunk: ChunkKey, channel: Channel) -> Key {
        self.next_seq += 1;
        Key {
            origin: self.me,
            seq: self.next_seq,
            chunk,
            channel,
        }
    }

    /// Forgets the incomplete message `key`.
    fn forget(&mut self, key: &Key) -> Option<Partial> {
        let part = self.partial.remove(key)?;
        self.order.remove(&part.serial);
        self.assembly_bytes -= part.total;
        Some(part)
    }

    /// Evicts the oldest incomplete messages until `bytes` more fit.
    fn make_room(&mut self, bytes: usize) {
        while self.assembly_bytes + bytes > ASSEMBLY_BYTES {
            let Some((_, key)) = self.order.pop_first() else {
                return;
            };
            if let Some(part) = self.partial.remove(&key) {
                self.assembly_bytes -= part.total;
                self.stats.evicted += 1;
            }
        }
    }

    /// Looks at the incomplete message `key` at `now_ms`.
    pub fn check(&mut self, key: Key, now_ms: u64) -> Checked {
        let Some(part) = self.partial.get_mut(&key) else {
            return Checked::Done;
        };
        if now_ms.saturating_sub(part.last_ms) > EXPIRE_MS || part.nacks >= MAX_NACKS {
            self.forget(&key);
            self.stats.expired += 1;
            // Given up: its late repairs start nothing (the PUTCHUNK is resent as another
            // message if it is still wanted).
            self.completed(key, now_ms);
            return Checked::Done;
        }
        if now_ms.saturating_sub(part.last_ms) < FIRST_CHECK_MS && part.nacks == 0 {
            // Pieces still arrive.
            return Checked::Again(self.jitter(FIRST_CHECK_MS));
        }
        let missing: Vec<usize> = (0..part.count).filter(|&i| !part.have[i]).collect();
        let count = part.count;
        let asked = self.heard.get(&key).is_some_and(|(at, asked)| {
            now_ms.saturating_sub(*at) <= SUPPRESS_MS && missing.iter().all(|i| asked.contains(i))
        });
        if asked {
            self.stats.nacks_suppressed += 1;
            return Checked::Again(self.jitter(RECHECK_MS));
        }
        let part = self.partial.get_mut(&key).expect("present");
        part.nacks += 1;
        // Each unanswered NACK waits longer for its repair (a queue may hold it up).
        let wait = RECHECK_MS << (part.nacks - 1).min(4);
        self.stats.nacks_sent += 1;
        let nack = nack(self.me, key, count, &missing);
        Checked::Nack(nack, self.jitter(wait))
    }

    /// Remembers a message sent as pieces, for repairs.
    pub fn sent(&mut self, key: Key, message: Vec<u8>, count: usize, now_ms: u64) {
        // The oldest go when room is needed, or once too old to be repaired.
        while let Some(old) = self.sent_order.front().copied() {
            let stale = self
                .sent
                .get(&old)
                .is_none_or(|s| now_ms.saturating_sub(s.sent_ms) > REPAIR_KEEP_MS);
            if !stale && self.sent_bytes + message.len() <= REPAIR_BYTES {
                break;
            }
            self.sent_order.pop_front();
            if let Some(s) = self.sent.remove(&old) {
                self.sent_bytes -= s.message.len();
            }
        }
        self.sent_bytes += message.len();
        if let Some(old) = self.sent.insert(
            key,
            Sent {
                message,
                count,
                sent_ms: now_ms,
                repaired_ms: vec![0; count],
            },
        ) {
            self.sent_bytes -= old.message.len();
        } else {
            self.sent_order.push_back(key);
        }
    }

    /// A NACK heard at `now_ms`: remembered (to suppress ours), and if it asks us for a
    /// message still `wanted`, the pieces to resend.
    pub fn nacked(&mut self, n: &Nack, now_ms: u64, wanted: bool) -> Vec<Vec<u8>> {
        let heard = self.heard.entry(n.key).or_insert((now_ms, Vec::new()));
        if now_ms.saturating_sub(heard.0) > SUPPRESS_MS {
            *heard = (now_ms, Vec::new());
        }
        heard.1.extend(&n.missing);
        if self.heard.len() > 4096 {
            self.heard
                .retain(|_, (at, _)| now_ms.saturating_sub(*at) <= SUPPRESS_MS);
        }
        if n.key.origin != self.me || !wanted {
            return Vec::new();
        }
        let Some(s) = self.sent.get_mut(&n.key) else {
            return Vec::new();
        };
        if s.count != n.count || now_ms.saturating_sub(s.sent_ms) > REPAIR_KEEP_MS {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &i in &n.missing {
            if now_ms.saturating_sub(s.repaired_ms[i]) >= REPAIR_GAP_MS {
                s.repaired_ms[i] = now_ms;
                out.push(piece(n.key, &s.message, i, s.count));
            }
        }
        self.stats.repaired += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(origin: PeerId) -> Key {
        Key {
            origin,
            seq: 5,
            chunk: ChunkKey {
                file: FileId([7; 32]),
                no: 3,
            },
            channel: Channel::Mdb,
        }
    }

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn pieces_fit_the_frame_and_round_trip() {
        let m = message(64_210);
        let payload = piece_payload(1500, 60);
        let pieces = split(key(9), &m, payload);
        assert_eq!(pieces.len(), 64_210usize.div_ceil(payload));
        let mut p = Pieces::new(2, 1, 0);
        let mut whole = None;
        for (i, d) in pieces.iter().enumerate() {
            assert!(d.len() + 60 + IP_UDP <= 1500, "piece {i}: {}", d.len());
            let piece = parse_piece(d).unwrap();
            assert_eq!((piece.key, piece.index), (key(9), i));
            match p.take(&piece, 0) {
                Took::Whole(w) => whole = Some(w),
                Took::Check(_) => assert_eq!(i, 0),
                Took::Kept => {}
            }
        }
        assert_eq!(whole.unwrap(), m);
        assert_eq!(p.stats.assembled, 1);
    }

    #[test]
    fn missing_pieces_are_asked_for_and_only_they_are_repaired() {
        let m = message(20_000);
        let pieces = split(key(9), &m, 1_000);
        let mut sender = Pieces::new(9, 1, 0);
        sender.sent(key(9), m.clone(), pieces.len(), 0);
        let mut r = Pieces::new(2, 1, 0);
        for (i, d) in pieces.iter().enumerate() {
            if i % 7 != 3 {
                r.take(&parse_piece(d).unwrap(), 0);
            }
        }
        // Pieces stopped coming: the check asks for exactly the missing ones.
        let Checked::Nack(n, _) = r.check(key(9), 100) else {
            panic!("no NACK")
        };
        let n = parse_nack(&n).unwrap();
        assert_eq!((n.from, n.key, n.count), (2, key(9), 20));
        assert_eq!(n.missing, vec![3, 10, 17]);
        let repairs = sender.nacked(&n, 110, true);
        assert_eq!(repairs.len(), 3);
        // A second receiver's NACK for the same pieces right after: nothing resent twice.
        assert!(sender.nacked(&n, 115, true).is_empty());
        let mut whole = None;
        for d in &repairs {
            if let Took::Whole(w) = r.take(&parse_piece(d).unwrap(), 120) {
                whole = Some(w);
            }
        }
        assert_eq!(whole.unwrap(), m);
        assert_eq!(r.check(key(9), 200), Checked::Done);
        // Late pieces of it (repairs for another receiver) start nothing.
        assert_eq!(r.take(&parse_piece(&pieces[0]).unwrap(), 300), Took::Kept);
        assert_eq!(r.check(key(9), 400), Checked::Done);
    }

    #[test]
    fn a_nack_heard_for_the_same_pieces_suppresses_ours() {
        let pieces = split(key(9), &message(5_000), 1_000);
        let mut a = Pieces::new(2, 1, 0);
        let mut b = Pieces::new(3, 2, 0);
        for r in [&mut a, &mut b] {
            r.take(&parse_piece(&pieces[0]).unwrap(), 0);
        }
        let Checked::Nack(n, _) = a.check(key(9), 50) else {
            panic!()
        };
        b.nacked(&parse_nack(&n).unwrap(), 55, true);
        assert!(matches!(b.check(key(9), 60), Checked::Again(_)));
        assert_eq!(b.stats.nacks_suppressed, 1);
        // Later, unanswered, it asks itself.
        assert!(matches!(b.check(key(9), 200), Checked::Nack(..)));
    }

    #[test]
    fn memory_is_bounded_and_stale_messages_expire() {
        let mut r = Pieces::new(2, 1, 0);
        let mut k = key(9);
        let pieces = |k: Key| split(k, &message(60_000), 1_000);
        for no in 0..(ASSEMBLY_BYTES / 60_000 + 10) as u32 {
            k.chunk.no = no;
            r.take(&parse_piece(&pieces(k)[0]).unwrap(), 0);
        }
        assert!(r.assembly_bytes <= ASSEMBLY_BYTES);
        assert_eq!(r.stats.evicted, 10);
        assert_eq!(r.check(k, EXPIRE_MS + 1), Checked::Done);
        assert_eq!(r.stats.expired, 1);
    }

    #[test]
    fn a_piece_past_the_end_of_its_message_is_refused() {
        let file = "07".repeat(32);
        // Found in review: index 7 of 8 pieces of a 10-byte message starts past its end.
        let forged = format!("PIECE 2.0 9 5 {file} 3 MDB 0007 0008 00010 \r\n\r\n");
        assert!(parse_piece(forged.as_bytes()).is_none());
        assert!(
            parse_piece(format!("PIECE 2.0 9 5 {file} 3 MDB 0000 0001 00000 \r\n\r\n").as_bytes())
                .is_none()
        );
    }

    #[test]
    fn completed_and_given_up_messages_leave_nothing_behind() {
        let mut r = Pieces::new(2, 1, 0);
        let mut k = key(9);
        for seq in 0..1_000 {
            k.seq = seq;
            for d in split(k, &message(3_000), 1_000) {
                r.take(&parse_piece(&d).unwrap(), 0);
            }
        }
        assert!(r.partial.is_empty() && r.order.is_empty() && r.assembly_bytes == 0);
        // Given up after its NACKs: a late repair starts nothing.
        k.seq = 5_000;
        let pieces = split(k, &message(3_000), 1_000);
        r.take(&parse_piece(&pieces[0]).unwrap(), 0);
        let mut now = 0;
        while r.check(k, now) != Checked::Done {
            now += 1_000;
        }
        assert!(r.order.is_empty());
        assert_eq!(r.take(&parse_piece(&pieces[1]).unwrap(), now), Took::Kept);
        assert!(r.partial.is_empty());
    }

    #[test]
    fn malformed_pieces_and_nacks_are_refused() {
        let ok = split(key(9), &message(3_000), 1_000);
        assert!(parse_piece(&ok[1]).is_some());
        let mut short = ok[1].clone();
        short.pop();
        assert!(parse_piece(&short).is_none());
        for bad in [
            "PIECE 2.0 9 5 zz 3 MDB 0 3 3000 \r\n\r\n",
            "PIECE 2.0 9 5 0707070707070707070707070707070707070707070707070707070707070707 3 MC 0 3 3000 \r\n\r\n",
            "PIECE 2.0 9 5 0707070707070707070707070707070707070707070707070707070707070707 3 MDB 3 3 3000 \r\n\r\n",
            "PIECE 1.0 9 5 0707070707070707070707070707070707070707070707070707070707070707 3 MDB 0 3 3000 \r\n\r\n",
            "NACK 2.0 2 9 5 0707070707070707070707070707070707070707070707070707070707070707 3 MDB 20 ff \r\n\r\n",
            "NACK 2.0 2 9 5 0707070707070707070707070707070707070707070707070707070707070707 3 MDB 0 \r\n\r\n",
        ] {
            assert!(
                parse_piece(bad.as_bytes()).is_none() && parse_nack(bad.as_bytes()).is_none(),
                "{bad}"
            );
        }
    }
}
