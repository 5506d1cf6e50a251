//! How busy a room is, for `--hot-write-delay`.
//!
//! A room that publishes more than [`HOT_EVENTS_PER_S`] events a second is *hot*: its
//! direct-write passes wait `--hot-write-delay` for more events, so each member gets several in
//! one send (uWebSockets gets the same from its event loop once it is busy). No one reads 200
//! messages a second, so a few milliseconds there go unseen and the sends per delivery fall;
//! a quiet room, and every room of ordinary chat, still sends each event at once.

use std::time::{Duration, Instant};

/// Events a second above which a room waits before its passes.
pub const HOT_EVENTS_PER_S: f64 = 200.0;

/// The rate is judged over windows this long: a burst of a few messages does not make a room
/// hot, and a room that cools down is judged again within this long.
const WINDOW: Duration = Duration::from_secs(1);

/// A room's event count over its current window, and the verdict of the last full one.
#[derive(Debug, Default)]
pub struct Heat {
    start: Option<Instant>,
    count: u32,
    hot: bool,
}

impl Heat {
    /// Counts an event at `now`; whether the room is hot (it was over the last full window).
    pub fn event(&mut self, now: Instant) -> bool {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            self.hot = f64::from(self.count) >= HOT_EVENTS_PER_S * elapsed.as_secs_f64();
            self.start = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.hot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` events spaced `gap` apart from `t`; the last verdict and the time after.
    fn feed(heat: &mut Heat, t: Instant, n: u32, gap: Duration) -> (bool, Instant) {
        let mut hot = false;
        let mut now = t;
        for _ in 0..n {
            hot = heat.event(now);
            now += gap;
        }
        (hot, now)
    }

    #[test]
    fn a_room_is_hot_only_after_a_full_window_over_the_rate() {
        let mut heat = Heat::default();
        let t = Instant::now();
        // 400 events a second: not judged before the first window ends.
        let (hot, t) = feed(&mut heat, t, 399, Duration::from_micros(2_500));
        assert!(!hot);
        let (hot, t) = feed(&mut heat, t, 10, Duration::from_micros(2_500));
        assert!(hot);
        // Ordinary chat, 100 events a second, cools it down within a window.
        let (hot, _) = feed(&mut heat, t, 120, Duration::from_millis(10));
        assert!(!hot);
    }

    #[test]
    fn a_quiet_gap_cools_a_hot_room_at_its_next_event() {
        let mut heat = Heat::default();
        let (hot, t) = feed(&mut heat, Instant::now(), 700, Duration::from_millis(2));
        assert!(hot);
        // 300 more at once, then ten seconds of nothing: about 50 a second over the window that ends.
        let (_, t) = feed(&mut heat, t, 300, Duration::from_micros(100));
        assert!(!heat.event(t + Duration::from_secs(10)));
    }

    #[test]
    fn exactly_the_rate_is_hot_and_just_under_it_is_not() {
        let t = Instant::now();
        let mut at = Heat::default();
        // 200 events in the first second, judged at the 201st at 1 s.
        let (_, end) = feed(&mut at, t, 200, Duration::from_millis(5));
        assert_eq!(end, t + WINDOW);
        assert!(at.event(end));
        let mut under = Heat::default();
        let (_, _) = feed(&mut under, t, 199, Duration::from_millis(5));
        assert!(!under.event(t + WINDOW));
    }
}
