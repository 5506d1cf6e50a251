//! Input rules that protect the server and other users: name and room syntax, and the
//! per-connection token bucket.

use std::time::Instant;

/// Longest user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;

/// Rate tokens a `join` or `history` request costs (every other frame costs one): each builds a
/// frame of up to `--join-history-bytes` of messages plus the member list, so join/leave in a
/// loop must not be as cheap as a `say`. At the default `--rate 20` that is 4 pages a second.
pub const JOIN_COST: u32 = 5;

/// The room rule in words, for the `invalid_room` error.
pub fn room_rule() -> String {
    format!("room names are 1-{MAX_ROOM_CHARS} letters, digits, _ or -")
}

/// The name rule in words, for the `invalid_name` error.
pub fn name_rule() -> String {
    format!("names are 1-{MAX_NAME_CHARS} letters, digits, spaces, _ - or ., not only digits")
}

/// Room names: 1..=64 of `A-Z a-z 0-9 _ -`, so they are safe in URLs (`/#room=NAME`) and logs.
pub fn valid_room(room: &str) -> bool {
    (1..=MAX_ROOM_CHARS).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// User names: 1..=32 characters, letters, digits, spaces and `_ - .` (any script), no leading or
/// trailing space, and not all digits: all-digit names belong to `/chatSocket` users, who are
/// known by their connection number as in the original demo.
pub fn valid_name(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&chars)
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'))
        && !name.chars().all(|c| c.is_ascii_digit())
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_n_at(1, Instant::now())
    }

    /// Takes `n` tokens if there are that many (else none).
    pub fn take_n(&mut self, n: u32) -> bool {
        self.take_n_at(n, Instant::now())
    }

    fn take_n_at(&mut self, n: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rooms() {
        assert!(valid_room("lobby") && valid_room("a-B_9"));
        assert!(
            !valid_room("")
                && !valid_room("a b")
                && !valid_room("ü")
                && !valid_room(&"r".repeat(65))
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("alice") && valid_name("Zoë M.") && valid_name("r2d2"));
        assert!(!valid_name("") && !valid_name(" bob") && !valid_name("42"));
        assert!(!valid_name("<b>") && !valid_name(&"n".repeat(33)));
    }

    impl TokenBucket {
        fn take_at(&mut self, now: Instant) -> bool {
            self.take_n_at(1, now)
        }
    }

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let mut b = TokenBucket::new(10.0, 3);
        let t0 = b.last;
        assert!(b.take_at(t0) && b.take_at(t0) && b.take_at(t0));
        assert!(!b.take_at(t0));
        assert!(b.take_at(t0 + Duration::from_millis(100)));
        assert!(!b.take_at(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take_at(later)));
        assert!(!b.take_at(later));
        // Several at once: all or nothing.
        assert!(!b.take_n_at(4, later + Duration::from_millis(300)));
        assert!(b.take_n_at(3, later + Duration::from_millis(300)));
    }
}
