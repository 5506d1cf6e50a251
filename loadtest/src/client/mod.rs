//! One simulated chat client as a goose user: `connect` (on start), `chat` (the loop: receive,
//! and send on schedule when a sender) and `drain` (on stop: wait for messages in flight, close).
//! This module is the goose side; [`dial`] opens the socket, [`state`] is the client's state
//! machine (receiving, sending on schedule, counting).
//!
//! The socket lives in the user's session data and is read inside the `chat` transaction itself,
//! so a client costs one task. Each delivery is parsed only as far as the stamp in its text
//! ([`crate::wire`]); latencies go into the run's sharded HDR histograms, and goose gets one
//! sample every [`Run::sample_every`] deliveries.

mod dial;
mod state;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;

use crate::config::Protocol;
use crate::metrics::Track;
use crate::run::Run;
use crate::wire;
use crate::ws::{WsClient, CLOSE_NORMAL};
use dial::{open_socket, wait_for};
pub use state::Client;
use state::State;

/// Longest a `chat` transaction runs before it returns to goose (which checks for the end of the
/// run between transactions).
const ITERATION: Duration = Duration::from_secs(1);
/// Time allowed for TCP connect + websocket handshake + `hello`, and for `join` -> `joined`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client waits in `drain` for the senders of its room to stop.
const SENDERS_STOP_WAIT: Duration = Duration::from_secs(5);
/// Time allowed for the close handshake at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Receive buffer per socket. It never grows: a larger frame is read only as far as its
/// beginning (type and stamp), see [`crate::ws`]. 1 KiB holds about six 64-byte messages.
const READ_BUFFER: usize = 1024;
/// A send later than this against its schedule counts as late.
pub const LATE_SEND_US: u64 = 10_000;

/// Goose request names.
pub const REQ_METHOD: &str = "WS";
pub const REQ_CONNECT: &str = "connect";
pub const REQ_JOIN: &str = "join";
pub const REQ_FANOUT: &str = "fanout";
pub const REQ_SAY: &str = "say";
pub const REQ_DISCONNECT: &str = "disconnect";

type Ws = WsClient;

/// Session data: goose wants `Clone + Sync`; the client is taken out for each transaction.
#[derive(Clone)]
pub struct Session(pub Arc<Mutex<Option<Box<Client>>>>);

fn take(user: &GooseUser) -> Option<Box<Client>> {
    let s = user.get_session_data::<Session>()?;
    let mut g = match s.0.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    g.take()
}

fn put(user: &GooseUser, client: Box<Client>) {
    if let Some(s) = user.get_session_data::<Session>() {
        let mut g = match s.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(client);
    }
}

/// `on_start`: connect, join the room, wait until ready to receive.
pub async fn connect(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let index = user.weighted_users_index;
    let (room, slot) = run.role(index);
    // unwrap: the semaphore is never closed.
    let permit = run.handshakes.acquire().await.unwrap();
    // Timed from here: waiting for a handshake slot is the generator's doing, not the server's.
    let started = Instant::now();
    let result = open_socket(run, index).await;
    let elapsed = started.elapsed();
    drop(permit);
    let mut ws = match result {
        Ok(ws) => ws,
        Err(e) => {
            run.connect_failures.add(e.clone());
            give_up(run, room, slot);
            user.record_custom_request_duration(
                REQ_METHOD,
                REQ_CONNECT,
                elapsed,
                false,
                None,
                Some(&e),
            )
            .await?;
            return Ok(());
        }
    };
    run.socket_opened();
    Run::record_into(&run.connect_hist, elapsed.as_micros() as u64);
    user.record_custom_request_duration(REQ_METHOD, REQ_CONNECT, elapsed, true, None, None)
        .await?;

    if run.params.protocol == Protocol::V1 {
        let join = wire::join_frame(&run.rooms[room].name, &format!("lt{index}"));
        let t0 = Instant::now();
        let joined = async {
            ws.send_text(join.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            // In a big room `joined` lists up to 1,000 members: only its beginning is read.
            wait_for(&mut ws, t0 + CONNECT_TIMEOUT, wire::join_reply).await
        }
        .await;
        let took = t0.elapsed();
        if let Err(e) = joined {
            run.connect_failures.add(format!("join: {e}"));
            run.socket_closed();
            give_up(run, room, slot);
            user.record_custom_request_duration(REQ_METHOD, REQ_JOIN, took, false, None, Some(&e))
                .await?;
            return Ok(());
        }
        Run::record_into(&run.join_hist, took.as_micros() as u64);
        user.record_custom_request_duration(REQ_METHOD, REQ_JOIN, took, true, None, None)
            .await?;
    }

    // Ready to receive: everything a sender sends from now on is owed to this client.
    let r = &run.rooms[room];
    let tracks = r
        .senders
        .iter()
        .map(|s| Track::new(s.sent.load(Ordering::SeqCst)))
        .collect();
    r.members.fetch_add(1, Ordering::AcqRel);
    let client = Client {
        ws: Some(ws),
        state: State {
            room,
            slot,
            tracks,
            ends: None,
            acks: 0,
            foreign: 0,
            unrecognized: 0,
            until_sample: 1 + index as u64 % run.sample_every(),
            samples: Vec::new(),
            next_send_us: None,
            sent: 0,
            schedule_stopped: false,
            phase: 0.0,
            text: String::new(),
            frame: String::new(),
        },
    };
    user.set_session_data(Session(Arc::new(Mutex::new(Some(Box::new(client))))));
    run.client_settled(true);
    Ok(())
}

fn give_up(run: &Run, room: usize, slot: Option<usize>) {
    if let Some(s) = slot {
        run.sender_done(room, s);
    }
    run.client_settled(false);
}

/// The main loop: receive for up to [`ITERATION`], sending on schedule when a sender.
pub async fn chat(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let Some(mut client) = take(user) else {
        // Never connected: idle cheaply until the run ends.
        tokio::time::sleep(ITERATION).await;
        return Ok(());
    };
    let deadline = Instant::now() + ITERATION;
    client.receive_until(run, deadline, true).await;
    client.state.flush_samples(user).await?;
    put(user, client);
    Ok(())
}

/// `on_stop`: stop sending, wait for what is still owed (bounded), close, add up.
pub async fn drain(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let Some(mut client) = take(user) else {
        return Ok(());
    };
    client.state.stop_schedule(run);
    let room = &run.rooms[client.state.room];
    let wait_senders = Instant::now() + SENDERS_STOP_WAIT;
    while client.ws.is_some() && !room.senders_done() && Instant::now() < wait_senders {
        let until = (Instant::now() + Duration::from_millis(50)).min(wait_senders);
        client.receive_until(run, until, false).await;
    }
    let drain_end = Instant::now() + Duration::from_secs_f64(run.params.drain_s);
    while client.ws.is_some() && client.state.owed(run) > 0 && Instant::now() < drain_end {
        let until = (Instant::now() + Duration::from_millis(50)).min(drain_end);
        client.receive_until(run, until, false).await;
    }
    client.state.flush_samples(user).await?;
    if let Some(mut ws) = client.ws.take() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(CLOSE_NORMAL)).await;
        run.socket_closed();
        room.members.fetch_sub(1, Ordering::AcqRel);
    }
    client.state.finish(run);
    Ok(())
}
