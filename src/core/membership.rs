//! Enhanced: the membership view, which peers are alive, suspected or gone, judged by when
//! each was last heard, in ticks of the announcement period (the core keeps no clock).
//!
//! Every 2.0 peer sends ALIVE each period; any message counts as hearing its sender. A peer
//! known to speak 2.0 that was not heard for `suspect` ticks is *suspected*, and *gone* after
//! `gone` ticks; heard again, it is alive at once. Peers never heard to speak 2.0 do not
//! announce themselves and always count as alive. At start every known peer counts as heard at
//! tick 0, so a peer that was down before this one started is suspected one suspicion time
//! later.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::PeerId;

/// What the view says of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard recently, or a 1.0 peer (which does not announce itself).
    Alive,
    /// Not heard for the suspicion time: its copies no longer count.
    Suspected,
    /// Not heard for much longer.
    Gone,
}

/// What hearing a peer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// It was alive already.
    Known,
    /// The first time since this peer started.
    New,
    /// It was down: it came back (after being gone, or only suspected).
    Back {
        /// It had been gone (not merely suspected).
        was_gone: bool,
    },
}

/// The view.
#[derive(Debug, Default)]
pub struct View {
    /// Ticks so far.
    tick: u64,
    /// When each peer was last heard.
    heard: BTreeMap<PeerId, u64>,
    /// Peers suspected or gone (their copies do not count).
    down: BTreeSet<PeerId>,
    /// Of those, the gone ones.
    gone: BTreeSet<PeerId>,
    /// Ticks without hearing a peer after which it is suspected.
    suspect: u64,
    /// ... and gone.
    gone_after: u64,
}

/// What one tick changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    /// The tick's number.
    pub tick: u64,
    /// Peers suspected at this tick.
    pub suspected: Vec<PeerId>,
    /// Peers gone at this tick.
    pub gone: Vec<PeerId>,
}

impl View {
    /// A view that suspects a peer after `suspect` ticks of silence and calls it gone after
    /// `gone_after` (both at least 1).
    pub fn new(suspect: u64, gone_after: u64) -> Self {
        View {
            suspect: suspect.max(1),
            gone_after: gone_after.max(suspect).max(1),
            ..View::default()
        }
    }

    /// Ticks so far.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Every peer heard of since this peer started.
    pub fn heard_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.heard.keys().copied()
    }

    /// Notes that `peer` was heard now.
    pub fn heard(&mut self, peer: PeerId) -> Heard {
        let new = self.heard.insert(peer, self.tick).is_none();
        let was_gone = self.gone.remove(&peer);
        if self.down.remove(&peer) {
            Heard::Back { was_gone }
        } else if new {
            Heard::New
        } else {
            Heard::Known
        }
    }

    /// Advances one tick, judging the peers known to speak 2.0 (`enhanced`).
    pub fn advance(&mut self, enhanced: &BTreeSet<PeerId>) -> Transitions {
        self.tick += 1;
        let mut t = Transitions {
            tick: self.tick,
            ..Transitions::default()
        };
        for &peer in enhanced {
            let last = *self.heard.entry(peer).or_insert(0);
            let silent = self.tick - last;
            if silent >= self.suspect && self.down.insert(peer) {
                t.suspected.push(peer);
            }
            if silent >= self.gone_after && self.gone.insert(peer) {
                t.gone.push(peer);
            }
        }
        t
    }

    /// Peers whose copies do not count (suspected or gone).
    pub fn down(&self) -> &BTreeSet<PeerId> {
        &self.down
    }

    /// Whether `peer` counts as alive.
    pub fn is_alive(&self, peer: PeerId) -> bool {
        !self.down.contains(&peer)
    }

    /// What the view says of `peer`.
    pub fn state(&self, peer: PeerId) -> PeerState {
        if self.gone.contains(&peer) {
            PeerState::Gone
        } else if self.down.contains(&peer) {
            PeerState::Suspected
        } else {
            PeerState::Alive
        }
    }

    /// Ticks since `peer` was last heard (`None`: never, since this peer started).
    pub fn silent_for(&self, peer: PeerId) -> Option<u64> {
        self.heard.get(&peer).map(|t| self.tick - t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_makes_a_peer_suspected_then_gone_and_a_word_brings_it_back() {
        let mut v = View::new(3, 6);
        let enhanced: BTreeSet<PeerId> = [2, 3].into();
        assert_eq!(v.heard(2), Heard::New);
        for _ in 0..2 {
            let t = v.advance(&enhanced);
            assert!(t.suspected.is_empty() && t.gone.is_empty(), "{t:?}");
            v.heard(2);
        }
        let t = v.advance(&enhanced);
        assert_eq!(t.suspected, vec![3], "3 was never heard since the start");
        assert_eq!(v.state(3), PeerState::Suspected);
        assert!(v.is_alive(2) && !v.is_alive(3));
        assert!(
            v.is_alive(9),
            "a peer not known to speak 2.0 counts as alive"
        );
        for _ in 0..2 {
            v.advance(&enhanced);
        }
        let t = v.advance(&enhanced);
        assert_eq!(t.gone, vec![3]);
        assert_eq!(v.state(3), PeerState::Gone);
        assert_eq!(v.heard(3), Heard::Back { was_gone: true }, "it came back");
        assert_eq!(v.state(3), PeerState::Alive);
        assert_eq!(v.heard(3), Heard::Known);
    }
}
