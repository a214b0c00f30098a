//! Arbitrary bytes → the secure envelope (`dbs::secure::Opener::open`) → the wire codec
//! (`Message::parse`), as a secure peer takes a datagram or a TCP frame (src/exec/mod.rs).
//!
//! The first input byte picks the mode (the rest is the mode's input):
//!
//! * 0, raw: the bytes as received from anyone. `open` must never panic, must call them
//!   `Unsealed` exactly when they are shorter than the envelope or lack its magic, and (an
//!   outsider cannot forge the MAC) must not take them; anything taken is parsed.
//! * 1, sealed: the bytes sealed by a valid `Sealer` of the group, then opened: this reaches the
//!   parser behind a valid seal, as a member's datagrams do. `open` must give back exactly the
//!   bytes sealed (or refuse them as `BadMac` when no sender can be read from them), then refuse
//!   them as replayed; `unchecked_message` (the receivers' cheap own-datagram test) must find
//!   the same bytes. A message that parses must name the sender `open` keyed its replay window
//!   with, round-trip through `encode`, and DELETE proofs are checked (`ownership::proves`).
//! * 2, insider: a member sealing what it likes: boot (8 bytes), sequence number (8), clock
//!   (8, an offset from the receiver's clock, wrapping), a bit to flip (2, 0xffff = none) and
//!   the message. The verdict must be the model's: stale outside ±`MAX_AGE_MS` or before the
//!   receiver started, `BadMac` when altered (`Unsealed` when the magic is), else as in 1.
//! * 3, windows: up to 256 messages of two senders and eight boots (more than the `BOOTS` kept
//!   per sender) with sequence numbers of the fuzzer's choice, some stale or altered, opened in
//!   turn: each verdict must be that of a plain model of the replay windows (a set of the
//!   sequence numbers seen per boot, the least recently used boot forgotten first).
//!
//! Modes 2 and 3 build envelopes with sequence numbers a `Sealer` would not use; they compute
//! the MAC with the group key's derivation, checked once against a `Sealer`.
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use dbs::protocol::{Message, MessageKind, peek_sender};
use dbs::secure::envelope::{
    BOOTS, HEADER, MAGIC, MAX_AGE_MS, OVERHEAD, WINDOW, unchecked_message,
};
use dbs::secure::ownership::proves;
use dbs::secure::{GroupKey, Opener, Rejected, Sealer};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

/// The receiver's clock (ms) throughout; it started a second earlier.
const NOW: u64 = 1_800_000_000_000;
const STARTED: u64 = NOW - 1000;
/// The group's secret.
const SECRET: &[u8] = b"the group secret of the authenticated_codec fuzz target";

struct Group {
    key: Arc<GroupKey>,
    /// The MAC key `GroupKey::from_secret` derives (src/secure/keys.rs).
    mac: [u8; 32],
}

static GROUP: LazyLock<Group> = LazyLock::new(|| {
    let key = Arc::new(GroupKey::from_secret(SECRET));
    let mut mac = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"dbs-group-v1"), SECRET)
        .expand(b"message authentication", &mut mac)
        .expect("32 bytes");
    let group = Group { key, mac };
    // The envelopes built here must be those a Sealer makes.
    let msg = b"UP 2.0 7 \r\n\r\n";
    let sealer = Sealer::new(group.key.clone(), 42);
    assert_eq!(sealer.seal(msg, NOW), seal_as(&group, 42, 0, NOW, msg));
    group
});

/// `message` sealed with any header fields.
fn seal_as(group: &Group, boot: u64, seq: u64, sent: u64, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + OVERHEAD);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&boot.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent.to_be_bytes());
    out.extend_from_slice(message);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&group.mac).expect("any length");
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

fn opener() -> Opener {
    Opener::new(GROUP.key.clone(), STARTED)
}

/// Whether a message sealed at `sent` is stale at `NOW` (without overflow).
fn stale(sent: u64) -> bool {
    let (sent, now, age) = (sent as u128, NOW as u128, MAX_AGE_MS as u128);
    sent + age < now || sent > now + age || sent < STARTED as u128
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    let part = data.get(at..).unwrap_or_default();
    let n = part.len().min(8);
    b[..n].copy_from_slice(&part[..n]);
    u64::from_be_bytes(b)
}

/// What a secure peer does with a message it took: parse it, as `on_datagram` does.
fn check_message(message: &[u8]) {
    let Ok(m) = Message::parse(message) else {
        return;
    };
    // The opener keyed the replay window with `peek_sender`; the core acts on the parse's.
    assert_eq!(
        peek_sender(message),
        Some(m.sender),
        "the replay window and the core see different senders"
    );
    if let MessageKind::Delete { file } = &m.kind {
        let _ = proves(file, &m.extra_lines);
    }
    let bytes = m.encode();
    let back = Message::parse(&bytes)
        .unwrap_or_else(|e| panic!("the encoding of a parsed message does not parse: {e}"));
    assert_eq!(back, m, "encode → parse is not the identity");
}

