//! VERIFY (enhanced, CHECK / CHECKED): whether enough holders still have each chunk of a file
//! with its content, without moving a chunk body.
//!
//! At backup the home draws a secret key for the file and, reading each chunk to send it,
//! records [`CHALLENGES`] short proofs: the first 8 bytes of [`proof`] for nonces derived
//! from the key. A VERIFY takes the next unused nonce of every chunk and
//! multicasts `CHECK 2.0 <id> <file> <chunk> <nonce>` (a window of chunks at a time); every
//! enhanced holder answers `CHECKED 2.0 <id> <file> <chunk> <nonce> <proof>` with the proof of
//! [`proof`] (over the nonce and an eighth of the chunk, or the whole of a small one). Holders never saw the nonce before (it is
//! derived from a key they do not know), so only one that can read the chunk now answers
//! right; the home checks answers against its recorded proofs, needing neither the chunk nor
//! the source file. A 1.0 holder cannot answer and is reported unverified. After
//! [`CHALLENGES`] verifies the nonces are used again (reported: no longer fresh).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;
use zeroize::Zeroize;

use super::{Action, Channel, CommandError, Core, OpEvent, OpId, TimerEvent};
use crate::protocol::ids::{hex_lower, parse_hex};
use crate::protocol::{ChunkKey, ChunkNo, FileId, MessageKind, PeerId, Version};

/// Proofs recorded per chunk: the fresh verifies a file has.
pub const CHALLENGES: usize = 8;
/// Bytes of each recorded proof.
const PROOF_BYTES: usize = 8;
/// CHECK sends per chunk at most. VERIFY needs an answer from every holder, not from one
/// (as a restore does): with 25 % loss each way a CHECK and its CHECKED both arrive 32 % of
/// the time, and one holder stays silent after 16 sends 0.2 % of the time.
const CHECK_SENDS: u8 = 16;
/// Wait after each CHECK send (CHECKED is answered at once, so the wait is a round trip).
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_millis(750);

/// A file's secret verification key (drawn by the runtime at backup from the system's random
/// source). Zeroized when dropped; its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey(pub [u8; 32]);

impl Drop for VerifyKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifyKey(..)")
    }
}

impl Serialize for VerifyKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_lower(&self.0))
    }
}

impl<'de> Deserialize<'de> for VerifyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hex(s.as_bytes())
            .map(VerifyKey)
            .ok_or_else(|| serde::de::Error::custom("verify key must be 64 hexadecimal digits"))
    }
}

/// Nonce number `i` of `chunk` under `key`.
pub fn nonce(key: &VerifyKey, chunk: ChunkKey, i: usize) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(b"dbs verify nonce");
    h.update(key.0);
    h.update(chunk.file.0);
    h.update(chunk.no.to_be_bytes());
    h.update((i as u32).to_be_bytes());
    h.finalize().into()
}

/// Parts a chunk is cut into for proofs.
const SEGMENTS: usize = 8;
/// A chunk up to this size is hashed whole.
const WHOLE_UP_TO: usize = 8 * 1024;

/// A holder's answer to a CHECK: SHA-256 of the nonce then one eighth of the body, the one
/// the nonce's first byte names (a holder cannot tell which before it sees the nonce; the
/// home's [`CHALLENGES`] proofs then cost it about one pass over the chunk, not eight), or
/// the whole body of a small chunk. An honest holder also checks its whole copy against the
/// chunk's hash before answering.
pub fn proof(nonce: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let part = if body.len() <= WHOLE_UP_TO {
        body
    } else {
        let seg = usize::from(nonce[0]) % SEGMENTS;
        let len = body.len().div_ceil(SEGMENTS);
        &body[seg * len..((seg + 1) * len).min(body.len())]
    };
    let mut h = sha2::Sha256::new();
    h.update(nonce);
    h.update(part);
    h.finalize().into()
}

