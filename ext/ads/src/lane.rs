//! The ACK lane: plain ACKs of the steady state (a change pushed, then acknowledged) matched in
//! the transport, so that they never reach the protocol code as events.
//!
//! The protocol code names, after a push pass that left nothing else due, the one ACK a stream
//! is waiting for ([`Lane::expect`]: type, nonce and the resource_names as encoded). A plain ACK
//! that is exactly that one, arriving before any snapshot change ([`Lane::bump`] ends every
//! expectation named before it), is taken here: recorded with its time and not reported. The
//! protocol code takes the records before it changes the stream's state ([`Lane::settle`],
//! which also ends the stream's expectation: from then on its ACKs are events again) or reads
//! its status ([`Lane::taken`], which leaves it). Anything else (another nonce, other names, a
//! NACK, a node) goes the full path as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::{locked, Ack};

/// The ACK a stream waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub type_url: String,
    pub nonce: String,
    pub names: Vec<u8>,
}

/// An ACK taken by the lane: its type, version_info, and when it came (seconds since the Unix
/// epoch, and seconds on the embedder's monotonic clock, see [`Lane::new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub type_url: String,
    pub version: String,
    pub wall: f64,
    pub monotonic: f64,
}

#[derive(Default)]
struct Slot {
    expect: Option<(Expect, u64)>,
    acked: Vec<Acked>,
}

struct State {
    epoch: u64,
    streams: HashMap<u64, Slot>,
}

/// Expected ACKs and the ACKs taken, per stream.
pub struct Lane {
    state: Mutex<State>,
    started: Instant,
    started_at: f64,
}

impl Lane {
    /// A lane whose monotonic times count from `monotonic_now` (the embedder's monotonic clock
    /// now, in seconds), so that they compare with the embedder's own.
    pub fn new(monotonic_now: f64) -> Lane {
        Lane {
            state: Mutex::new(State {
                epoch: 0,
                streams: HashMap::new(),
            }),
            started: Instant::now(),
            started_at: monotonic_now,
        }
    }

    /// Stream `stream` waits for this ACK (replacing what it waited for).
    pub fn expect(&self, stream: u64, expect: Expect) {
        let mut state = locked(&self.state);
        let epoch = state.epoch;
        state.streams.entry(stream).or_default().expect = Some((expect, epoch));
    }

    /// A snapshot is about to change: no ACK expected before now is taken any more.
    pub fn bump(&self) {
        locked(&self.state).epoch += 1;
    }

    /// Takes `ack` of `stream` if it is the one expected (true: not to be reported).
    pub fn absorb(&self, stream: u64, ack: &Ack) -> bool {
        let mut state = locked(&self.state);
        let epoch = state.epoch;
        let Some(slot) = state.streams.get_mut(&stream) else {
            return false;
        };
        let matches = slot.expect.as_ref().is_some_and(|(e, at)| {
            *at == epoch
                && e.nonce == ack.nonce
                && e.type_url == ack.type_url
                && e.names == ack.names
        });
        if !matches {
            return false;
        }
        slot.expect = None;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        slot.acked.push(Acked {
            type_url: ack.type_url.clone(),
            version: ack.version.clone(),
            wall,
            monotonic: self.started_at + self.started.elapsed().as_secs_f64(),
        });
        true
    }

    /// The ACKs taken for `stream` since the last call, oldest first; its expectation ends.
    pub fn settle(&self, stream: u64) -> Vec<Acked> {
        match locked(&self.state).streams.remove(&stream) {
            Some(slot) => slot.acked,
            None => Vec::new(),
        }
    }

    /// The ACKs taken for `stream` since the last call; what it waits for, if nothing came,
    /// is still taken (a look at the stream's status, not a change of it).
    pub fn taken(&self, stream: u64) -> Vec<Acked> {
        let mut state = locked(&self.state);
        let Some(slot) = state.streams.get_mut(&stream) else {
            return Vec::new();
        };
        let acked = std::mem::take(&mut slot.acked);
        if slot.expect.is_none() {
            state.streams.remove(&stream);
        }
        acked
    }

    /// Streams with an expectation or ACKs not yet settled.
    pub fn len(&self) -> usize {
        locked(&self.state).streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(nonce: &str, names: &[u8]) -> Ack {
        Ack {
            type_url: "T".into(),
            nonce: nonce.into(),
            version: "v1".into(),
            names: names.to_vec(),
        }
    }

    fn expect(nonce: &str, names: &[u8]) -> Expect {
        Expect {
            type_url: "T".into(),
            nonce: nonce.into(),
            names: names.to_vec(),
        }
    }

    #[test]
    fn takes_only_the_expected_ack_once() {
        let lane = Lane::new(100.0);
        assert!(!lane.absorb(1, &ack("1-1", b"a")));
        lane.expect(1, expect("1-1", b"a"));
        assert!(!lane.absorb(1, &ack("1-0", b"a")), "another nonce");
        assert!(!lane.absorb(1, &ack("1-1", b"b")), "other names");
        assert!(!lane.absorb(2, &ack("1-1", b"a")), "another stream");
        assert!(lane.absorb(1, &ack("1-1", b"a")));
        assert!(!lane.absorb(1, &ack("1-1", b"a")), "taken once");
        let got = lane.settle(1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].version, "v1");
        assert!(got[0].monotonic >= 100.0 && got[0].wall > 0.0);
        assert!(lane.settle(1).is_empty());
        assert!(lane.is_empty());
    }

    #[test]
    fn a_change_or_a_settle_ends_the_expectation() {
        let lane = Lane::new(0.0);
        lane.expect(1, expect("1-1", b""));
        lane.bump();
        let before_the_change = ack("1-1", b"");
        assert!(!lane.absorb(1, &before_the_change));
        lane.expect(1, expect("1-2", b""));
        assert!(lane.settle(1).is_empty());
        assert!(!lane.absorb(1, &ack("1-2", b"")), "settled: events again");
    }

    #[test]
    fn a_look_keeps_the_expectation() {
        let lane = Lane::new(0.0);
        lane.expect(1, expect("1-1", b""));
        assert!(lane.taken(1).is_empty());
        assert!(lane.absorb(1, &ack("1-1", b"")));
        assert_eq!(lane.taken(1).len(), 1);
        assert!(lane.is_empty());
    }
}
