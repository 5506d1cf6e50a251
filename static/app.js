// The tidechat page: wires the protocol client (client.js) to the DOM. Rooms come from the URL
// (`/#room=lobby`), the name from localStorage, the joined rooms of this tab from sessionStorage.

import { ChatClient, nameProblem, roomProblem, socketUrl, textBytes } from "./client.js";
import { Stream } from "./stream.js";

const NAME_KEY = "tidechat.name";
const ROOMS_KEY = "tidechat.rooms";
const DEFAULT_ROOM = "lobby";
/** Distance from the bottom, in pixels, that still counts as "reading the newest messages". */
const BOTTOM_SLACK = 48;

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"),
  connText: $("conn-text"),
  reconnectNow: $("reconnect-now"),
  roomTitle: $("room-title"),
  alert: $("alert"),
  alertText: $("alert-text"),
  roomList: $("room-list"),
  addRoom: $("add-room"),
  addRoomInput: $("add-room-input"),
  streams: $("streams"),
  newMessages: $("new-messages"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  hintText: $("hint-text"),
  counter: $("counter"),
  memberList: $("member-list"),
  memberCount: $("member-count"),
  membersToggle: $("members-toggle"),
  invite: $("invite"),
  leaveRoom: $("leave-room"),
  welcome: $("welcome"),
  welcomeForm: $("welcome-form"),
  welcomeError: $("welcome-error"),
  nameInput: $("name"),
  roomInput: $("room"),
};

const client = new ChatClient(socketUrl(), { store: sessionStorage });
/** @type {Map<string, {stream: Stream, item: HTMLLIElement, badge: HTMLElement, members: Set<string>, memberCount: number, unread: number, initial: boolean}>} */
const rooms = new Map();
let active = null;
let limits = null;
let countdown = null;

// ---------- plain-words errors ----------

function plainError(e) {
  const room = e.room ? `#${e.room}` : "this room";
  switch (e.code) {
    case "rate_limited":
      return "You are sending messages too fast. Wait a moment, then try again.";
    case "text_too_long":
      return `That message is too long: the limit is ${fmt(limits?.max_text_bytes)} bytes (${ESCAPES_RULE}).`;
    case "empty_text":
      return "Empty messages are not sent.";
    case "name_taken":
      return `Someone in ${room} already uses that name. Pick another one.`;
    case "invalid_name":
      return "That name can't be used: use 1-32 letters, digits, spaces, _ - or . (not only digits).";
    case "invalid_room":
      return "That room name can't be used: use 1-64 letters A-Z, digits, _ or -.";
    case "too_many_rooms":
      return `You are in the most rooms allowed (${limits?.max_rooms_per_connection ?? "?"}). Leave one to join ${room}.`;
    case "unavailable":
      return "The server cannot store messages right now, so this one was not sent. Try again in a moment.";
    case "server_full":
      return "The server has no room for new chat rooms right now. Try again later.";
    case "not_in_room":
      return `You are not in ${room} any more. Join it again to send messages there.`;
    case "replaced":
      return `You opened ${room} in another window, so this one left it.`;
    case "bad_request":
      return `The server did not understand a request (${e.message}). Reloading the page may help.`;
    default:
      return e.message || "Something went wrong.";
  }
}

/** How the server counts bytes beyond UTF-8 (see textBytes in client.js), in plain words. */
const ESCAPES_RULE = "line breaks, tabs, quotes and backslashes count as 2 bytes, other control characters as 6";
const utf8 = new TextEncoder();

/** What the text costs beyond its UTF-8 size, explained when it matters. */
function escapesNote(text) {
  return textBytes(text) > utf8.encode(text).length ? ` (${ESCAPES_RULE})` : "";
}

function fmt(n) {
  return typeof n === "number" ? n.toLocaleString() : "?";
}

function showAlert(text) {
  ui.alertText.textContent = text;
  ui.alert.hidden = false;
}

function hideAlert() {
  ui.alert.hidden = true;
}

// ---------- connection state ----------

