//! Where a message sits in its room's stream: `{offset, epoch}`.
//!
//! The offset is the message id clients see (1, 2, 3, ... per room, never reused). The epoch names
//! one life of the room's history: it stays while the history survives (restarts included) and
//! changes when the history was lost, so a client that saw offset 41 of epoch E knows whether
//! "everything after 41" still means anything.

use serde::{Deserialize, Serialize};

/// A room's epoch: random, below 2^53 so that JavaScript reads it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A new epoch from the OS CSPRNG (an epoch must not be guessable from earlier ones, or a
    /// client could fake a resume of a room's earlier life).
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        // unwrap: getrandom fails only where the OS has no CSPRNG; see `hub::new_token`.
        getrandom::fill(&mut b).expect("the OS random number generator");
        Epoch((u64::from_le_bytes(b) >> 11).max(1))
    }
}

/// A position in a room's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The message id; 0 means "before the first message".
    pub offset: u64,
    pub epoch: Epoch,
}

impl StreamPosition {
    pub fn new(offset: u64, epoch: Epoch) -> Self {
        Self { offset, epoch }
    }
}

/// What a room's stream holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub epoch: Epoch,
    /// The newest offset handed out (0 when none).
    pub last: u64,
    /// Offsets up to here may have been seen by someone and then lost (a power loss before they
    /// reached the disk); 0 when nothing can have been lost. A client whose last seen offset is
    /// below it cannot be told it missed nothing.
    pub lost_through: u64,
}

impl StreamState {
    /// A stream with nothing in it yet.
    pub fn empty(epoch: Epoch) -> Self {
        Self {
            epoch,
            last: 0,
            lost_through: 0,
        }
    }

    /// Whether a client that saw everything up to `since` in `epoch` misses nothing when it gets
    /// the kept messages after `since`, the first of which is `first_after` (`None`: none kept).
    /// Decided from what was actually read, so retention running meanwhile cannot make it lie.
    pub fn recovers(&self, since: u64, epoch: Epoch, first_after: Option<u64>) -> bool {
        epoch == self.epoch
            && since <= self.last
            && since >= self.lost_through
            && match first_after {
                Some(offset) => offset == since + 1,
                None => since == self.last,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_needs_the_epoch_the_kept_range_and_no_possible_loss() {
        let e = Epoch(7);
        let s = StreamState {
            epoch: e,
            last: 100,
            lost_through: 0,
        };
        assert!(s.recovers(50, e, Some(51)));
        assert!(s.recovers(100, e, None));
        assert!(!s.recovers(49, e, Some(51)), "message 50 is gone");
        assert!(!s.recovers(99, e, None), "message 100 is gone");
        assert!(!s.recovers(101, e, None), "a future id is not ours");
        assert!(!s.recovers(60, Epoch(8), Some(61)));
        let lossy = StreamState {
            lost_through: 70,
            ..s
        };
        assert!(!lossy.recovers(60, e, Some(61)));
        assert!(lossy.recovers(70, e, Some(71)));
        assert!(StreamState::empty(e).recovers(0, e, None));
    }

    #[test]
    fn epochs_are_exact_in_javascript() {
        for _ in 0..1000 {
            let Epoch(n) = Epoch::random();
            assert!((1..1 << 53).contains(&n));
        }
    }
}