/// The proofs a home records for a chunk it reads at backup: [`CHALLENGES`] prefixes, as hex.
pub fn recorded_proofs(key: &VerifyKey, chunk: ChunkKey, body: &[u8]) -> String {
    let mut all = Vec::with_capacity(CHALLENGES * PROOF_BYTES);
    for i in 0..CHALLENGES {
        all.extend_from_slice(&proof(&nonce(key, chunk, i), body)[..PROOF_BYTES]);
    }
    hex_lower(&all)
}

/// Recorded proof number `i` out of `proofs` (as [`recorded_proofs`] writes them).
fn recorded(proofs: &str, i: usize) -> Option<[u8; PROOF_BYTES]> {
    let hex = proofs
        .as_bytes()
        .get(i * 2 * PROOF_BYTES..(i + 1) * 2 * PROOF_BYTES)?;
    parse_hex(hex)
}

/// One chunk being verified.
#[derive(Debug)]
struct ChunkCheck {
    /// The proof expected (none recorded: the chunk cannot be verified).
    expected: Option<[u8; PROOF_BYTES]>,
    /// Holders known to the home that speak 2.0: they should answer.
    asked: BTreeSet<PeerId>,
    /// Holders known that speak only 1.0: they cannot.
    unverifiable: BTreeSet<PeerId>,
    /// Peers whose answer matched.
    proven: BTreeSet<PeerId>,
    /// Peers whose answer did not (their copy differs).
    wrong: BTreeSet<PeerId>,
    /// CHECKs sent for it so far.
    sends: u8,
}

impl ChunkCheck {
    /// Every holder asked answered (or there is nothing to ask).
    fn answered(&self) -> bool {
        self.expected.is_none()
            || self
                .asked
                .iter()
                .all(|p| self.proven.contains(p) || self.wrong.contains(p))
    }

    /// Nothing more to wait for: answered, or out of sends.
    fn settled(&self) -> bool {
        self.answered() || self.sends >= CHECK_SENDS
    }
}

/// CHECKs of one VERIFY in flight at most (chunks sent and not settled): each holder reads
/// and hashes a chunk per CHECK, so a large file is checked a window at a time, clocked by the
/// answers, as a restore is.
const CHECK_WINDOW: usize = 256;

/// One VERIFY of one file in progress.
#[derive(Debug)]
pub struct VerifyOp {
    /// The file.
    pub file: FileId,
    desired: u8,
    nonce_index: usize,
    fresh: bool,
    key: Option<VerifyKey>,
    chunks: Vec<ChunkCheck>,
    /// Chunks before this one have been sent a CHECK at least once.
    next: usize,
}

impl VerifyOp {
    /// Chunks sent and not settled.
    fn in_flight(&self) -> usize {
        self.chunks[..self.next]
            .iter()
            .filter(|c| !c.settled())
            .count()
    }
}

/// A chunk that is not verified at its desired degree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFinding {
    /// The chunk.
    pub no: ChunkNo,
    /// Holders that proved they have it.
    pub proven: Vec<PeerId>,
    /// Holders known that run 1.0 and cannot be asked.
    pub unverified: Vec<PeerId>,
    /// Enhanced holders the home knew of that did not answer (copy lost, or peer down).
    pub silent: Vec<PeerId>,
    /// Peers whose answer was wrong (their copy is not the chunk).
    pub wrong: Vec<PeerId>,
}

/// What a VERIFY of one file found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Chunks in the file.
    pub chunks: u64,
    /// Desired degree.
    pub desired: u8,
    /// Chunks with at least `desired` holders that proved it.
    pub verified: u64,
    /// Chunks that may be safe but cannot be told: too few proofs, enough with the 1.0
    /// holders that cannot give one (or no proof recorded, a backup from before VERIFY).
    pub unconfirmed: Vec<ChunkFinding>,
    /// Chunks below their degree: too few holders even counting the 1.0 ones, or a wrong
    /// answer.
    pub below: Vec<ChunkFinding>,
    /// Whether this VERIFY's nonces had never been used (else a holder could have kept the
    /// answers of an earlier one).
    pub fresh: bool,
}

impl VerifyReport {
    /// Whether no chunk is below its degree.
    pub fn ok(&self) -> bool {
        self.below.is_empty()
    }
}

