//! The per-address table: open websockets and plain HTTP connections per client address, and a
//! token bucket of websocket handshakes per address, so that one address cannot take the whole
//! server (`--max-connections-per-ip`, `--max-http-connections-per-ip`,
//! `--handshake-rate-per-ip`, `--handshake-burst-per-ip`). Addresses are [`crate::addr::key`]s.
//!
//! Bounded: an entry is removed when its address has nothing open and its bucket has refilled;
//! such entries are swept whenever the table has grown by [`IDLE_ENTRIES`] since the last sweep,
//! and if a spray of addresses leaves more than half that many idle entries, all idle entries go
//! (their addresses just get a full bucket again). So the table holds one entry per address with
//! something open plus at most 1.5 x [`IDLE_ENTRIES`] idle ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Growth of the table between sweeps (entries are ~100 B with the map's overhead, so the idle
/// part stays under ~10 MiB).
pub const IDLE_ENTRIES: usize = 65_536;

/// The per-address limits.
#[derive(Debug, Clone, Copy)]
pub struct PerIpLimits {
    /// Open websockets per address.
    pub websockets: usize,
    /// Open plain HTTP connections per TCP peer.
    pub http: usize,
    /// Handshakes per second per address, sustained.
    pub rate: f64,
    /// Handshakes per address in a burst.
    pub burst: u32,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// Out of handshake tokens; the next one comes after this long.
    Rate { retry_after: Duration },
    /// The address has `websockets` open already.
    Connections,
}

#[derive(Debug)]
struct Entry {
    websockets: usize,
    http: usize,
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Table {
    map: HashMap<IpAddr, Entry>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct PerIp {
    limits: PerIpLimits,
    table: Mutex<Table>,
}

/// What one connection holds in the table; released on drop.
#[derive(Debug)]
pub struct Slot {
    table: Arc<PerIp>,
    key: IpAddr,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Websocket,
    Http,
}

impl PerIp {
    pub fn new(limits: PerIpLimits) -> Self {
        Self {
            limits,
            table: Mutex::new(Table {
                map: HashMap::new(),
                sweep_at: IDLE_ENTRIES,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding it; if something did, the counts are still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in the table (for tests and `/stats`-style diagnostics).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a handshake token and a websocket place for `key`.
    pub fn websocket(self: &Arc<Self>, key: IpAddr) -> Result<Slot, Refused> {
        let now = Instant::now();
        let mut t = self.lock();
        let e = self.entry(&mut t, key, now);
        refill(e, &self.limits, now);
        if e.tokens < 1.0 {
            let wait = (1.0 - e.tokens) / self.limits.rate;
            return Err(Refused::Rate {
                retry_after: Duration::from_secs_f64(wait.ceil().max(1.0)),
            });
        }
        e.tokens -= 1.0;
        if e.websockets >= self.limits.websockets {
            return Err(Refused::Connections);
        }
        e.websockets += 1;
        Ok(self.slot(key, Kind::Websocket))
    }

    /// Takes a plain HTTP connection place for `key`, or `None` at the cap.
    pub fn http(self: &Arc<Self>, key: IpAddr) -> Option<Slot> {
        let now = Instant::now();
        let mut t = self.lock();
        let e = self.entry(&mut t, key, now);
        if e.http >= self.limits.http {
            return None;
        }
        e.http += 1;
        Some(self.slot(key, Kind::Http))
    }

    fn slot(self: &Arc<Self>, key: IpAddr, kind: Kind) -> Slot {
        Slot {
            table: self.clone(),
            key,
            kind,
        }
    }

    fn entry<'t>(&self, t: &'t mut Table, key: IpAddr, now: Instant) -> &'t mut Entry {
        if !t.map.contains_key(&key) && t.map.len() >= t.sweep_at {
            self.sweep(t, now);
        }
        t.map.entry(key).or_insert_with(|| Entry {
            websockets: 0,
            http: 0,
            tokens: f64::from(self.limits.burst),
            last: now,
        })
    }

    /// Removes idle entries whose bucket is full; if more than [`IDLE_ENTRIES`] idle ones are
    /// left, removes every idle entry. Runs again after the table has grown by
    /// [`IDLE_ENTRIES`], so its cost is spread over that many new addresses.
    fn sweep(&self, t: &mut Table, now: Instant) {
        let limits = self.limits;
        t.map.retain(|_, e| {
            refill(e, &limits, now);
            !idle_and_full(e, &limits)
        });
        let idle = t.map.values().filter(|e| open(e) == 0).count();
        if idle > IDLE_ENTRIES / 2 {
            t.map.retain(|_, e| open(e) > 0);
        }
        t.sweep_at = t.map.len() + IDLE_ENTRIES;
    }
}

fn open(e: &Entry) -> usize {
    e.websockets + e.http
}

fn refill(e: &mut Entry, limits: &PerIpLimits, now: Instant) {
    let elapsed = now.saturating_duration_since(e.last).as_secs_f64();
    e.last = now;
    e.tokens = (e.tokens + elapsed * limits.rate).min(f64::from(limits.burst));
}

fn idle_and_full(e: &Entry, limits: &PerIpLimits) -> bool {
    open(e) == 0 && e.tokens >= f64::from(limits.burst)
}

impl Drop for Slot {
    fn drop(&mut self) {
        let limits = self.table.limits;
        let mut t = self.table.lock();
        let Some(e) = t.map.get_mut(&self.key) else {
            return;
        };
        match self.kind {
            Kind::Websocket => e.websockets = e.websockets.saturating_sub(1),
            Kind::Http => e.http = e.http.saturating_sub(1),
        }
        refill(e, &limits, Instant::now());
        if idle_and_full(e, &limits) {
            t.map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(websockets: usize, rate: f64, burst: u32) -> Arc<PerIp> {
        Arc::new(PerIp::new(PerIpLimits {
            websockets,
            http: 2,
            rate,
            burst,
        }))
    }

    #[test]
    fn caps_and_bucket_per_address() {
        let t = table(2, 0.001, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = t.websocket(a).unwrap();
        let s2 = t.websocket(a).unwrap();
        assert_eq!(t.websocket(a).unwrap_err(), Refused::Connections);
        drop(s1);
        // The bucket (3) is empty now: three handshakes were made.
        assert!(
            matches!(t.websocket(a), Err(Refused::Rate { retry_after }) if retry_after >= Duration::from_secs(1))
        );
        assert!(t.websocket(b).is_ok());
        let h1 = t.http(a).unwrap();
        let _h2 = t.http(a).unwrap();
        assert!(t.http(a).is_none());
        drop(h1);
        assert!(t.http(a).is_some());
        drop(s2);
    }

    #[test]
    fn idle_full_entries_go_and_a_spray_stays_bounded() {
        let t = table(1, 1e9, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(t.http(a).unwrap());
        assert!(t.is_empty());
        let t = table(1, 1e-9, 1);
        for i in 0..(3 * IDLE_ENTRIES as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            drop(t.websocket(ip).unwrap());
            assert!(t.len() <= 2 * IDLE_ENTRIES);
        }
    }
}
