//! The domain records a room carries: publications (chat messages with their stream position)
//! and presence changes. Brokers and stores move these; the protocol modules render them.
//!
//! [`Publication::encode`] is the storage and broker form: a small versioned binary record
//! (room and offset live in the key that stores it, so they are not repeated).

use std::sync::Arc;

use super::position::{Epoch, StreamPosition};

/// Now, in milliseconds since the Unix epoch (a publication's `ts`).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A chat message as published in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub room: Arc<str>,
    pub pos: StreamPosition,
    pub from: Arc<str>,
    pub text: Box<str>,
    /// Server time in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's nonce, echoed back.
    pub reference: Option<Box<str>>,
}

/// Something that happened in a room, as delivered to its local members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Message(Arc<Publication>),
    Presence {
        room: Arc<str>,
        name: Arc<str>,
        joined: bool,
        /// The room's member count after the change, where the broker knows it.
        count: Option<usize>,
    },
}

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed record: {0}")]
pub struct RecordError(pub &'static str);

const VERSION: u8 = 1;
/// Marks "no ref" where a ref length would be (refs are short: see `MAX_REF_CHARS`).
const NO_REF: u16 = u16::MAX;

impl Publication {
    /// What keeping this record costs, about: its text fields and a fixed overhead for the rest
    /// (the same for every store, so `--history-bytes` means one thing).
    pub fn bytes(&self) -> usize {
        64 + self.room.len()
            + self.from.len()
            + self.text.len()
            + self.reference.as_ref().map_or(0, |r| r.len())
    }

    /// `[version][ts u64][from len u16][from][text len u32][text][ref len u16 | NO_REF][ref]`,
    /// little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let r = self.reference.as_deref();
        let mut out =
            Vec::with_capacity(17 + self.from.len() + self.text.len() + r.map_or(0, str::len));
        out.push(VERSION);
        out.extend_from_slice(&self.ts.to_le_bytes());
        // Names, texts and refs are bounded far below these widths by the connection's limits.
        out.extend_from_slice(&(self.from.len() as u16).to_le_bytes());
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(&(self.text.len() as u32).to_le_bytes());
        out.extend_from_slice(self.text.as_bytes());
        match r {
            Some(r) => {
                out.extend_from_slice(&(r.len() as u16).to_le_bytes());
                out.extend_from_slice(r.as_bytes());
            }
            None => out.extend_from_slice(&NO_REF.to_le_bytes()),
        }
        out
    }

    /// Reads back what [`Self::encode`] wrote for `room` at `offset` of `epoch`.
    pub fn decode(
        room: Arc<str>,
        offset: u64,
        epoch: Epoch,
        mut b: &[u8],
    ) -> Result<Self, RecordError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], RecordError> {
            if b.len() < n {
                return Err(RecordError("truncated"));
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        fn text(b: &[u8]) -> Result<&str, RecordError> {
            std::str::from_utf8(b).map_err(|_| RecordError("text is not UTF-8"))
        }
        if take(&mut b, 1)? != [VERSION] {
            return Err(RecordError("unknown version"));
        }
        // unwraps: `take` returned exactly the requested length.
        let ts = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap());
        let n = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap()) as usize;
        let from = text(take(&mut b, n)?)?;
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap()) as usize;
        let body = text(take(&mut b, n)?)?;
        let n = u16::from_le_bytes(take(&mut b, 2)?.try_into().unwrap());
        let reference = match n {
            NO_REF => None,
            n => Some(text(take(&mut b, n as usize)?)?.into()),
        };
        if !b.is_empty() {
            return Err(RecordError("trailing bytes"));
        }
        Ok(Publication {
            room,
            pos: StreamPosition::new(offset, epoch),
            from: from.into(),
            text: body.into(),
            ts,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(reference: Option<&str>) -> Publication {
        Publication {
            room: "r".into(),
            pos: StreamPosition::new(42, Epoch(9)),
            from: "Zoë".into(),
            text: "hi \"there\"\n€".into(),
            ts: 1_700_000_000_123,
            reference: reference.map(Into::into),
        }
    }

    #[test]
    fn records_round_trip() {
        for r in [None, Some(""), Some("n-1")] {
            let p = sample(r);
            let back = Publication::decode("r".into(), 42, Epoch(9), &p.encode()).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn damaged_records_are_refused_not_misread() {
        let good = sample(Some("x")).encode();
        for cut in 0..good.len() {
            assert!(Publication::decode("r".into(), 1, Epoch(1), &good[..cut]).is_err());
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Publication::decode("r".into(), 1, Epoch(1), &longer).is_err());
        let mut bad_utf8 = good.clone();
        bad_utf8[11] = 0xff;
        assert!(Publication::decode("r".into(), 1, Epoch(1), &bad_utf8).is_err());
        let mut version = good;
        version[0] = 2;
        assert!(Publication::decode("r".into(), 1, Epoch(1), &version).is_err());
    }
}