impl Core {
    /// Starts verifying the newest restorable version of `path`.
    pub fn start_verify(
        &self,
        op: OpId,
        path: &std::path::Path,
    ) -> Result<Vec<Action>, CommandError> {
        // Checking for a running VERIFY and registering this one happen under the metadata
        // lock, so that two requests for the same file cannot both start.
        let mut meta = self.meta.lock();
        let file = meta
            .file_for_path(path, None)
            .ok_or_else(|| CommandError::NotBackedUp(path.to_path_buf()))?;
        if self.verifying.iter().any(|v| v.file == file) {
            return Err(CommandError::VerifyRunning(path.to_path_buf()));
        }
        let f = &meta.backed_up()[&file];
        let mut attrs = f.attrs.clone();
        let nonce_index = attrs.verifies as usize % CHALLENGES;
        let fresh = (attrs.verifies as usize) < CHALLENGES;
        let enhanced = meta.enhanced_peers();
        let chunks = f
            .chunks
            .iter()
            .map(|c| {
                let others = c.holders.iter().copied().filter(|p| *p != self.cfg.id);
                let (asked, unverifiable) = others.partition(|p| enhanced.contains(p));
                ChunkCheck {
                    expected: attrs
                        .verify_key
                        .as_ref()
                        .and_then(|_| recorded(&c.proofs, nonce_index)),
                    asked,
                    unverifiable,
                    proven: BTreeSet::new(),
                    wrong: BTreeSet::new(),
                    sends: 0,
                }
            })
            .collect::<Vec<_>>();
        let desired = f.desired;
        let key = attrs.verify_key.clone();
        attrs.verifies += 1;
        meta.set_file_attrs(file, attrs);
        self.verifying.insert(
            op,
            VerifyOp {
                file,
                desired,
                nonce_index,
                fresh,
                key,
                chunks,
                next: 0,
            },
        );
        drop(meta);
        let mut actions = self.launch_checks(op);
        actions.push(Action::Schedule {
            delay: CHECK_WAIT,
            event: TimerEvent::CheckWait { op, send: 1 },
        });
        Ok(actions)
    }

    /// Sends a first CHECK for chunks of `op` while its window has room; ends it when every
    /// chunk is settled.
    fn launch_checks(&self, op: OpId) -> Vec<Action> {
        let Some(mut v) = self.verifying.get_mut(&op) else {
            return Vec::new();
        };
        let mut open = Vec::new();
        let mut room = CHECK_WINDOW.saturating_sub(v.in_flight());
        while room > 0 && v.next < v.chunks.len() {
            let no = v.next;
            v.next += 1;
            if !v.chunks[no].settled() {
                v.chunks[no].sends = 1;
                open.push(no as ChunkNo);
                room -= 1;
            }
        }
        let done = v.next == v.chunks.len() && v.in_flight() == 0;
        let (file, index, key) = (v.file, v.nonce_index, v.key.clone());
        drop(v);
        if done {
            return self.verify_over(op);
        }
        self.checks(file, index, key.as_ref(), open)
    }

    /// CHECK messages for chunks `nos` of `file` with nonce number `index`.
    fn checks(
        &self,
        file: FileId,
        index: usize,
        key: Option<&VerifyKey>,
        nos: Vec<ChunkNo>,
    ) -> Vec<Action> {
        let Some(key) = key else {
            return Vec::new();
        };
        nos.into_iter()
            .map(|no| {
                let chunk = ChunkKey { file, no };
                let nonce = nonce(key, chunk, index);
                self.send_v(
                    Channel::Mc,
                    Version::V2_0,
                    MessageKind::Check { chunk, nonce },
                    Vec::new(),
                )
            })
            .collect()
    }