function renderState() {
  clearInterval(countdown);
  countdown = null;
  const { state } = client;
  const shown = state === "reconnecting-now" ? "reconnecting" : state;
  ui.conn.dataset.state = shown;
  document.body.dataset.conn = shown;
  ui.reconnectNow.hidden = !(state === "reconnecting" || state === "offline");
  if (state === "online") ui.connText.textContent = "Online";
  else if (state === "connecting") ui.connText.textContent = "Connecting…";
  else if (state === "reconnecting-now") ui.connText.textContent = "Reconnecting…";
  else if (state === "offline") ui.connText.textContent = "Offline: waiting for the network";
  else if (state === "reconnecting") {
    const tick = () => {
      const s = Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000));
      ui.connText.textContent = `Reconnecting in ${s}s`;
    };
    tick();
    countdown = setInterval(tick, 1000);
  }
  for (const r of rooms.values()) r.stream.setOnline(state === "online");
}

// ---------- rooms ----------

function saveRooms() {
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify([...rooms.keys()]));
}

function addRoom(name) {
  if (rooms.has(name)) return rooms.get(name);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "room-button";
  const label = document.createElement("span");
  label.className = "room-name";
  label.textContent = `#${name}`;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.hidden = true;
  button.append(label, badge);
  button.addEventListener("click", () => switchTo(name));
  item.append(button);
  ui.roomList.append(item);
  const r = { stream: new Stream(name, ui.streams), item, badge, members: new Set(), memberCount: 0, unread: 0, initial: true };
  rooms.set(name, r);
  saveRooms();
  return r;
}

function removeRoom(name) {
  const r = rooms.get(name);
  if (!r) return;
  r.item.remove();
  r.stream.list.remove();
  rooms.delete(name);
  saveRooms();
  if (active === name) {
    active = null;
    const next = rooms.keys().next();
    if (!next.done) switchTo(next.value);
    else renderEmpty();
  }
}

function renderEmpty() {
  ui.roomTitle.textContent = "";
  ui.input.disabled = true;
  ui.send.disabled = true;
  renderMembers();
  history.replaceState(null, "", location.pathname);
  document.title = "tidechat";
}

function join(room, name) {
  addRoom(room);
  client.join(room, name);
  switchTo(room);
}

function switchTo(name) {
  const r = rooms.get(name);
  if (!r) return;
  const prev = active && rooms.get(active);
  if (prev) {
    prev.stream.scrollTop = atBottom() ? null : ui.streams.scrollTop;
    prev.stream.list.hidden = true;
    prev.item.querySelector("button").removeAttribute("aria-current");
  }
  active = name;
  r.stream.list.hidden = false;
  r.item.querySelector("button").setAttribute("aria-current", "page");
  ui.roomTitle.textContent = `#${name}`;
  ui.input.disabled = false;
  ui.input.placeholder = `Message #${name}`;
  if (r.stream.scrollTop === null) scrollToBottom();
  else ui.streams.scrollTop = r.stream.scrollTop;
  if (location.hash !== `#room=${name}`) history.replaceState(null, "", `#room=${name}`);
  renderMembers();
  updateComposer();
  markReadIfVisible();
  ui.input.focus();
}

function setUnread(r, n) {
  r.unread = n;
  r.badge.hidden = n === 0;
  r.badge.textContent = n > 99 ? "99+" : String(n);
  r.badge.setAttribute("aria-label", `${n} unread`);
  const total = [...rooms.values()].reduce((a, x) => a + x.unread, 0);
  document.title = total ? `(${total}) tidechat` : active ? `#${active} · tidechat` : "tidechat";
}

function renderMembers() {
  const r = active && rooms.get(active);
  ui.memberList.replaceChildren();
  if (!r) {
    ui.memberCount.textContent = "";
    return;
  }
  const me = client.rooms.get(active)?.as;
  const names = [...r.members].sort((a, b) => a.localeCompare(b));
  for (const n of names) {
    const li = document.createElement("li");
    li.textContent = n;
    if (n === me) {
      li.className = "me";
      const tag = document.createElement("span");
      tag.className = "you-tag";
      tag.textContent = "you";
      li.append(" ", tag);
    }
    ui.memberList.append(li);
  }
  const count = Math.max(r.memberCount, r.members.size);
  ui.memberCount.textContent = String(count);
  ui.membersToggle.textContent = `Members (${count})`;
}

