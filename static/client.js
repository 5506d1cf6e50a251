// The tidechat protocol v1 client: one websocket, the rooms it is in, reconnection with
// exponential backoff and jitter, resume with `since` (nothing lost, nothing twice, paging with
// `history` when the gap is longer than one `joined` holds), a queue of messages typed while
// offline, and pacing under the server's rate limit.
//
// It knows nothing about the page: it emits events (see `emit` calls) that app.js renders.

/** First reconnect delay; doubles each failed attempt up to RECONNECT_MAX_MS. */
export const RECONNECT_BASE_MS = 1000;
/** Longest wait between reconnect attempts. */
export const RECONNECT_MAX_MS = 30000;
/** A connection that stayed up this long resets the backoff. */
const STABLE_MS = 5000;
/** Interval of application pings while online; a silent server is declared dead after PONG_TIMEOUT_MS. */
const PING_INTERVAL_MS = 25000;
const PONG_TIMEOUT_MS = 10000;

/** Room names: the server's rule (1-64 of A-Z a-z 0-9 _ -). */
const ROOM_RE = /^[A-Za-z0-9_-]+$/;
/** Names: letters and digits of any script, space, `_ - .`; not only digits; no outer spaces. */
const NAME_RE = /^[\p{Alphabetic}\p{N} _.-]+$/u;

const utf8 = new TextEncoder();

/**
 * Bytes of `text` as the server counts `max_text_bytes`: its UTF-8 size inside a JSON string,
 * so line breaks, quotes and backslashes take 2 bytes and other control characters 6. This is
 * serde_json's escaping for every string the server can hold (a lone surrogate, which it
 * cannot, counts more here).
 */
export function textBytes(text) {
  return utf8.encode(JSON.stringify(text)).length - 2;
}

/** Retry delay for a `history` page the server refused for the rate limit. */
const HISTORY_RETRY_MS = 1000;
/**
 * Times a `say` or `join` the server refused for the rate limit is sent again before it fails.
 * Pacing keeps refusals rare, but it runs on the page's clock: a frame that reached the server
 * late (a busy server, a slow network) moves the server's bucket behind the page's model.
 */
const RATE_RETRIES = 3;
/**
 * Messages of a room remembered (by `seenKey`), to know a resend after the server lost
 * the room's history: a sender whose message the others saw but whose acknowledgement died with
 * the server sends it again into the new epoch, under a new id.
 */
const SEEN_KEEP = 500;

/**
 * What identifies a message across the room's lives: its sender, its `ref` and a hash of its
 * text (a few dozen bytes, whatever the text's size); null without a `ref` (nothing to match).
 */
function seenKey(m) {
  return m.ref ? JSON.stringify([m.from, m.ref, m.text.length, fnv1a(m.text)]) : null;
}

/** 32-bit FNV-1a of a string's UTF-16 code units. */
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Why `room` is not a valid room name, or null when it is. */
export function roomProblem(room, limits) {
  const max = limits?.max_room_chars ?? 64;
  if (!room) return "Enter a room name.";
  if (room.length > max) return `Room names are at most ${max} characters.`;
  if (!ROOM_RE.test(room)) return "Room names use only letters A-Z, digits, _ and -.";
  return null;
}

/** Why `name` is not a valid user name, or null when it is. */
export function nameProblem(name, limits) {
  const max = limits?.max_name_chars ?? 32;
  const chars = [...name].length;
  if (!name) return "Enter a name.";
  if (name.trim() !== name) return "Names cannot start or end with a space.";
  if (chars > max) return `Names are at most ${max} characters.`;
  if (!NAME_RE.test(name)) return "Names use letters, digits, spaces and _ - . only.";
  if (/^[0-9]+$/.test(name)) return "A name needs at least one letter.";
  return null;
}

/** The websocket URL of this page's server: ws: for http:, wss: for https: (TLS proxies). */
export function socketUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/** Delay before reconnect attempt `attempt` (0-based): exponential, capped, "equal jitter". */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

function nonce() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Per-room state kept across reconnects. While `catchUp` is set the client pages through a
 * resume gap up to `catchUp.until` and holds live messages in `held` until it is done.
 * `seen` keeps the keys (`seenKey`) of the last SEEN_KEEP messages shown in this epoch, and
 * `before` those of the epoch before it.
 * @typedef {{name: string, joined: boolean, epoch: ?number, token: ?string, lastId: ?number,
 *            pending: Array<{ref: string, text: string, retries?: number}>,
 *            catchUp: ?{until: number}, held: Array<object>, joinRetries?: number,
 *            seen: Set<string>, before: Set<string>}} Room
 */