    /// The wait after CHECK round `send` of `op` is over: CHECK again for the chunks in flight
    /// that some holder has not answered, while they have sends left.
    pub(super) fn check_wait_over(&self, op: OpId, send: u8) -> Vec<Action> {
        let Some(mut v) = self.verifying.get_mut(&op) else {
            return Vec::new();
        };
        let next = v.next;
        let mut again = Vec::new();
        for (no, c) in v.chunks[..next].iter_mut().enumerate() {
            if !c.settled() {
                c.sends += 1;
                again.push(no as ChunkNo);
            }
        }
        let (file, index, key) = (v.file, v.nonce_index, v.key.clone());
        drop(v);
        let mut actions = self.checks(file, index, key.as_ref(), again);
        // Chunks that ran out of sends left the window.
        actions.extend(self.launch_checks(op));
        if self.verifying.contains_key(&op) {
            actions.push(Action::Schedule {
                delay: CHECK_WAIT,
                event: TimerEvent::CheckWait { op, send: send + 1 },
            });
        }
        actions
    }

    /// A holder answered CHECK with `nonce` (answers to another VERIFY's nonce are ignored).
    pub(super) fn on_checked(
        &self,
        from: PeerId,
        chunk: ChunkKey,
        nonce: [u8; 32],
        answer: [u8; 32],
    ) -> Vec<Action> {
        let Some(op) = self
            .verifying
            .iter()
            .find(|v| v.file == chunk.file)
            .map(|v| *v.key())
        else {
            return Vec::new();
        };
        let done = {
            let Some(mut v) = self.verifying.get_mut(&op) else {
                return Vec::new();
            };
            let current = v.key.as_ref().map(|k| self::nonce(k, chunk, v.nonce_index));
            if current != Some(nonce) {
                return Vec::new();
            }
            let Some(c) = v.chunks.get_mut(chunk.no as usize) else {
                return Vec::new();
            };
            match c.expected {
                Some(e) if answer[..PROOF_BYTES] == e => {
                    c.wrong.remove(&from);
                    c.proven.insert(from)
                }
                Some(_) if !c.proven.contains(&from) => c.wrong.insert(from),
                _ => false,
            };
            v.chunks.iter().all(ChunkCheck::settled)
        };
        if done {
            self.verify_over(op)
        } else {
            Vec::new()
        }
    }

    /// A holder is asked to prove it has `chunk`: it answers if it holds it.
    pub(super) fn on_check(&self, chunk: ChunkKey, nonce: [u8; 32]) -> Vec<Action> {
        let hash = match self.meta.lock().stored_chunk(&chunk) {
            Some(c) => c.hash,
            None => return Vec::new(),
        };
        vec![Action::SendProof { chunk, nonce, hash }]
    }

    /// Ends VERIFY `op` with its report.
    fn verify_over(&self, op: OpId) -> Vec<Action> {
        let Some((_, v)) = self.verifying.remove(&op) else {
            return Vec::new();
        };
        let desired = usize::from(v.desired);
        let mut report = VerifyReport {
            chunks: v.chunks.len() as u64,
            desired: v.desired,
            verified: 0,
            unconfirmed: Vec::new(),
            below: Vec::new(),
            fresh: v.fresh,
        };
        for (no, c) in v.chunks.into_iter().enumerate() {
            if c.expected.is_some() && c.proven.len() >= desired && c.wrong.is_empty() {
                report.verified += 1;
                continue;
            }
            let finding = ChunkFinding {
                no: no as ChunkNo,
                silent: c
                    .asked
                    .iter()
                    .filter(|p| !c.proven.contains(p) && !c.wrong.contains(p))
                    .copied()
                    .collect(),
                proven: c.proven.iter().copied().collect(),
                unverified: c.unverifiable.iter().copied().collect(),
                wrong: c.wrong.iter().copied().collect(),
            };
            let possible = if c.expected.is_some() {
                c.proven.len() + c.unverifiable.len()
            } else {
                c.asked.len() + c.unverifiable.len()
            };
            if c.wrong.is_empty() && possible >= desired {
                report.unconfirmed.push(finding);
            } else {
                report.below.push(finding);
            }
        }
        vec![Action::Report {
            op,
            event: OpEvent::VerifyDone {
                file: v.file,
                report,
            },
        }]
    }
}
