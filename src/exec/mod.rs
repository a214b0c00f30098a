//! The one executor of the core's actions, shared by the real runtime and the simulator.
//!
//! It owns every rule about *how* actions are carried out, so that both worlds follow them:
//! a PUTCHUNK or CHUNK body is read when the sender gets to it (not while it waits), and a
//! PUTCHUNK's waits start then; a CHUNK reply is checked again at that moment (another
//! holder's CHUNK may have silenced it); chunk writes are staged and made durable in group
//! commits, and what follows [`Action::SyncMetadata`] (STORED, REMOVED) runs only after the
//! next commit has saved the metadata. The world behind it is reached through [`Effects`].

pub mod effects;
pub mod pacer;
pub mod pieces;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use std::time::Duration;

use crate::core::enhanced::header_only_chunk;
use crate::core::{Action, Channel, ChunkSource, Config, Core, Metadata, OpId, TimerEvent};
use crate::log_limit::LogLimit;
use crate::protocol::{ChunkHash, ChunkKey, MAX_CHUNK_SIZE, Message, MessageKind, Version};
use crate::secure::{Opener, Rejected, Sealer};
use crate::storage::reconcile::{Reconciled, reconcile};
use crate::storage::{ChunkStore, Disk, StorageError};
pub use effects::{Effects, Outgoing};
use pieces::Pieces;

/// Counters of what the executor saw go wrong.
#[derive(Default, Debug)]
pub struct ExecStats {
    /// Secure groups: datagrams and TCP frames dropped, by [`Rejected`] reason (unsealed,
    /// bad MAC, stale, replayed).
    pub rejected: [AtomicU64; 4],
    /// GETCHUNK 2.0s naming a TCP address other than their sender's (answered on MDR).
    pub foreign_tcp: AtomicU64,
    /// CHUNK replies not sent because the initiator's TCP connection had too much queued
    /// (another holder, or the initiator's next GETCHUNK, takes them).
    pub tcp_held_back: AtomicU64,
    /// Datagrams dropped as malformed (or on the wrong channel).
    pub malformed: AtomicU64,
    /// Disk operations that failed (writing, syncing, removing chunks; saving metadata).
    pub disk_errors: AtomicU64,
    /// The last disk error, for STATE.
    pub last_disk_error: Mutex<Option<String>>,
}

/// A chunk staged on disk, with what the core needs to record it once durable.
struct StagedWrite<S> {
    staged: S,
    chunk: ChunkKey,
    desired: u8,
    size: u32,
    hash: ChunkHash,
}

/// Work for the next group commit.
struct Commits<S> {
    /// Chunks staged, to make durable and record.
    staged: Vec<StagedWrite<S>>,
    /// Action sequences that follow a `SyncMetadata`, to run once the metadata is saved.
    after: Vec<Vec<Action>>,
}

/// What a piece or a NACK needs after [`Executor::intake_piece`].
#[derive(Debug)]
pub enum Intake {
    /// Nothing more: it was taken (true) or dropped (false: malformed, or a bad seal).
    Done(bool),
    /// It completed a message, to handle with [`Executor::on_message`].
    Message(Bytes),
}

/// The send of a PUTCHUNK from which it goes whole, never as pieces (see
/// [`Core::pieces_ok`]: a 1.0 peer that was not heard of yet ignores pieces).
const WHOLE_FROM_SEND: u8 = 3;

/// A secure peer's sealing of what it sends and checking of what it receives.
struct Guard {
    sealer: Sealer,
    opener: Opener,
}

/// Carries out one peer's core actions on a world `E`.
pub struct Executor<E: Effects> {
    this: Weak<Executor<E>>,
    guard: Option<Guard>,
    /// Enhanced, with a path MTU: chunk messages as pieces (see [`pieces`]).
    pieces: Option<Mutex<Pieces>>,
    /// The peer's protocol core.
    pub core: Core,
    /// The world it acts on.
    pub effects: E,
    /// What went wrong.
    pub stats: ExecStats,
    commits: Mutex<Commits<<E::Disk as ChunkStore>::Staged>>,
}

