// The connection dies under the page (or the server restarts, with its history or without): it
// says so, reconnects, resumes with `since`, and every message (including those typed while
// offline) shows up exactly once.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, test } from "node:test";
import {
  joinAs,
  launchBrowser,
  makeDataDir,
  messages,
  openSession,
  say,
  screenshot,
  startProxy,
  startServer,
  twoPeople,
  waitMessage,
} from "./helpers.js";

/** Alice (at `aliceUrl`) and Bob (at `bobUrl`) in the lobby; their browsers close after the test. */
async function aliceAndBob(t, aliceUrl, bobUrl = aliceUrl) {
  const alice = await openSession(browser);
  const bob = await openSession(browser);
  t.after(() => alice.context().close());
  t.after(() => bob.context().close());
  await joinAs(alice, `${aliceUrl}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${bobUrl}/#room=lobby`, "bob", "lobby");
  return { alice, bob };
}

/** Backoff can reach several seconds after a few failed attempts; nothing here is timed. */
const RECONNECT_WAIT = 60_000;

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

function texts(list) {
  return list.map((m) => m.text);
}

test("server restart: the page shows reconnecting, comes back, and queued messages arrive once", async (t) => {
  let server = await startServer({ label: "restart-1" });
  const port = server.port;
  t.after(() => server.stop());
  const { alice, bob } = await aliceAndBob(t, server.url);
  await say(alice, "before the restart");
  await waitMessage(bob, "lobby", "before the restart");
  // Acknowledged too: unacknowledged, it would be sent again after the others' queued messages
  // (see the next test).
  await waitMessage(alice, "lobby", "before the restart");

  await server.stop("SIGKILL");
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="reconnecting"]').waitFor();
    assert.match(await page.locator("#conn-text").textContent(), /^Reconnecting( in \d+s|…)$/);
  }
  await screenshot(bob, "restart-reconnecting");

  // Bob keeps typing while the server is down: queued, shown as such.
  await say(bob, "typed while the server was down");
  await say(bob, "and a second one");
  const queued = bob.locator("li.msg[data-state=pending] .status").first();
  assert.match(await queued.textContent(), /queued|sending/);

  server = await startServer({ bind: `127.0.0.1:${port}`, label: "restart-2" });
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  }
  await waitMessage(alice, "lobby", "typed while the server was down");
  await waitMessage(alice, "lobby", "and a second one");
  await bob.locator("li.msg[data-state=pending]").waitFor({ state: "detached" });

  await say(alice, "after the restart");
  await waitMessage(bob, "lobby", "after the restart");
  await waitMessage(alice, "lobby", "after the restart");

  const expected = ["before the restart", "typed while the server was down", "and a second one", "after the restart"];
  assert.deepEqual(texts(await messages(alice, "lobby")), expected);
  assert.deepEqual(texts(await messages(bob, "lobby")), expected);
  assert.ok((await messages(bob, "lobby")).every((m) => m.from !== "bob" || m.state === "sent"));
  // The restarted server lost the room's history: the page says so instead of pretending.
  await alice.locator(".notice.warn", { hasText: "server restarted" }).waitFor();
  assert.deepEqual(alice.errors.filter((e) => !/WebSocket/.test(e)), []);
  await screenshot(alice, "restart-alice");
  await screenshot(bob, "restart-bob");
});