fn raw(data: &[u8]) {
    let verdict = opener().open(data, NOW);
    let unsealed = data.len() < OVERHEAD || data[..4] != MAGIC;
    match verdict {
        Err(Rejected::Unsealed) => assert!(unsealed, "a well-formed envelope called unsealed"),
        Err(e) => assert!(
            !unsealed && e == Rejected::BadMac,
            "{e} for arbitrary bytes (unsealed: {unsealed})"
        ),
        Ok(message) => panic!(
            "arbitrary bytes were taken as sealed for the group ({} bytes of message)",
            message.len()
        ),
    }
}

fn sealed(data: &[u8]) {
    let sealer = Sealer::new(GROUP.key.clone(), NOW * 1000);
    let envelope = sealer.seal(data, NOW);
    assert_eq!(envelope.len(), data.len() + OVERHEAD);
    assert_eq!(unchecked_message(&envelope), data);
    let o = opener();
    match o.open(&envelope, NOW + 1) {
        Ok(message) => {
            assert_eq!(message, data, "open did not give back what was sealed");
            assert!(peek_sender(data).is_some());
            assert_eq!(o.open(&envelope, NOW + 1), Err(Rejected::Replayed));
            check_message(message);
        }
        Err(Rejected::BadMac) => assert!(peek_sender(data).is_none(), "a valid seal refused"),
        Err(e) => panic!("a fresh valid seal refused: {e}"),
    }
}

fn insider(data: &[u8]) {
    let (boot, seq, offset) = (u64_at(data, 0), u64_at(data, 8), u64_at(data, 16));
    let flip = data
        .get(24..26)
        .map_or(0xffff, |b| u16::from_be_bytes([b[0], b[1]]));
    let message = data.get(26..).unwrap_or_default();
    let sent = NOW.wrapping_add(offset);
    let mut envelope = seal_as(&GROUP, boot, seq, sent, message);
    let flip = usize::from(flip);
    let altered = flip / 8 < envelope.len();
    if altered {
        envelope[flip / 8] ^= 1 << (flip % 8);
    }
    let verdict = opener().open(&envelope, NOW);
    let expected = if altered && flip / 8 < 4 {
        Err(Rejected::Unsealed)
    } else if altered {
        Err(Rejected::BadMac)
    } else if stale(sent) {
        Err(Rejected::Stale)
    } else if peek_sender(message).is_none() {
        Err(Rejected::BadMac)
    } else {
        Ok(message)
    };
    assert_eq!(
        verdict, expected,
        "boot {boot} seq {seq} sent {sent} flip {flip}"
    );
    if let Ok(m) = verdict {
        check_message(m);
    }
}

/// The model of one boot's window: every sequence number seen, and the highest.
struct ModelWindow {
    boot: u64,
    used: u64,
    top: u64,
    seen: BTreeSet<u64>,
}

fn windows(data: &[u8]) {
    let o = opener();
    let mut model: HashMap<u32, Vec<ModelWindow>> = HashMap::new();
    let mut taken = 0u64;
    let mut rest = data;
    for _ in 0..256 {
        let Some((&ctl, tail)) = rest.split_first() else {
            break;
        };
        let wide = ctl & 0x10 != 0;
        let n = if wide { 8 } else { 2 };
        let seq = if wide {
            u64_at(tail, 0)
        } else {
            u64_at(tail, 0) >> 48
        };
        rest = tail.get(n..).unwrap_or_default();
        let boot = 1_000 + u64::from(ctl & 7);
        let sender = 1 + u32::from((ctl >> 3) & 1);
        let is_stale = ctl & 0x20 != 0;
        let altered = ctl & 0x40 != 0;
        let sent = if is_stale { NOW - MAX_AGE_MS - 1 } else { NOW };
        let message = format!("UP 2.0 {sender} \r\n\r\n");
        let mut envelope = seal_as(&GROUP, boot, seq, sent, message.as_bytes());
        if altered {
            envelope[HEADER - 1] ^= 0x80;
        }
        let verdict = o.open(&envelope, NOW);
        let expected = if altered {
            Err(Rejected::BadMac)
        } else if is_stale {
            Err(Rejected::Stale)
        } else {
            taken += 1;
            let boots = model.entry(sender).or_default();
            match boots.iter_mut().find(|w| w.boot == boot) {
                Some(w) => {
                    let fresh = if seq > w.top {
                        w.top = seq;
                        w.seen.insert(seq)
                    } else {
                        w.top - seq < WINDOW && w.seen.insert(seq)
                    };
                    if fresh {
                        w.used = taken;
                        Ok(message.as_bytes())
                    } else {
                        Err(Rejected::Replayed)
                    }
                }
                None => {
                    if boots.len() >= BOOTS {
                        let lru = (0..boots.len())
                            .min_by_key(|&i| boots[i].used)
                            .expect("not empty");
                        boots.swap_remove(lru);
                    }
                    boots.push(ModelWindow {
                        boot,
                        used: taken,
                        top: seq,
                        seen: BTreeSet::from([seq]),
                    });
                    Ok(message.as_bytes())
                }
            }
        };
        assert_eq!(
            verdict, expected,
            "sender {sender} boot {boot} seq {seq} stale {is_stale} altered {altered}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => raw(rest),
        1 => sealed(rest),
        2 => insider(rest),
        _ => windows(rest),
    }
});