/// What a peer's disk holds when it starts: its metadata, reconciled with its chunks.
pub struct Booted {
    /// The metadata to start the core with.
    pub meta: Metadata,
    /// What reconciliation changed (the peer announces REMOVED for `dropped`).
    pub reconciled: Reconciled,
}

/// Opens a peer's disk for its start: loads the metadata, applies `capacity` (bytes) if given,
/// reconciles it with the chunks (forgetting what was staged and never committed), and saves a
/// fresh snapshot.
pub fn boot<D: Disk>(
    disk: &D,
    me: crate::protocol::PeerId,
    capacity: Option<u64>,
) -> Result<Booted, StorageError> {
    let mut meta = disk.load_metadata()?;
    if let Some(bytes) = capacity {
        meta.set_capacity(bytes);
    }
    let reconciled = reconcile(&mut meta, disk, me)?;
    disk.save_metadata(true, |_| {
        Some((meta.generation(), meta.drain_changes(true)))
    })?;
    Ok(Booted { meta, reconciled })
}

impl<E: Effects> Executor<E> {
    /// An executor for a core built from `cfg` and `meta`, on the world `make` builds (it gets
    /// a handle to the executor, for callbacks such as timers).
    pub fn new(cfg: Config, meta: Metadata, make: impl FnOnce(&Weak<Self>) -> E) -> Arc<Self> {
        Arc::new_cyclic(|weak| {
            let effects = make(weak);
            let started = effects.unix_ms();
            let guard = cfg.group_key.clone().map(|key| Guard {
                sealer: Sealer::new(key.clone(), started * 1000),
                opener: Opener::new(key, started),
            });
            // Every enhanced peer takes pieces; only one with a path MTU sends them.
            let pieces = cfg.enhanced().then(|| {
                Mutex::new(Pieces::new(
                    cfg.id,
                    cfg.seed ^ 0x9e37_79b9_7f4a_7c15,
                    started << 20,
                ))
            });
            Executor {
                this: weak.clone(),
                guard,
                pieces,
                core: Core::new(cfg, meta),
                effects,
                stats: ExecStats::default(),
                commits: Mutex::new(Commits {
                    staged: Vec::new(),
                    after: Vec::new(),
                }),
            }
        })
    }

    /// What the peer does when it starts (see [`Core::startup`]), after saving its metadata.
    pub fn start(&self, reconciled: Reconciled) {
        self.save_metadata();
        self.run(self.core.startup(reconciled.dropped));
    }

    /// Handles one received datagram of `full` bytes, of which only the beginning may be in
    /// `datagram` (a CHUNK's header, read without its body by a peer that restores nothing),
    /// sent from `from` (if known). `backlog_filling` tells that the peer's queue of received
    /// work is filling up. Returns whether the datagram went to the core (false: dropped as
    /// malformed, counted in [`ExecStats::malformed`]).
    pub fn on_datagram(
        &self,
        channel: Channel,
        datagram: Bytes,
        full: usize,
        backlog_filling: bool,
        from: Option<std::net::IpAddr>,
    ) -> bool {
        if let Some(intake) = self.intake_piece(channel, &datagram, full) {
            return match intake {
                Intake::Done(ok) => ok,
                Intake::Message(message) => self.on_message(channel, message, from),
            };
        }
        let (datagram, full) = match self.open(&datagram) {
            // (The seal is not part of the message.)
            Ok(message) => {
                let seal = datagram.len() - message.len();
                (message, full - seal)
            }
            Err(e) => {
                tracing::debug!("dropped a datagram on {}: {e}", channel.name());
                return false;
            }
        };
        self.on_message_datagram(channel, datagram, full, backlog_filling, from)
    }