test("a message the others saw but whose sender the server never acknowledged is sent again after a restart that lost the history, and shown once", async (t) => {
  let server = await startServer({ label: "restart-unacked-1" });
  const port = server.port;
  t.after(() => server.stop());
  const text = "seen by bob, never acknowledged";
  const alice = await openSession(browser);
  const bob = await openSession(browser);
  t.after(() => alice.context().close());
  t.after(() => bob.context().close());
  // The server dies between relaying alice's message and acknowledging it: here its
  // acknowledgement is held back from her page until then.
  let holdEcho = true;
  await alice.routeWebSocket(/\/ws$/, (ws) => {
    const upstream = ws.connectToServer();
    upstream.onMessage((frame) => {
      const f = JSON.parse(String(frame));
      if (holdEcho && f.type === "message" && f.text === text) return;
      ws.send(frame);
    });
  });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");
  await say(alice, text);
  await waitMessage(bob, "lobby", text);
  assert.equal(await alice.locator("li.msg[data-state=pending]").count(), 1);

  await server.stop("SIGKILL");
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="reconnecting"]').waitFor();
  }
  holdEcho = false;
  server = await startServer({ bind: `127.0.0.1:${port}`, label: "restart-unacked-2" });
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  }
  // The page sends what is still pending: the new epoch has it under a new id.
  await waitMessage(alice, "lobby", text);
  await say(bob, "after the restart");
  await waitMessage(alice, "lobby", "after the restart");
  await waitMessage(bob, "lobby", "after the restart");

  const expected = [text, "after the restart"];
  assert.deepEqual(texts(await messages(alice, "lobby")), expected);
  assert.deepEqual(texts(await messages(bob, "lobby")), expected);
  await bob.locator(".notice.warn", { hasText: "server restarted" }).waitFor();
});

test("server crash and restart on the same data: history kept, ids go on, nothing reported lost", async (t) => {
  const dataDir = makeDataDir();
  const args = ["--data-dir", dataDir];
  let server = await startServer({ label: "restart-kept-1", args });
  const port = server.port;
  t.after(async () => {
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const { alice, bob } = await aliceAndBob(t, server.url);
  await say(alice, "before the crash");
  await waitMessage(bob, "lobby", "before the crash");

  // A process crash on the same machine loses nothing that was acknowledged.
  await server.stop("SIGKILL");
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="reconnecting"]').waitFor();
  }
  await say(bob, "typed while the server was down");

  server = await startServer({ bind: `127.0.0.1:${port}`, label: "restart-kept-2", args });
  for (const page of [alice, bob]) {
    await page.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  }
  await waitMessage(alice, "lobby", "typed while the server was down");
  await bob.locator("li.msg[data-state=pending]").waitFor({ state: "detached" });
  await say(alice, "after the restart");
  await waitMessage(bob, "lobby", "after the restart");

  const expected = ["before the crash", "typed while the server was down", "after the restart"];
  for (const page of [alice, bob]) {
    const got = await messages(page, "lobby");
    assert.deepEqual(texts(got), expected);
    assert.deepEqual(got.map((m) => Number(m.id)), [1, 2, 3], "ids go on from before the crash");
    assert.equal(await page.locator(".notice.warn").count(), 0, "nothing reported lost");
  }
  // Someone who comes only now sees what was said before the crash.
  const carol = await openSession(browser);
  t.after(() => carol.context().close());
  await joinAs(carol, `${server.url}/#room=lobby`, "carol", "lobby");
  await waitMessage(carol, "lobby", "after the restart");
  assert.deepEqual(texts(await messages(carol, "lobby")), expected);
});

