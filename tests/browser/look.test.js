// What people see: a real conversation rendered in the light and dark themes and on a phone.
// Screenshots land in target/browser-screenshots/; with UPDATE_DOCS_SCREENSHOT=1 the light
// desktop view is also written to docs/screenshot.png (the README's picture).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { ROOT, joinAs, launchBrowser, openSession, say, screenshot, startServer, waitMessage } from "./helpers.js";

let browser;
let server;
let alice;
/** Sessions kept open across this file's tests, so every view shows the full conversation. */
const sessions = [];
before(async () => {
  browser = await launchBrowser();
  server = await startServer({ label: "look", args: ["--rate", "50", "--burst", "50"] });
});
after(async () => {
  for (const page of sessions) await page.context().close();
  await browser?.close();
  await server?.stop();
});

const conversation = [
  ["bob", "Morning! Is the deploy still on for today?"],
  ["alice", "Yes, right after lunch. Writing the release notes now."],
  ["chloé", "I can review them.\nDrop the link in #design when they're ready?"],
  ["alice", "Will do. The reconnect fix is in this one: no more lost messages when the Wi-Fi drops."],
  ["bob", "Finally! I tested it on the train this morning, it caught up every message after each tunnel."],
  ["chloé", "Nice. Same for the phone layout, it reads well now."],
];

async function background(page) {
  return page.evaluate(() => getComputedStyle(document.body).backgroundColor);
}

test("a conversation in three rooms, light theme on a desktop", async () => {
  alice = await openSession(browser);
  const bob = await openSession(browser);
  const chloe = await openSession(browser);
  sessions.push(alice, bob, chloe);
  const people = { alice, bob, chloé: chloe };

  await joinAs(alice, `${server.url}/#room=design`, "alice", "design");
  for (const room of ["release", "lobby"]) {
    await alice.getByRole("textbox", { name: "Join another room" }).fill(room);
    await alice.getByRole("textbox", { name: "Join another room" }).press("Enter");
    await alice.locator('.room-button[aria-current="page"]', { hasText: `#${room}` }).waitFor();
  }
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");
  await joinAs(chloe, `${server.url}/#room=lobby`, "chloé", "lobby");
  for (const [who, text] of conversation) {
    await say(people[who], text);
    await waitMessage(alice, "lobby", text);
  }
  await bob.evaluate(() => {
    location.hash = "#room=design";
  });
  await bob.locator('.room-button[aria-current="page"]', { hasText: "#design" }).waitFor();
  await say(bob, "New mockups are up");
  await say(bob, "Feedback welcome");
  await alice.locator(".room-button", { hasText: "#design" }).locator(".badge", { hasText: "2" }).waitFor();
  await alice.getByRole("textbox", { name: "Message" }).fill("On my way to lunch, back at 1");

  assert.equal(await background(alice), "rgb(246, 247, 249)");
  const file = await screenshot(alice, "main-light");
  if (process.env.UPDATE_DOCS_SCREENSHOT) {
    fs.copyFileSync(file, path.join(ROOT, "docs", "screenshot.png"));
  }
});

test("dark theme follows the system", async () => {
  await alice.emulateMedia({ colorScheme: "dark" });
  assert.equal(await background(alice), "rgb(15, 19, 24)");
  await screenshot(alice, "main-dark");
  await alice.emulateMedia({ colorScheme: "light" });
});

test("readable on a phone-width screen", async (t) => {
  const phone = await openSession(browser, { viewport: { width: 390, height: 760 } });
  t.after(() => phone.context().close());
  await joinAs(phone, `${server.url}/#room=lobby`, "dana", "lobby");
  await waitMessage(phone, "lobby", conversation.at(-1)[1]);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (overflow ${overflow}px)`);
  assert.ok(await phone.getByRole("textbox", { name: "Message" }).isVisible());
  assert.ok(await phone.locator("#conn").isVisible(), "connection state stays visible");
  assert.ok(await phone.locator("#member-list").isHidden(), "members fold away on a phone");
  await screenshot(phone, "phone");
  await phone.getByRole("button", { name: /Members/ }).click();
  await phone.locator(".member-list li", { hasText: "alice" }).waitFor();
  await screenshot(phone, "phone-members");
});
