// Two people chat through the page: messages, members, presence, pending -> sent, safety.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  joinAs,
  launchBrowser,
  memberNames,
  messages,
  say,
  screenshot,
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

test("two people join a room, see each other and chat", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "chat", args: ["--rate", "50", "--burst", "50"] });

  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  // Bob follows an invite link: the room comes prefilled from the URL.
  await bob.goto(`${server.url}/#room=lobby`);
  assert.equal(await bob.getByLabel("Room", { exact: true }).inputValue(), "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  await alice.locator(".member-list li", { hasText: "bob" }).waitFor();
  assert.deepEqual((await memberNames(alice)).sort(), ["alice", "bob"]);
  assert.deepEqual((await memberNames(bob)).sort(), ["alice", "bob"]);
  await alice.locator(".notice", { hasText: "bob joined" }).waitFor();

  await say(alice, "Hi Bob! Welcome to tidechat.");
  await waitMessage(bob, "lobby", "Hi Bob! Welcome to tidechat.");
  await waitMessage(alice, "lobby", "Hi Bob! Welcome to tidechat.");
  const mine = await messages(alice, "lobby");
  assert.deepEqual(mine.map((m) => [m.from, m.state]), [["alice", "sent"]]);
  assert.equal(await alice.locator("li.msg.own .status").first().textContent(), "✓ sent");
  const theirs = await messages(bob, "lobby");
  assert.deepEqual(theirs.map((m) => [m.from, m.text]), [["alice", "Hi Bob! Welcome to tidechat."]]);
  assert.equal(await bob.locator("li.msg.own").count(), 0, "alice's message is not marked as bob's");
  assert.equal(await bob.locator("#announcer").textContent(), "alice: Hi Bob! Welcome to tidechat.", "screen readers hear it");

  // Shift+Enter makes a new line; Enter sends; focus stays in the box.
  const input = bob.getByRole("textbox", { name: "Message" });
  await input.fill("Thanks!");
  await input.press("Shift+Enter");
  await input.pressSequentially("Two lines, one message.");
  await input.press("Enter");
  await waitMessage(alice, "lobby", "Thanks!\nTwo lines, one message.");
  assert.equal(await input.inputValue(), "");
  assert.equal(await bob.evaluate(() => document.activeElement?.id), "input");

  for (const [page, text] of [
    [alice, "Try a second room: type its name under Rooms."],
    [bob, "Joining #random now — à bientôt"],
  ]) {
    await say(page, text);
    await waitMessage(alice, "lobby", text);
    await waitMessage(bob, "lobby", text);
  }

  // The name is remembered: a reload goes straight back into the room.
  await bob.reload();
  await bob.locator('#conn[data-state="online"]').waitFor();
  assert.equal(await bob.locator("#welcome[open]").count(), 0);
  await waitMessage(bob, "lobby", "Hi Bob! Welcome to tidechat.");
  assert.equal((await messages(bob, "lobby")).length, 4, "history after reload, once");

  assert.deepEqual(alice.dialogs, []);
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  await screenshot(alice, "chat-alice");
  await screenshot(bob, "chat-bob");
});

test("markup in a message is shown as text and runs nothing", async (t) => {
  const [server, alice, mallory] = await twoPeople(t, browser, { label: "xss" });

  const res = await alice.goto(`${server.url}/`);
  const csp = res.headers()["content-security-policy"] ?? "";
  assert.match(csp, /script-src 'self'/, "the page is served with a strict CSP");
  assert.doesNotMatch(csp, /unsafe-inline/);

  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(mallory, `${server.url}/#room=lobby`, "mallory", "lobby");

  const payloads = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    '<a href="javascript:alert(3)">click</a><b onmouseover=alert(4)>bold</b>',
  ];
  for (const p of payloads) {
    await say(mallory, p);
    await waitMessage(alice, "lobby", p);
  }
  const shown = await messages(alice, "lobby");
  assert.deepEqual(shown.map((m) => m.text), payloads);
  assert.equal(await alice.locator(".stream img, .stream script, .stream a, .stream b").count(), 0);
  await alice.locator(".stream .text", { hasText: "bold" }).hover();
  await alice.waitForTimeout(300); // give a wrongly created handler the chance to fire
  assert.deepEqual(alice.dialogs, [], "no alert() ran");
  assert.deepEqual(mallory.dialogs, []);
  await screenshot(alice, "xss");
});