// ---------- scrolling ----------

function atBottom() {
  const s = ui.streams;
  return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK;
}

function scrollToBottom() {
  ui.streams.scrollTop = ui.streams.scrollHeight;
}

function markReadIfVisible() {
  const r = active && rooms.get(active);
  if (!r || !atBottom() || document.hidden) return;
  setUnread(r, 0);
  r.stream.markRead();
  ui.newMessages.hidden = true;
}

/** Called after something was added to room `name`'s stream. */
function afterAppend(name, li, { countsAsUnread, stick }) {
  const r = rooms.get(name);
  const visible = name === active;
  if (visible && stick) {
    scrollToBottom();
  }
  if (!countsAsUnread) return;
  if (visible && atBottom() && !document.hidden) return;
  r.stream.markUnread(li);
  setUnread(r, r.unread + 1);
  if (visible) {
    ui.newMessages.hidden = false;
    ui.newMessages.textContent = `${r.unread} new message${r.unread === 1 ? "" : "s"} ↓`;
  }
}

// ---------- composer ----------

function updateComposer() {
  const text = ui.input.value;
  const max = limits?.max_text_bytes;
  const bytes = textBytes(text);
  const over = max !== undefined && bytes > max;
  ui.send.disabled = !active || text.trim() === "" || over;
  ui.composer.classList.toggle("over", over);
  ui.input.setAttribute("aria-invalid", over ? "true" : "false");
  if (max !== undefined && bytes > max * 0.8) {
    ui.counter.textContent = `${fmt(bytes)} / ${fmt(max)} bytes`;
  } else {
    ui.counter.textContent = "";
  }
  ui.hintText.textContent = over
    ? `Too long by ${fmt(bytes - max)} bytes${escapesNote(text)}: shorten it or split it.`
    : "Enter to send · Shift+Enter for a new line";
}

function sendCurrent() {
  if (!active) return;
  const text = ui.input.value;
  if (text.trim() === "") return;
  const max = limits?.max_text_bytes;
  const bytes = textBytes(text);
  if (max !== undefined && bytes > max) {
    showAlert(`This message is too long to send: ${fmt(bytes)} bytes${escapesNote(text)}, and the limit is ${fmt(max)}. Shorten it or split it into several messages.`);
    ui.input.focus();
    return;
  }
  const ref = client.say(active, text);
  if (!ref) return;
  const me = client.rooms.get(active).as;
  const li = rooms.get(active).stream.addPending(ref, me, text, client.state === "online");
  ui.input.value = "";
  updateComposer();
  afterAppend(active, li, { countsAsUnread: false, stick: true });
  markReadIfVisible();
  ui.input.focus();
}

// ---------- client events ----------

client.addEventListener("state", renderState);

client.addEventListener("limits", (e) => {
  limits = e.detail;
  ui.nameInput.maxLength = limits.max_name_chars;
  ui.roomInput.maxLength = limits.max_room_chars;
  ui.addRoomInput.maxLength = limits.max_room_chars;
  updateComposer();
});

client.addEventListener("joined", (e) => {
  const d = e.detail;
  const r = rooms.get(d.room) ?? addRoom(d.room);
  r.members = new Set(d.members);
  r.memberCount = d.memberCount;
  r.initial = !d.resumed;
  if (d.epochChanged) {
    r.stream.addNotice("The server restarted and lost this room's history: messages sent while you were away may be missing.", "warn");
  } else if (d.resumed && !d.recovered) {
    r.stream.addNotice("Some messages from while you were away are no longer available.", "warn");
  }
  if (d.room === active) renderMembers();
  if (ui.alert.dataset.room === d.room) hideAlert();
});

