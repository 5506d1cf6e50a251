// Several rooms with unread counts, and auto-scroll that stops when the reader scrolls up.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  joinAs,
  launchBrowser,
  messages,
  openSession,
  say,
  screenshot,
  startServer,
  twoPeople,
  waitMessage,
} from "./helpers.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

const badge = (page, room) => page.locator(".room-button", { hasText: `#${room}` }).locator(".badge");

test("switching rooms, unread counts, and the room in the URL", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "rooms", args: ["--rate", "50", "--burst", "50"] });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  // Alice joins a second room from the sidebar; it becomes current and the URL follows.
  await alice.getByRole("textbox", { name: "Join another room" }).fill("random");
  await alice.getByRole("textbox", { name: "Join another room" }).press("Enter");
  await alice.locator('.room-button[aria-current="page"]', { hasText: "#random" }).waitFor();
  assert.equal(new URL(alice.url()).hash, "#room=random");
  assert.equal(await alice.locator("#room-title").textContent(), "#random");

  await say(bob, "are you there?");
  await say(bob, "ping");
  await badge(alice, "lobby").filter({ hasText: "2" }).waitFor();
  assert.equal(await alice.title(), "(2) tidechat");
  await alice.locator(".stream:not([hidden])").getByText("are you there?").waitFor({ state: "hidden" });

  // Alt+ArrowUp switches to the previous room; its unread count clears.
  await alice.getByRole("textbox", { name: "Message" }).press("Alt+ArrowUp");
  await alice.locator('.room-button[aria-current="page"]', { hasText: "#lobby" }).waitFor();
  assert.ok(await badge(alice, "lobby").isHidden());
  assert.equal(new URL(alice.url()).hash, "#room=lobby");
  assert.deepEqual((await messages(alice, "lobby")).map((m) => m.text), ["are you there?", "ping"]);
  await alice.locator("li.divider").waitFor();
  assert.equal(await alice.evaluate(() => document.activeElement?.id), "input");

  // Bob follows a link to #random: a hash change joins it.
  await bob.evaluate(() => {
    location.hash = "#room=random";
  });
  await bob.locator('.room-button[aria-current="page"]', { hasText: "#random" }).waitFor();
  await say(bob, "over here");
  await badge(alice, "random").filter({ hasText: "1" }).waitFor();
  await alice.locator(".room-button", { hasText: "#random" }).click();
  await waitMessage(alice, "random", "over here");
  assert.deepEqual((await alice.$$eval(".member-list li", (l) => l.length)), 2);
  await screenshot(alice, "rooms");

  // Leaving a room removes it and returns to the other one.
  await alice.getByRole("button", { name: "Leave this room" }).click();
  await alice.locator('.room-button[aria-current="page"]', { hasText: "#lobby" }).waitFor();
  assert.equal(await alice.locator(".room-button").count(), 1);
  await bob.locator(".notice", { hasText: "alice left" }).waitFor();
});

test("auto-scroll stops when the reader scrolls up and a marker shows new messages", async (t) => {
  const server = await startServer({ label: "scroll", args: ["--rate", "100", "--burst", "100"] });
  t.after(() => server.stop());
  const alice = await openSession(browser, { viewport: { width: 900, height: 500 } });
  const bob = await openSession(browser);
  t.after(() => alice.context().close());
  t.after(() => bob.context().close());
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  for (let i = 1; i <= 30; i++) await say(bob, `line ${i}`);
  await waitMessage(alice, "lobby", "line 30");
  const atBottom = () =>
    alice.evaluate(() => {
      const s = document.getElementById("streams");
      return s.scrollHeight - s.scrollTop - s.clientHeight < 50;
    });
  assert.ok(await atBottom(), "follows new messages while at the bottom");

  await alice.evaluate(() => {
    document.getElementById("streams").scrollTop = 0;
  });
  await say(bob, "something new");
  await waitMessage(alice, "lobby", "something new");
  const marker = alice.getByRole("button", { name: /new message/ });
  await marker.waitFor();
  assert.equal(await marker.textContent(), "1 new message ↓");
  assert.equal(await alice.evaluate(() => document.getElementById("streams").scrollTop), 0, "reader not moved");
  await screenshot(alice, "scroll-marker");

  await marker.click();
  await marker.waitFor({ state: "hidden" });
  assert.ok(await atBottom());
});
