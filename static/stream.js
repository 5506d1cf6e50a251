// One room's message stream: the <ol> of messages and notices, pending → sent → failed states,
// grouping of consecutive messages, and the "new messages" divider. Text is only ever set with
// textContent: nothing a user sends is parsed as HTML.

/** Consecutive messages of one sender within this window share one header. */
const GROUP_MS = 5 * 60 * 1000;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function timeEl(ts) {
  const d = new Date(ts);
  const t = el("time", "time", timeFormat.format(d));
  t.dateTime = d.toISOString();
  t.title = dateTimeFormat.format(d);
  return t;
}

export class Stream {
  constructor(room, parent) {
    this.room = room;
    this.list = el("ol", "stream");
    this.list.setAttribute("aria-label", `Messages in #${room}`);
    this.list.tabIndex = 0;
    this.list.hidden = true;
    parent.append(this.list);
    /** ref -> <li> of own messages not yet confirmed */
    this.pending = new Map();
    this.divider = null;
    this.dividerStale = false;
    this.scrollTop = null;
  }

  /** Messages confirmed by the server go before the first pending one. */
  insertConfirmed(li) {
    const firstPending = this.list.querySelector("li.msg[data-state=pending], li.msg[data-state=failed]");
    this.list.insertBefore(li, firstPending);
    this.group(li);
    const next = li.nextElementSibling;
    if (next) this.group(next);
  }

  /** Marks `li` as a continuation when it follows a message of the same sender shortly. */
  group(li) {
    if (!li.classList.contains("msg")) return;
    const prev = li.previousElementSibling;
    const cont =
      prev &&
      prev.classList.contains("msg") &&
      prev.dataset.from === li.dataset.from &&
      Number(li.dataset.ts) - Number(prev.dataset.ts) < GROUP_MS;
    li.classList.toggle("cont", Boolean(cont));
  }

  buildMessage({ from, text, ts, own }) {
    const li = el("li", own ? "msg own" : "msg");
    li.dataset.from = from;
    li.dataset.ts = String(ts);
    const meta = el("div", "meta");
    meta.append(el("span", "from", from));
    if (own) meta.append(el("span", "you-tag", "you"));
    meta.append(timeEl(ts));
    const status = el("span", "status");
    meta.append(status);
    li.append(meta, el("p", "text", text));
    return li;
  }

  /** A message from the server; returns its <li>. */
  addMessage(m) {
    const waiting = m.own && m.ref ? this.pending.get(m.ref) : null;
    if (waiting) {
      this.pending.delete(m.ref);
      waiting.remove();
    }
    const li = this.buildMessage(m);
    li.dataset.id = String(m.id);
    if (m.own) {
      li.dataset.state = "sent";
      li.querySelector(".status").textContent = "✓ sent";
    }
    this.insertConfirmed(li);
    return li;
  }

  /** An own message waiting for the server's echo. */
  addPending(ref, from, text, online) {
    const li = this.buildMessage({ from, text, ts: Date.now(), own: true });
    li.dataset.state = "pending";
    li.dataset.ref = ref;
    this.pending.set(ref, li);
    this.list.append(li);
    this.group(li);
    this.setPendingLabel(li, online);
    return li;
  }

  setPendingLabel(li, online) {
    li.querySelector(".status").textContent = online ? "sending…" : "queued: sends when back online";
  }

  /** Updates "sending…"/"queued" on every pending message. */
  setOnline(online) {
    for (const li of this.pending.values()) {
      if (li.dataset.state === "pending") this.setPendingLabel(li, online);
    }
  }

  /** The server refused an own message. */
  fail(ref, reason) {
    const li = this.pending.get(ref);
    if (!li) return;
    this.pending.delete(ref);
    li.dataset.state = "failed";
    li.querySelector(".status").textContent = `not sent: ${reason}`;
    const remove = el("button", "link-button", "Remove");
    remove.type = "button";
    remove.addEventListener("click", () => li.remove());
    li.querySelector(".meta").append(remove);
  }

  /** A line such as "alice joined" or "reconnected". */
  addNotice(text, kind = "") {
    const li = el("li", `notice ${kind}`.trim());
    li.append(el("span", "notice-text", text), timeEl(Date.now()));
    this.insertConfirmed(li);
    return li;
  }

  /** Puts the "new messages" divider before `li` unless one already marks unread messages. */
  markUnread(li) {
    if (this.divider && !this.dividerStale) return;
    this.divider?.remove();
    this.divider = el("li", "divider");
    this.divider.append(el("span", "", "new messages"));
    this.divider.setAttribute("role", "separator");
    this.list.insertBefore(this.divider, li);
    this.dividerStale = false;
  }

  /** Everything is read: the next unread message moves the divider. */
  markRead() {
    if (this.divider) this.dividerStale = true;
  }
}