client.addEventListener("synced", (e) => {
  const r = rooms.get(e.detail.room);
  if (!r) return;
  if (e.detail.incomplete) {
    r.stream.addNotice("Some messages from while you were away could not be loaded.", "warn");
  }
  r.initial = false;
  if (e.detail.room === active) {
    scrollToBottom();
    markReadIfVisible();
  }
});

client.addEventListener("message", (e) => {
  const m = e.detail;
  const r = rooms.get(m.room);
  if (!r) return;
  const stick = m.room === active && atBottom();
  const li = r.stream.addMessage(m);
  const countsAsUnread = !m.own && !(m.fromHistory && r.initial);
  afterAppend(m.room, li, { countsAsUnread, stick: stick || m.own });
  if (countsAsUnread && !m.fromHistory) announce(m);
});

/** "ann joined", "ann and bob joined", "ann, bob and 3 others joined; cy left". */
function presenceNotice(came, went) {
  const list = (names) => {
    if (names.length <= 2) return names.join(" and ");
    if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`;
    return `${names[0]}, ${names[1]} and ${names.length - 2} others`;
  };
  const parts = [];
  if (came.length) parts.push(`${list(came)} joined`);
  if (went.length) parts.push(`${list(went)} left`);
  return parts.join("; ");
}

client.addEventListener("presence", (e) => {
  const p = e.detail;
  const r = rooms.get(p.room);
  if (!r) return;
  const stick = p.room === active && atBottom();
  // Set semantics: a batch may repeat what the member list already shows, and only real
  // changes are announced.
  const came = p.joined.filter((name) => !r.members.has(name));
  const went = p.left.filter((name) => r.members.has(name));
  for (const name of came) r.members.add(name);
  for (const name of went) r.members.delete(name);
  r.memberCount =
    p.memberCount ?? Math.max(r.memberCount + came.length - went.length, r.members.size);
  const notice = presenceNotice(came, went);
  if (notice) {
    const li = r.stream.addNotice(notice);
    afterAppend(p.room, li, { countsAsUnread: false, stick });
  }
  if (p.room === active) renderMembers();
});

client.addEventListener("left", (e) => {
  const f = e.detail;
  if (f.reason === "left") return; // our own leave: already removed
  showAlert(plainError({ code: f.reason, room: f.room, message: f.reason }));
  removeRoom(f.room);
});

client.addEventListener("servererror", (e) => {
  const err = e.detail;
  if (err.code === "already_joined") return;
  const text = plainError(err);
  if (err.room && err.ref) {
    rooms.get(err.room)?.stream.fail(err.ref, text);
  }
  if (err.joinFailed) {
    const wasOnly = rooms.size <= 1;
    removeRoom(err.room);
    if (err.code === "name_taken" || err.code === "invalid_name" || wasOnly) {
      openWelcome(text, err.room);
      return;
    }
  }
  showAlert(text);
  ui.alert.dataset.room = err.room ?? "";
});

client.addEventListener("disconnected", (e) => {
  const why = {
    1008: "The server closed the connection because too many messages were sent too fast.",
    1009: "The server closed the connection because a message was too big.",
  }[e.detail.code];
  if (why) showAlert(why);
});

/** Screen readers hear live messages from others through this polite region. */
const announcer = document.createElement("div");
announcer.id = "announcer";
announcer.className = "visually-hidden";
announcer.setAttribute("aria-live", "polite");
document.body.append(announcer);
function announce(m) {
  announcer.textContent = m.room === active ? `${m.from}: ${m.text}` : `New message in #${m.room} from ${m.from}`;
}

// ---------- welcome dialog ----------

function openWelcome(error, room) {
  ui.welcomeError.hidden = !error;
  ui.welcomeError.textContent = error ?? "";
  ui.nameInput.value = localStorage.getItem(NAME_KEY) ?? "";
  ui.roomInput.value = room ?? roomFromHash() ?? DEFAULT_ROOM;
  if (!ui.welcome.open) ui.welcome.showModal();
  (ui.nameInput.value && !error ? ui.roomInput : ui.nameInput).focus();
  if (error) ui.nameInput.select();
}

ui.welcomeForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const name = ui.nameInput.value.trim();
  const room = ui.roomInput.value.trim();
  const problem = nameProblem(name, limits) ?? roomProblem(room, limits);
  if (problem) {
    ui.welcomeError.textContent = problem;
    ui.welcomeError.hidden = false;
    return;
  }
  localStorage.setItem(NAME_KEY, name);
  ui.welcome.close();
  join(room, name);
});