    /// The cheap part of receiving a piece or a NACK (see [`pieces`]), fit for the thread
    /// that receives it: opens it (in a secure group), takes a piece into its message,
    /// answers a NACK. `None` if `datagram` is neither: it goes to [`Executor::on_datagram`]
    /// whole. A message the piece completes comes back as [`Intake::Message`], for
    /// [`Executor::on_message`] (on a worker: it may write to disk).
    pub fn intake_piece(&self, channel: Channel, datagram: &[u8], full: usize) -> Option<Intake> {
        // Looked at before the seal is checked: a seal is checked (and its number taken)
        // once, by whichever path the datagram goes.
        if !pieces::is_piece_or_nack(crate::secure::envelope::unchecked_message(datagram)) {
            return None;
        }
        let message = match self.open_slice(datagram) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!("dropped a datagram on {}: {e}", channel.name());
                return Some(Intake::Done(false));
            }
        };
        if full - (datagram.len() - message.len()) > message.len() {
            // A peer that restores nothing read only a CHUNK piece's header: enough to
            // silence its own reply.
            if let Some((Channel::Mdr, chunk)) = pieces::peek_chunk(message) {
                self.core.chunk_seen(chunk);
            }
            return Some(Intake::Done(true));
        }
        Some(self.on_piece_or_nack(channel, message))
    }

    /// Handles a message put together from pieces ([`Intake::Message`]).
    pub fn on_message(
        &self,
        channel: Channel,
        message: Bytes,
        from: Option<std::net::IpAddr>,
    ) -> bool {
        let len = message.len();
        self.on_message_datagram(channel, message, len, false, from)
    }

    /// Handles one message (opened, whole or put together from pieces); see
    /// [`Executor::on_datagram`].
    fn on_message_datagram(
        &self,
        channel: Channel,
        datagram: Bytes,
        full: usize,
        backlog_filling: bool,
        from: Option<std::net::IpAddr>,
    ) -> bool {
        if full > datagram.len() {
            // Only a CHUNK's header is of use without its body (whose size is still checked).
            let header = header_of(&datagram).filter(|h| full - h.len() <= MAX_CHUNK_SIZE);
            match header.map(Message::parse) {
                Some(Ok(Message {
                    kind: MessageKind::Chunk { chunk, .. },
                    ..
                })) => {
                    self.core.chunk_seen(chunk);
                    return true;
                }
                _ => {
                    self.malformed(format_args!("a {full}-byte datagram on {}", channel.name()));
                    return false;
                }
            }
        }
        let msg = match Message::parse_shared(&datagram) {
            Ok(msg) if channel_of(&msg.kind) == channel => msg,
            Ok(msg) => {
                self.malformed(format_args!(
                    "{} received on {}",
                    msg.kind.name(),
                    channel.name()
                ));
                return false;
            }
            Err(e) => {
                self.malformed(format_args!(
                    "malformed datagram on {}: {e}",
                    channel.name()
                ));
                return false;
            }
        };
        // A GETCHUNK 2.0 names where to send the body over TCP: only its sender's own address
        // is believed (else anyone could make holders push chunks to a host of theirs); another
        // one is dropped and the holder answers on MDR, as to a 1.0 GETCHUNK.
        let mut msg = msg;
        if let MessageKind::Getchunk { .. } = &msg.kind
            && let Some(addr) = crate::core::enhanced::tcp_reply_address(&msg.extra_lines)
            && from.is_some_and(|ip| ip != std::net::IpAddr::V4(*addr.ip()))
        {
            tracing::debug!("GETCHUNK from {from:?} names TCP {addr}: answered on MDR instead");
            self.stats.foreign_tcp.fetch_add(1, Ordering::Relaxed);
            msg.extra_lines.clear();
        }
        if let MessageKind::Chunk { chunk, .. } = &msg.kind
            && backlog_filling
        {
            self.core.restore_backlogged(*chunk);
        }
        self.run(self.core.on_message(msg));
        true
    }

    /// Handles a message received over TCP (enhanced restores: only CHUNKs).
    pub fn on_tcp_message(&self, frame: Bytes) {
        let frame = match self.open(&frame) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!("dropped a TCP frame: {e}");
                return;
            }
        };
        match Message::parse_shared(&frame) {
            Ok(msg) if matches!(msg.kind, MessageKind::Chunk { .. }) => {
                self.run(self.core.on_message(msg));
            }
            Ok(_) => tracing::debug!("dropped a TCP frame that is not a CHUNK"),
            Err(e) => tracing::debug!("dropped a malformed TCP frame: {e}"),
        }
    }

    /// The message in a received datagram or frame: itself in a plain group; in a secure one,
    /// what its seal holds if it is authentic, fresh and new (else it is counted and dropped).
    fn open(&self, received: &Bytes) -> Result<Bytes, Rejected> {
        self.open_slice(received)
            .map(|message| received.slice_ref(message))
    }

    /// [`Executor::open`] of a borrowed datagram.
    fn open_slice<'a>(&self, received: &'a [u8]) -> Result<&'a [u8], Rejected> {
        let Some(guard) = &self.guard else {
            return Ok(received);
        };
        guard
            .opener
            .open(received, self.effects.unix_ms())
            .inspect_err(|e| {
                self.stats.rejected[*e as usize].fetch_add(1, Ordering::Relaxed);
            })
    }

    /// `message` as it goes out: sealed in a secure group.
    fn seal(&self, message: Vec<u8>) -> Vec<u8> {
        match &self.guard {
            Some(guard) => guard.sealer.seal(&message, self.effects.unix_ms()),
            None => message,
        }
    }

    /// Queues `out` on `channel` whole, sealed (when it is built) in a secure group.
    fn send_whole(&self, channel: Channel, out: Outgoing) {
        if self.guard.is_none() {
            return self.effects.send(channel, out);
        }
        let s = self.this();
        let sealed = move || {
            out.into_datagrams()
                .into_iter()
                .map(|d| s.seal(d))
                .collect()
        };
        self.effects.send(channel, Outgoing::Many(Box::new(sealed)));
    }

    /// Queues `out` on `channel`: when it is built, cut into pieces if it is a chunk message
    /// larger than a frame (see [`pieces`]), and sealed in a secure group.
    fn send(&self, channel: Channel, out: Outgoing) {
        if self.guard.is_none() && self.pieces.is_none() {
            return self.effects.send(channel, out);
        }
        let s = self.this();
        let build = move || {
            out.into_datagrams()
                .into_iter()
                .flat_map(|d| s.as_pieces(channel, d))
                .map(|d| s.seal(d))
                .collect()
        };
        self.effects.send(channel, Outgoing::Many(Box::new(build)));
    }

    /// `datagram` as it goes out on `channel`: whole, or its pieces (a PUTCHUNK 2.0 or CHUNK
    /// 2.0 larger than a frame, when every peer heard of speaks 2.0), kept for repairs.
    fn as_pieces(&self, channel: Channel, datagram: Vec<u8>) -> Vec<Vec<u8>> {
        let (Some(state), Some(mtu)) = (&self.pieces, self.core.config().mtu) else {
            return vec![datagram];
        };
        let seal = if self.guard.is_some() {
            crate::secure::envelope::OVERHEAD
        } else {
            0
        };
        let chunk_message =
            datagram.starts_with(b"PUTCHUNK 2.0 ") || datagram.starts_with(b"CHUNK 2.0 ");
        if channel == Channel::Mc || !chunk_message || datagram.len() + seal + 28 <= mtu {
            return vec![datagram];
        }
        let chunk = match header_of(&datagram).map(Message::parse) {
            Some(Ok(Message {
                kind: MessageKind::Putchunk { chunk, .. } | MessageKind::Chunk { chunk, .. },
                ..
            })) => chunk,
            _ => return vec![datagram],
        };
        if !self.core.pieces_ok() {
            return vec![datagram];
        }
        let mut state = state.lock();
        let key = state.next_key(chunk, channel);
        let parts = pieces::split(key, &datagram, pieces::piece_payload(mtu, seal));
        state.sent(key, datagram, parts.len(), self.effects.unix_ms());
        parts
    }

    /// Whether a due timer has nothing left to do (cheap; see [`Core::timer_is_stale`]).
    pub fn timer_is_stale(&self, event: &TimerEvent) -> bool {
        self.core.timer_is_stale(event)
    }

    /// Handles a due timer.
    pub fn on_timer(&self, event: TimerEvent) {
        if let TimerEvent::PieceCheck {
            origin,
            seq,
            chunk,
            channel,
        } = event
        {
            return self.check_pieces(pieces::Key {
                origin,
                seq,
                chunk,
                channel,
            });
        }
        self.run(self.core.on_timer(event));
    }

    /// A piece or a NACK arrived (opened, on `channel`).
    fn on_piece_or_nack(&self, channel: Channel, datagram: &[u8]) -> Intake {
        let Some(state) = &self.pieces else {
            return Intake::Done(false); // a plain (or 1.0) peer ignores them
        };
        let now = self.effects.unix_ms();
        if let Some(piece) = pieces::parse_piece(datagram).filter(|p| p.key.channel == channel) {
            if channel == Channel::Mdr && !self.core.awaits_chunk(piece.key.chunk) {
                // A body for another peer's restore: it silences our reply, nothing more.
                self.core.chunk_seen(piece.key.chunk);
                return Intake::Done(true);
            }
            let took = state.lock().take(&piece, now);
            match took {
                pieces::Took::Whole(message) => return Intake::Message(Bytes::from(message)),
                pieces::Took::Check(delay) => self.schedule_check(piece.key, delay),
                pieces::Took::Kept => {}
            }
            return Intake::Done(true);
        }
        let Some(nack) = pieces::parse_nack(datagram).filter(|_| channel == Channel::Mc) else {
            self.malformed(format_args!(
                "a malformed PIECE or NACK on {}",
                channel.name()
            ));
            return Intake::Done(false);
        };
        // A PUTCHUNK whose chunk no longer waits for STOREDs (its backup is over, or it was
        // deleted) is not repaired: only NACKs of others are noted.
        let wanted = nack.key.channel == Channel::Mdr || self.core.putchunk_pending(nack.key.chunk);
        let repairs = state.lock().nacked(&nack, now, wanted);
        if nack.key.origin == self.core.config().id && !repairs.is_empty() {
            // Pieces were lost on the way: the send rate goes down for a while.
            self.effects.slow_down();
            let (channel, chunk) = (nack.key.channel, nack.key.chunk);
            let s = self.this();
            let build = move || {
                // A PUTCHUNK's repair is sent only while its chunk still waits for STOREDs
                // (not after its DELETE, say).
                if channel == Channel::Mdb && !s.core.putchunk_pending(chunk) {
                    return Vec::new();
                }
                repairs.into_iter().map(|p| s.seal(p)).collect()
            };
            self.effects
                .send(channel, Outgoing::Repair(Box::new(build)));
        }
        Intake::Done(true)
    }

    fn schedule_check(&self, key: pieces::Key, delay: Duration) {
        let event = TimerEvent::PieceCheck {
            origin: key.origin,
            seq: key.seq,
            chunk: key.chunk,
            channel: key.channel,
        };
        self.effects.schedule(delay, event);
    }

    /// Looks at an incomplete message sent as pieces: NACK what is missing, or wait more.
    fn check_pieces(&self, key: pieces::Key) {
        let Some(state) = &self.pieces else { return };
        let checked = state.lock().check(key, self.effects.unix_ms());
        match checked {
            pieces::Checked::Nack(nack, delay) => {
                self.send_sealed(Channel::Mc, nack);
                self.schedule_check(key, delay);
            }
            pieces::Checked::Again(delay) => self.schedule_check(key, delay),
            pieces::Checked::Done => {}
        }
    }

    /// Counters of the pieces' traffic (zero on a peer that sends none).
    pub fn piece_stats(&self) -> pieces::PieceStats {
        self.pieces
            .as_ref()
            .map(|p| p.lock().stats)
            .unwrap_or_default()
    }

    /// Queues one datagram, sealed at its turn (in a secure group).
    fn send_sealed(&self, channel: Channel, datagram: Vec<u8>) {
        let s = self.this();
        let sealed = move || vec![s.seal(datagram)];
        self.effects.send(channel, Outgoing::Many(Box::new(sealed)));
    }

    fn malformed(&self, what: std::fmt::Arguments<'_>) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("dropped {what}");
    }

    /// Logs and counts a disk error; the peer keeps running.
    pub fn disk_error(&self, what: std::fmt::Arguments<'_>) {
        static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
        let text = what.to_string();
        crate::log_limited!(LIMIT, error, "{text}");
        self.stats.disk_errors.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_disk_error.lock() = Some(text);
    }

    /// Whether nothing waits for a group commit.
    pub fn commit_idle(&self) -> bool {
        let c = self.commits.lock();
        c.staged.is_empty() && c.after.is_empty()
    }

    /// Whether the metadata on disk is the core's, with nothing waiting to be committed.
    pub fn metadata_saved(&self) -> bool {
        self.effects.disk().saved_generation() == self.core.with_metadata(|m| m.generation())
            && self.commit_idle()
    }

    fn this(&self) -> Arc<Self> {
        self.this.upgrade().expect("a running peer is alive")
    }

    /// Executes the core's actions in order.
    pub fn run(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            // A change that asks for nothing (a peer noted as enhanced, say) is saved soon too.
            if self.core.metadata_changed() {
                self.effects.wake_commit();
            }
            return;
        }
        self.effects.wake_commit();
        let disk = self.effects.disk();
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            match action {
                Action::Send { channel, message } => {
                    self.send(channel, Outgoing::Ready(message.encode()))
                }
                Action::SendPutchunk {
                    version,
                    chunk,
                    degree,
                    source,
                    op,
                    send,
                    wait,
                    late,
                    extra_lines,
                } => {
                    let s = self.this();
                    let build = move || {
                        let datagram =
                            s.putchunk_datagram(op, version, chunk, degree, source, extra_lines)?;
                        // The waits start now that it goes out, not while it waited.
                        s.effects
                            .schedule(wait, TimerEvent::PutchunkWait { chunk, send });
                        if let Some((delay, event)) = late {
                            s.effects.schedule(delay, event);
                        }
                        Some(datagram)
                    };
                    if send >= WHOLE_FROM_SEND {
                        // A late resend goes whole: a 1.0 peer that ignored the pieces (not
                        // heard of yet) may take it.
                        self.send_whole(Channel::Mdb, Outgoing::Build(Box::new(build)));
                    } else {
                        self.send(Channel::Mdb, Outgoing::Build(Box::new(build)));
                    }
                }
                Action::WriteCatalog { path, bytes, tag } => {
                    let written = disk.write_catalog(&path, &bytes);
                    if let Err(e) = &written {
                        self.disk_error(format_args!(
                            "writing the catalog to {}: {e}",
                            path.display()
                        ));
                    }
                    self.run(self.core.catalog_written(tag, written.is_ok()));
                }
                Action::LoadCatalog {
                    op,
                    path,
                    tag,
                    holders,
                } => {
                    let bytes = disk
                        .read_source(&path, 0, tag.size as usize)
                        .map_err(|e| format!("reading the recovered catalog: {e}"));
                    disk.abort_restore(&path);
                    self.run(self.core.catalog_loaded(op, tag, holders, bytes));
                }
                Action::CheckSource {
                    op,
                    path,
                    size,
                    mtime_ns,
                } => {
                    let unchanged = disk.source_unchanged(&path, size, mtime_ns);
                    self.run(self.core.source_checked(op, unchanged));
                }
                Action::RecordHash { op, chunk, source } => {
                    let ChunkSource::File { path, offset, len } = source else {
                        continue;
                    };
                    let recorded = match disk.read_source(&path, offset, len) {
                        Ok(body) => self.core.putchunk_read(op, chunk, body).map(drop),
                        Err(e) => Err(self.core.backup_source_failed(op, e.to_string())),
                    };
                    if let Err(actions) = recorded {
                        self.run(actions);
                    }
                }
                Action::SendProof { chunk, nonce, hash } => {
                    let s = self.this();
                    let build = move || {
                        let body = s.stored_body(chunk, hash)?;
                        let proof = crate::core::verify::proof(&nonce, &body);
                        let checked = MessageKind::Checked {
                            chunk,
                            nonce,
                            proof,
                        };
                        Some(s.message(Version::V2_0, checked).encode())
                    };
                    self.send(Channel::Mc, Outgoing::Build(Box::new(build)));
                }
                Action::SendChunk { chunk, hash, tcp } => {
                    let s = self.this();
                    let build = move || {
                        // Another holder's CHUNK may have gone out while this one waited.
                        s.core
                            .chunk_reply_due(chunk)
                            .then(|| s.chunk_datagram(chunk, hash, tcp))
                            .flatten()
                    };
                    self.send(Channel::Mdr, Outgoing::Build(Box::new(build)));
                }
                Action::WriteChunk {
                    chunk,
                    desired,
                    body,
                } => match disk.stage_chunk(chunk, &body) {
                    Ok(staged) => {
                        self.commits.lock().staged.push(StagedWrite {
                            staged,
                            chunk,
                            desired,
                            size: body.len() as u32,
                            hash: ChunkHash::of(&body),
                        });
                        self.effects.wake_commit();
                    }
                    Err(e) => {
                        self.disk_error(format_args!("storing chunk {chunk}: {e}"));
                        let failed =
                            self.core
                                .chunk_written(chunk, desired, body.len() as u32, None);
                        self.run(failed);
                    }
                },
                Action::RemoveChunk { chunk } => {
                    tracing::debug!("removing the copy of {chunk}");
                    if let Err(e) = disk.remove_chunk(&chunk) {
                        self.disk_error(format_args!("removing chunk {chunk}: {e}"));
                    }
                }
                Action::CreateRestoreFile { op, path, size } => {
                    if let Err(e) = disk.create_restore_file(&path, size) {
                        self.run(
                            self.core.restore_failed(
                                op,
                                format!("cannot create {}: {e}", path.display()),
                            ),
                        );
                    }
                }
                Action::WriteRestored {
                    op,
                    path,
                    offset,
                    body,
                } => {
                    let written = disk.write_restored(&path, offset, &body);
                    if let Err(e) = &written {
                        tracing::error!("writing {}: {e}", path.display());
                    }
                    self.run(self.core.restored_chunk_written(op, &path, written.is_ok()));
                }
                Action::CommitRestore {
                    op,
                    tmp,
                    dest,
                    placement,
                } => {
                    let result = disk
                        .commit_restore(&tmp, &dest, placement)
                        .map_err(|e| e.to_string());
                    self.run(self.core.restore_committed(op, result));
                }
                Action::AbortRestore { tmp } => disk.abort_restore(&tmp),
                Action::SyncMetadata => {
                    // What follows waits for the next commit (which saves the metadata).
                    self.commits.lock().after.push(actions.collect());
                    self.effects.wake_commit();
                    return;
                }
                Action::Schedule { delay, event } => self.effects.schedule(delay, event),
                Action::Report { op, event } => self.effects.report(op, event),
            }
        }
    }

    /// Group commit: makes the staged chunks durable and records them, saves the metadata,
    /// then runs the actions that waited for it (STOREDs, REMOVEDs).
    pub fn commit(&self) {
        let staged = std::mem::take(&mut self.commits.lock().staged);
        if !staged.is_empty() {
            let (files, writes): (Vec<_>, Vec<_>) = staged
                .into_iter()
                .map(|w| (w.staged, (w.chunk, w.desired, w.size, w.hash)))
                .unzip();
            let results = self.effects.disk().commit_chunks(files);
            for ((chunk, desired, size, hash), result) in writes.into_iter().zip(results) {
                let written = match result {
                    Ok(()) => Some(hash),
                    Err(e) => {
                        self.disk_error(format_args!("storing chunk {chunk}: {e}"));
                        None
                    }
                };
                self.run(self.core.chunk_written(chunk, desired, size, written));
            }
        }
        let after = std::mem::take(&mut self.commits.lock().after);
        self.save_metadata();
        for actions in after {
            self.run(actions);
        }
    }

    /// Saves what changed in the metadata (errors are counted, the peer keeps running).
    pub fn save_metadata(&self) {
        if let Err(e) = self.save_to_disk() {
            self.disk_error(format_args!("saving metadata: {e}"));
        }
    }

    /// Saves what changed in the metadata.
    pub fn save_to_disk(&self) -> Result<(), StorageError> {
        self.effects
            .disk()
            .save_metadata(false, |snapshot| self.core.drain_changes(snapshot))
    }

    fn message(&self, version: Version, kind: MessageKind) -> Message {
        Message::new(version, self.core.config().id, kind)
    }

    /// Builds a CHUNK reply when its turn to be sent comes: reads the stored copy and checks
    /// it (a corrupt or unreadable copy is dropped and announced instead). Enhanced: the whole
    /// CHUNK goes over TCP to the initiator and only its header on MDR (the body goes on MDR
    /// if TCP fails).
    /// The body of a chunk stored here, if it reads back with its recorded `hash`; a copy
    /// that does not is dropped (and REMOVED announced), so that others restore its degree.
    fn stored_body(&self, chunk: ChunkKey, hash: Option<ChunkHash>) -> Option<Bytes> {
        match self.effects.disk().read_chunk(&chunk) {
            Ok(body) if hash.is_none_or(|h| h == ChunkHash::of(&body)) => Some(Bytes::from(body)),
            // Not rate-limited: the copy is dropped, so this happens once per chunk.
            Ok(_) => {
                tracing::error!(
                    "stored chunk {chunk} is corrupt: dropping it and announcing REMOVED"
                );
                self.run(self.core.stored_chunk_lost(chunk));
                None
            }
            Err(e) => {
                tracing::error!("{e}: dropping chunk {chunk} and announcing REMOVED");
                self.run(self.core.stored_chunk_lost(chunk));
                None
            }
        }
    }

    fn chunk_datagram(
        &self,
        chunk: ChunkKey,
        hash: Option<ChunkHash>,
        tcp: Option<SocketAddrV4>,
    ) -> Option<Vec<u8>> {
        let body = self.stored_body(chunk, hash)?;
        let body = match tcp {
            None => body,
            Some(addr) => {
                let whole = self.message(Version::V2_0, MessageKind::Chunk { chunk, body });
                match self.effects.send_tcp(addr, self.seal(whole.encode())) {
                    Ok(()) => {
                        let id = self.core.config().id;
                        return Some(header_only_chunk(id, chunk).encode());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // The initiator reads slower than its holders send: a body on MDR
                        // would crowd every link of the group, so nothing goes now.
                        tracing::debug!("chunk {chunk} held back: {e}");
                        self.stats.tcp_held_back.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    Err(e) => {
                        static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                        crate::log_limited!(
                            LIMIT,
                            warn,
                            "sending chunk {chunk} over TCP to {addr}: {e}; sending it on MDR"
                        );
                        // The initiator speaks 2.0: the CHUNK says so (and may travel as
                        // pieces).
                        return Some(whole.encode());
                    }
                }
            }
        };
        Some(
            self.message(Version::V1_0, MessageKind::Chunk { chunk, body })
                .encode(),
        )
    }

    /// Builds a PUTCHUNK when its turn to be sent comes: reads the chunk from the home's file
    /// (checking it did not change) or from our stored copy (re-backup).
    fn putchunk_datagram(
        &self,
        op: OpId,
        version: Version,
        chunk: ChunkKey,
        degree: u8,
        source: ChunkSource,
        extra_lines: Vec<String>,
    ) -> Option<Vec<u8>> {
        let disk = self.effects.disk();
        let body = match source {
            ChunkSource::File { path, offset, len } => match disk.read_source(&path, offset, len) {
                Ok(body) => match self.core.putchunk_read(op, chunk, body) {
                    Ok(body) => body,
                    Err(actions) => {
                        self.run(actions);
                        return None;
                    }
                },
                Err(e) => {
                    self.run(self.core.backup_source_failed(op, e.to_string()));
                    return None;
                }
            },
            ChunkSource::Stored => match disk.read_chunk(&chunk) {
                Ok(body) => body,
                Err(e) => {
                    let mut actions = self.core.stored_chunk_lost(chunk);
                    actions.extend(self.core.backup_source_failed(op, e.to_string()));
                    self.run(actions);
                    return None;
                }
            },
        };
        let putchunk = MessageKind::Putchunk {
            chunk,
            degree,
            body: body.into(),
        };
        let mut message = self.message(version, putchunk);
        message.extra_lines = extra_lines;
        Some(message.encode())
    }
}

/// The header of a datagram (up to and including its CRLF CRLF), if it is all there.
fn header_of(datagram: &[u8]) -> Option<&[u8]> {
    let end = datagram.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(&datagram[..end + 4])
}

/// The channel a message type travels on.
pub fn channel_of(kind: &MessageKind) -> Channel {
    match kind {
        MessageKind::Putchunk { .. } => Channel::Mdb,
        MessageKind::Chunk { .. } => Channel::Mdr,
        _ => Channel::Mc,
    }
}