test("dropped connection: resume with since and token recovers missed messages exactly once", async (t) => {
  // Alice's page is loaded through the proxy's port, so her Host header names that port.
  const server = await startServer({ label: "resume", args: ["--allowed-host", "127.0.0.1"] });
  t.after(() => server.stop());
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  // Alice goes through the proxy (a flaky network); Bob connects directly.
  const { alice, bob } = await aliceAndBob(t, proxy.url, server.url);
  await alice.locator(".member-list li", { hasText: "bob" }).waitFor();
  await say(bob, "one");
  await waitMessage(alice, "lobby", "one");

  // Alice's side of the connection dies; the server still holds her old, half-dead connection.
  proxy.cut();
  await alice.locator('#conn[data-state="reconnecting"]').waitFor();
  for (const text of ["two", "three", "four"]) {
    await say(bob, text);
    await waitMessage(bob, "lobby", text);
  }
  await say(alice, "typed while cut off");
  assert.equal(await alice.locator("li.msg[data-state=pending]").count(), 1);

  proxy.restore();
  await alice.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  await waitMessage(alice, "lobby", "four");
  await waitMessage(bob, "lobby", "typed while cut off");
  await waitMessage(alice, "lobby", "typed while cut off");

  const expected = ["one", "two", "three", "four", "typed while cut off"];
  assert.deepEqual(texts(await messages(alice, "lobby")), expected);
  assert.deepEqual(texts(await messages(bob, "lobby")), expected);
  const ids = (await messages(alice, "lobby")).map((m) => Number(m.id));
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "in id order");
  assert.equal(new Set(ids).size, ids.length, "no id twice");
  // The token took Alice's name back from her stale connection: no "name taken", no warning
  // about lost messages, and for Bob she never left.
  assert.equal(await alice.locator(".notice.warn").count(), 0);
  assert.equal(await alice.locator("#welcome[open]").count(), 0);
  assert.equal(await bob.locator(".notice", { hasText: "alice left" }).count(), 0);
  await screenshot(alice, "resume-alice");
});

test("the browser goes offline: the page says so and catches up when the network returns", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "offline" });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  await alice.context().setOffline(true);
  await alice.locator('#conn[data-state="offline"]').waitFor();
  assert.equal(await alice.locator("#conn-text").textContent(), "Offline: waiting for the network");
  await say(bob, "did you get this?");
  await waitMessage(bob, "lobby", "did you get this?");
  await say(alice, "written on the plane");
  assert.match(await alice.locator("li.msg[data-state=pending] .status").textContent(), /queued/);
  await screenshot(alice, "offline");

  await alice.context().setOffline(false);
  await alice.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  await waitMessage(alice, "lobby", "did you get this?");
  await waitMessage(bob, "lobby", "written on the plane");
  await waitMessage(alice, "lobby", "written on the plane");
  const expected = ["did you get this?", "written on the plane"];
  assert.deepEqual(texts(await messages(alice, "lobby")), expected);
  assert.deepEqual(texts(await messages(bob, "lobby")), expected);
});

test("a gap longer than one join page is paged in: every message once, in order", async (t) => {
  // Pages of 3: the 10 messages Alice misses take a joined frame and three history pages.
  // Alice's page comes through the proxy's port, so her Host header names that port.
  const server = await startServer({
    label: "resume-paged",
    args: ["--join-history", "3", "--allowed-host", "127.0.0.1"],
  });
  t.after(() => server.stop());
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const { alice, bob } = await aliceAndBob(t, proxy.url, server.url);
  await alice.locator(".member-list li", { hasText: "bob" }).waitFor();
  await say(bob, "before");
  await waitMessage(alice, "lobby", "before");

  proxy.cut();
  await alice.locator('#conn[data-state="reconnecting"]').waitFor();
  const missed = Array.from({ length: 10 }, (_, i) => `missed ${i + 1}`);
  for (const text of missed) {
    await say(bob, text);
    await waitMessage(bob, "lobby", text);
  }
  await say(alice, "typed while cut off");

  proxy.restore();
  await alice.locator('#conn[data-state="online"]').waitFor({ timeout: RECONNECT_WAIT });
  await waitMessage(alice, "lobby", "typed while cut off");
  await say(bob, "after");
  await waitMessage(alice, "lobby", "after");

  const expected = ["before", ...missed, "typed while cut off", "after"];
  assert.deepEqual(texts(await messages(alice, "lobby")), expected);
  const ids = (await messages(alice, "lobby")).map((m) => Number(m.id));
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), "in id order");
  assert.equal(new Set(ids).size, ids.length, "no id twice");
  assert.equal(await alice.locator(".notice.warn").count(), 0, "nothing reported lost");
});
