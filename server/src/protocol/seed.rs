//! The seed protocol of `/chatSocket` (the original express-ws demo): plain text in, one
//! `"N: text"` line out per message, all in one room.

use crate::hub::record::Publication;

/// The room `/chatSocket` users live in.
pub const ROOM: &str = "lobby";

/// The line a seed client sees for a message (the demo numbered its users; seed users are named
/// by their connection number, and v1 users by their name).
pub fn line(p: &Publication) -> String {
    format!("{}: {}", p.from, p.text)
}