/** Where a room's resume token is kept between page loads (see ChatClient's `store`). */
const TOKEN_KEY = (room) => `tidechat.token.${room}`;

export class ChatClient extends EventTarget {
  /**
   * `store` (e.g. sessionStorage) keeps each room's resume token across page loads: the server
   * holds a dropped name for its token for a grace period, so a reload takes its name back.
   */
  constructor(url, { store = null } = {}) {
    super();
    this.url = url;
    this.store = store;
    /** @type {Map<string, Room>} rooms we are in or want to be in, in join order */
    this.rooms = new Map();
    this.limits = null;
    this.state = "idle";
    this.ws = null;
    this.attempt = 0;
    this.retryAt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.onlineSince = 0;
    /** frames waiting for the rate limiter: {data, cost} */
    this.outbox = [];
    this.drainTimer = null;
    this.tokens = 0;
    this.tokensAt = 0;
    // The browser knows before the socket does: drop it now and come back as soon as the
    // network does, instead of waiting for a ping to time out or a backoff timer to fire.
    window.addEventListener("online", () => this.reconnectNow());
    window.addEventListener("offline", () => {
      if (this.ws) this.abandon("the network is offline");
      else if (this.state !== "idle") this.setState("offline");
    });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state) {
    this.state = state;
    this.emit("state", { state, retryAt: this.retryAt, attempt: this.attempt });
  }

  /** Opens the connection (once); later drops reconnect by themselves. */
  start() {
    if (this.state === "idle") this.connect();
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting-now");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.dropped(null, String(e));
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = (ev) => this.dropped(ws, ev.reason || `code ${ev.code}`, ev.code);
    ws.onerror = () => {}; // a close event always follows
  }

  /** The socket is gone (or never opened): schedule the next attempt. */
  dropped(ws, reason, code) {
    if (ws && ws !== this.ws) return;
    if (this.ws) {
      this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
    }
    this.ws = null;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    clearTimeout(this.drainTimer);
    this.drainTimer = null;
    this.outbox = [];
    for (const room of this.rooms.values()) {
      // Held messages are not lost: lastId has not passed them, so the resume asks again.
      room.joined = false;
      room.catchUp = null;
      room.held = [];
    }
    if (this.onlineSince && Date.now() - this.onlineSince >= STABLE_MS) this.attempt = 0;
    this.onlineSince = 0;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.emit("disconnected", { reason, code });
    this.setState(navigator.onLine === false ? "offline" : "reconnecting");
  }

  /** Skips the rest of the backoff wait. */
  reconnectNow() {
    if (this.ws || this.state === "idle") return;
    this.connect();
  }