ui.welcome.addEventListener("cancel", (e) => {
  if (rooms.size === 0) e.preventDefault(); // nothing to go back to
});

function roomFromHash() {
  const room = new URLSearchParams(location.hash.slice(1)).get("room");
  return room && !roomProblem(room, limits) ? room : null;
}

// ---------- UI events ----------

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  sendCurrent();
});

ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendCurrent();
  }
});

ui.input.addEventListener("input", updateComposer);

ui.streams.addEventListener("scroll", () => {
  if (atBottom()) markReadIfVisible();
});

ui.newMessages.addEventListener("click", () => {
  scrollToBottom();
  markReadIfVisible();
  ui.input.focus();
});

ui.reconnectNow.addEventListener("click", () => client.reconnectNow());
$("alert-close").addEventListener("click", hideAlert);

ui.addRoom.addEventListener("submit", (e) => {
  e.preventDefault();
  const room = ui.addRoomInput.value.trim();
  const problem = roomProblem(room, limits);
  if (problem) {
    showAlert(problem);
    return;
  }
  ui.addRoomInput.value = "";
  const name = localStorage.getItem(NAME_KEY);
  if (!name) openWelcome(null, room);
  else join(room, name);
});

ui.leaveRoom.addEventListener("click", () => {
  if (!active) return;
  const room = active;
  client.leave(room);
  removeRoom(room);
  if (rooms.size === 0) openWelcome(null, DEFAULT_ROOM);
});

ui.invite.addEventListener("click", async () => {
  if (!active) return;
  const link = `${location.origin}${location.pathname}#room=${active}`;
  try {
    await navigator.clipboard.writeText(link);
    showAlert(`Invite link copied: ${link}`);
  } catch {
    showAlert(`Share this link to invite someone: ${link}`);
  }
});

ui.membersToggle.addEventListener("click", () => {
  const open = document.body.classList.toggle("members-open");
  ui.membersToggle.setAttribute("aria-expanded", String(open));
});

window.addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (!room || room === active) return;
  const name = localStorage.getItem(NAME_KEY);
  if (rooms.has(room)) switchTo(room);
  else if (name) join(room, name);
  else openWelcome(null, room);
});

document.addEventListener("visibilitychange", markReadIfVisible);

document.addEventListener("keydown", (e) => {
  // Alt+Up / Alt+Down switch rooms from anywhere.
  if (!e.altKey || (e.key !== "ArrowUp" && e.key !== "ArrowDown") || rooms.size < 2) return;
  e.preventDefault();
  const names = [...rooms.keys()];
  const i = names.indexOf(active);
  const next = names[(i + (e.key === "ArrowDown" ? 1 : names.length - 1)) % names.length];
  switchTo(next);
});

// ---------- start ----------

function start() {
  const name = localStorage.getItem(NAME_KEY);
  const hashRoom = roomFromHash();
  let saved = [];
  try {
    saved = JSON.parse(sessionStorage.getItem(ROOMS_KEY) ?? "[]").filter((r) => !roomProblem(r));
  } catch {
    saved = [];
  }
  client.start();
  renderState();
  if (!name || nameProblem(name)) {
    openWelcome(null, hashRoom ?? DEFAULT_ROOM);
    return;
  }
  for (const room of saved) {
    addRoom(room);
    client.join(room, name);
  }
  join(hashRoom ?? saved[0] ?? DEFAULT_ROOM, name);
}

start();
