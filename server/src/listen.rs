//! Binding the TCP listeners (`--bind`, `--metrics-bind`) with the accept backlog of
//! `--backlog`. std's `TcpListener::bind` asks the kernel for 128: a burst of handshakes larger
//! than that fills the accept queue, the kernel drops the SYNs that find it full
//! (`TcpExtListenOverflows`), and each of those clients waits for its 1 s SYN retransmit (a
//! 10,000-client connect storm had a connect p99 of 1.03 s for that alone).

use std::io;
use std::net::SocketAddr;
use std::sync::Once;

use socket2::{Domain, Protocol, Socket, Type};

/// `--backlog`'s default: the default `net.core.somaxconn` of Linux since 5.4, so on such a
/// kernel the request is granted whole.
pub const DEFAULT_BACKLOG: u32 = 4096;

/// The largest `--backlog` accepted. Older kernels keep a listener's backlog in 16 bits, and a
/// queue longer than this only holds clients waiting for a server that is not keeping up.
pub const MAX_BACKLOG: u32 = 65_535;

/// Where Linux keeps the cap it applies, silently, to every `listen(2)` backlog.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// A listener on `addr` with an accept queue of `backlog` (capped by the kernel; see
/// [`in_effect`]). Like std's `bind`, it sets `SO_REUSEADDR` on Unix, so a restarted server
/// can bind its port while the old one's connections are still in `TIME_WAIT`.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<async_std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // `listen` takes an int; anything above i32::MAX would turn negative, which Linux reads as
    // "somaxconn", a quieter outcome than the one asked for. Config keeps it far below.
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    note_cap(backlog);
    // async-io makes it non-blocking as it registers it.
    Ok(std::net::TcpListener::from(socket).into())
}

/// The backlog the kernel applies to a `listen(requested)`: Linux truncates it to
/// `net.core.somaxconn` without saying so.
pub fn in_effect(requested: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(requested, |cap| requested.min(cap))
}

/// `net.core.somaxconn`, where the system has it (Linux).
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN).ok()?.trim().parse().ok()
}

/// Logs, once per process (there may be two listeners), the backlog actually in effect when
/// the kernel cuts the one asked for: otherwise a `--backlog` above the cap just looks applied.
fn note_cap(requested: u32) {
    static ONCE: Once = Once::new();
    let cap = somaxconn();
    let effective = in_effect(requested, cap);
    if effective < requested {
        ONCE.call_once(|| {
            log::info!(
                "listen backlog {effective} in effect: --backlog {requested} is capped by \
                 net.core.somaxconn ({SOMAXCONN}; raise it with sysctl to get more)"
            );
        });
    } else {
        log::debug!("listen backlog {effective}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cap_wins_when_it_is_lower() {
        assert_eq!(in_effect(4096, Some(128)), 128);
        assert_eq!(in_effect(1000, Some(4096)), 1000);
        assert_eq!(in_effect(4096, Some(4096)), 4096);
        assert_eq!(in_effect(4096, None), 4096);
    }
}