  /** Closes a socket that stopped answering, without waiting for the browser's close handshake. */
  abandon(reason) {
    const ws = this.ws;
    if (!ws) return;
    this.dropped(ws, reason);
    try {
      ws.close(4000, reason);
    } catch {
      /* already closing */
    }
  }

  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    clearTimeout(this.pongTimer);
    switch (frame.type) {
      case "hello":
        return this.onHello(frame);
      case "joined":
        return this.onJoined(frame);
      case "history":
        return this.onHistory(frame);
      case "message":
        return this.onMessage(frame, false);
      case "presence":
        return this.onPresence({
          room: frame.room,
          joined: frame.event === "joined" ? [frame.name] : [],
          left: frame.event === "joined" ? [] : [frame.name],
        });
      case "presence_batch":
        return this.onPresence({
          room: frame.room,
          joined: frame.joined ?? [],
          left: frame.left ?? [],
          memberCount: frame.member_count,
        });
      case "left":
        return this.onLeft(frame);
      case "error":
        return this.onError(frame);
      default:
        return undefined; // pong and future frame types
    }
  }

  /**
   * One presence change or a batch of them, as one event: `joined` and `left` are names (each
   * at most once), `memberCount` the room's exact count when the server sent it. Apply it as a
   * set: a batch may repeat changes the `joined` member list already showed.
   */
  onPresence(p) {
    this.emit("presence", p);
  }

  onHello(frame) {
    this.limits = frame.limits;
    this.tokens = this.bucketSize();
    this.tokensAt = performance.now();
    this.onlineSince = Date.now();
    this.retryAt = 0;
    this.emit("limits", this.limits);
    this.setState("online");
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.ping(), PING_INTERVAL_MS);
    for (const room of this.rooms.values()) this.sendJoin(room);
  }

  ping() {
    this.send({ type: "ping" });
    clearTimeout(this.pongTimer);
    this.pongTimer = setTimeout(() => this.abandon("no answer from the server"), PONG_TIMEOUT_MS);
  }

  sendJoin(room) {
    this.send(this.joinFrame(room));
  }

  joinFrame(room) {
    const frame = { type: "join", room: room.name, name: room.as };
    if (room.token) frame.token = room.token;
    if (room.lastId !== null) {
      frame.since = room.lastId;
      frame.epoch = room.epoch;
    }
    return frame;
  }

  /** The `say` frame for a pending `item`; its ref ties the echo (or an error) back to it. */
  sayFrame(room, item) {
    return { type: "say", room: room.name, text: item.text, ref: item.ref };
  }

  /** Joins `room` as `name` (now, or as soon as the connection is up). */
  join(room, name) {
    if (this.rooms.has(room)) return;
    this.rooms.set(room, {
      name: room,
      as: name,
      joined: false,
      epoch: null,
      token: this.savedToken(room, name),
      lastId: null,
      pending: [],
      catchUp: null,
      held: [],
      seen: new Set(),
      before: new Set(),
    });
    if (this.state === "online") this.sendJoin(this.rooms.get(room));
  }

  /** The token saved for `room` under `name`, if any. */
  savedToken(room, name) {
    try {
      const saved = JSON.parse(this.store?.getItem(TOKEN_KEY(room)) ?? "null");
      return saved?.name === name && typeof saved.token === "string" ? saved.token : null;
    } catch {
      return null;
    }
  }

  saveToken(room, name, token) {
    if (!this.store) return;
    if (token) this.store.setItem(TOKEN_KEY(room), JSON.stringify({ name, token }));
    else this.store.removeItem(TOKEN_KEY(room));
  }

  leave(room) {
    const r = this.rooms.get(room);
    if (!r) return;
    this.rooms.delete(room);
    this.saveToken(room, null, null);
    if (r.joined) this.send({ type: "leave", room });
  }

  /** Queues `text` for `room`; returns the ref that the echo (or an error) will carry. */
  say(room, text) {
    const r = this.rooms.get(room);
    if (!r) return null;
    const item = { ref: nonce(), text };
    r.pending.push(item);
    if (r.joined) this.send(this.sayFrame(r, item));
    return item.ref;
  }

  onJoined(frame) {
    const r = this.rooms.get(frame.room);
    if (!r) {
      // We left while the join was in flight.
      this.send({ type: "leave", room: frame.room });
      return;
    }
    const resumed = r.lastId !== null;
    const epochChanged = resumed && r.epoch !== frame.epoch;
    if (epochChanged) {
      r.lastId = 0; // a new id space: the server lost this room's history
      r.before = r.seen;
      r.seen = new Set();
    }
    r.joined = true;
    r.joinRetries = 0;
    r.epoch = frame.epoch;
    r.token = frame.token;
    r.as = frame.name;
    this.saveToken(frame.room, frame.name, frame.token);
    this.emit("joined", {
      room: frame.room,
      name: frame.name,
      members: frame.members,
      memberCount: frame.member_count,
      resumed,
      recovered: frame.recovered,
      epochChanged,
    });
    for (const m of frame.history) this.onMessage(m, true);
    // A resume across a gap longer than one page: the rest comes page by page (`more` then
    // means "after this page"; on a fresh join it means older messages, which are not shown).
    if (resumed && !epochChanged && frame.more && frame.history.length) {
      r.catchUp = { until: frame.last_id };
      r.held = [];
      this.requestPage(r);
      return;
    }
    this.synced(r, frame.last_id);
  }

  requestPage(r) {
    this.send({ type: "history", room: r.name, since: r.lastId ?? 0 });
  }

  onHistory(frame) {
    const r = this.rooms.get(frame.room);
    if (!r || !r.catchUp) return;
    const until = r.catchUp.until;
    // Messages after `until` are live ones: they come (held) from the room, in order.
    for (const m of frame.messages) if (m.id <= until) this.onMessage(m, true);
    const last = frame.messages.at(-1)?.id ?? until;
    if (frame.more && last < until) {
      this.requestPage(r);
      return;
    }
    this.synced(r, until);
  }

  /** The room is caught up to `lastId`: live messages held meanwhile follow, then pending ones. */
  synced(r, lastId, incomplete = false) {
    const held = r.held;
    r.catchUp = null;
    r.held = [];
    if (!incomplete) r.lastId = Math.max(r.lastId ?? 0, lastId);
    for (const m of held) this.onMessage(m, false);
    this.emit("synced", { room: r.name, incomplete });
    // Whatever is still pending never reached the server (or died with it): send it now.
    for (const item of r.pending) {
      this.send(this.sayFrame(r, item));
    }
  }

  onMessage(m, fromHistory) {
    const r = this.rooms.get(m.room);
    if (!r) return;
    if (r.catchUp && !fromHistory) {
      r.held.push(m);
      return;
    }
    if (r.lastId !== null && m.id <= r.lastId) return; // seen before this reconnect
    r.lastId = m.id;
    const key = seenKey(m);
    if (key !== null) {
      // Shown before the server lost the room: its sender never had the acknowledgement.
      if (r.before.has(key)) return;
      r.seen.add(key);
      if (r.seen.size > SEEN_KEEP) r.seen.delete(r.seen.values().next().value);
    }
    const own = m.from === r.as;
    if (own && m.ref) {
      const i = r.pending.findIndex((p) => p.ref === m.ref);
      if (i >= 0) r.pending.splice(i, 1);
    }
    this.emit("message", { ...m, own, fromHistory });
  }

  onLeft(frame) {
    const r = this.rooms.get(frame.room);
    if (frame.reason !== "left" && r) {
      this.rooms.delete(frame.room);
    }
    this.emit("left", frame);
  }

  onError(frame) {
    if (frame.code === "rate_limited" && this.retryRefused(frame)) return;
    const paging = frame.room && !frame.ref ? this.rooms.get(frame.room) : null;
    if (paging?.catchUp) {
      // A refused page: retry one the rate limit refused; after any other refusal show what
      // there is and say that some may be missing.
      if (frame.code === "rate_limited") {
        setTimeout(() => paging.catchUp && this.requestPage(paging), HISTORY_RETRY_MS);
      } else {
        this.synced(paging, 0, true);
      }
      return;
    }
    if (frame.room && frame.ref) {
      const r = this.rooms.get(frame.room);
      if (r) r.pending = r.pending.filter((p) => p.ref !== frame.ref);
    }
    const joinFailed =
      frame.room &&
      !frame.ref &&
      ["name_taken", "invalid_name", "invalid_room", "too_many_rooms", "server_full"].includes(frame.code);
    if (joinFailed) this.rooms.delete(frame.room);
    this.emit("servererror", { ...frame, joinFailed });
  }

  /**
   * Queues a `say` or `join` that the server refused for the rate limit again, ahead of what
   * waits, once the bucket has had time to refill; false when it is not one of ours to retry
   * (or has been tried enough). Its message stays pending meanwhile.
   */
  retryRefused(frame) {
    const r = frame.room ? this.rooms.get(frame.room) : null;
    if (!r || r.catchUp) return false;
    let retry;
    if (frame.ref) {
      const item = r.pending.find((p) => p.ref === frame.ref);
      if (!item) return false;
      item.retries = (item.retries ?? 0) + 1;
      if (item.retries > RATE_RETRIES) return false;
      // Not joined (the connection dropped since): the rejoin sends what is pending anyway.
      if (!r.joined) return true;
      retry = this.sayFrame(r, item);
    } else if (!r.joined) {
      r.joinRetries = (r.joinRetries ?? 0) + 1;
      if (r.joinRetries > RATE_RETRIES) return false;
      retry = this.joinFrame(r);
    } else {
      return false;
    }
    // The server's bucket is empty: start the model from there.
    this.tokens = 0;
    this.tokensAt = performance.now();
    this.outbox.unshift({ data: JSON.stringify(retry), cost: this.costOf(retry) });
    this.drain();
    return true;
  }

  bucketSize() {
    return Math.max(1, (this.limits?.rate_burst ?? 1) - 1);
  }

  /** Tokens `frame` takes from the server's bucket: joins and history pages cost more. */
  costOf(frame) {
    if (frame.type !== "join" && frame.type !== "history") return 1;
    return Math.min(this.limits?.join_cost ?? 1, this.bucketSize());
  }

  /** Sends a frame now if the rate limit allows, else queues it behind the others. */
  send(frame) {
    if (!this.ws || this.state !== "online") return;
    this.outbox.push({ data: JSON.stringify(frame), cost: this.costOf(frame) });
    this.drain();
  }

  drain() {
    if (this.drainTimer) return;
    const rate = Math.max(0.1, (this.limits?.rate_per_sec ?? 1) * 0.9);
    while (this.outbox.length && this.ws) {
      const now = performance.now();
      this.tokens = Math.min(this.bucketSize(), this.tokens + ((now - this.tokensAt) / 1000) * rate);
      this.tokensAt = now;
      const cost = this.outbox[0].cost;
      if (this.tokens < cost) {
        const wait = ((cost - this.tokens) / rate) * 1000;
        this.drainTimer = setTimeout(() => {
          this.drainTimer = null;
          this.drain();
        }, Math.ceil(wait));
        return;
      }
      this.tokens -= cost;
      this.ws.send(this.outbox.shift().data);
    }
  }

  /** Pending (unconfirmed) messages of a room, oldest first. */
  pendingOf(room) {
    return this.rooms.get(room)?.pending ?? [];
  }
}
