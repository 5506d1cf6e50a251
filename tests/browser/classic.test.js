// The original seed page (/classic.html, unchanged) chats with the new page over /chatSocket.
// It hardcodes ws://localhost:3000/chatSocket, so this test needs port 3000 on 127.0.0.1.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import {
  joinAs,
  launchBrowser,
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

async function port3000Free() {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(3000, "127.0.0.1", () => probe.close(() => resolve(true)));
  });
}

test("the classic page chats with the new page", async (t) => {
  assert.ok(
    await port3000Free(),
    "port 127.0.0.1:3000 is in use; classic.html hardcodes ws://localhost:3000/chatSocket, so stop whatever listens there",
  );
  const [server, classic, alice] = await twoPeople(t, browser, { bind: "127.0.0.1:3000", label: "classic" });

  await joinAs(alice, "http://localhost:3000/#room=lobby", "alice", "lobby");
  const res = await classic.goto("http://localhost:3000/classic.html");
  assert.equal(res.headers()["content-security-policy"], undefined, "the seed page's inline script may run");
  // The seed user appears in the lobby under its connection number.
  const seedMember = alice.locator(".member-list li").filter({ hasText: /^\d+$/ });
  await seedMember.waitFor();
  const seedName = (await seedMember.textContent()).trim();

  await classic.locator("#message").fill("hello from the classic page");
  await classic.locator("#send").click();
  await waitMessage(alice, "lobby", "hello from the classic page");
  assert.equal(
    await alice.locator("li.msg", { hasText: "hello from the classic page" }).getAttribute("data-from"),
    seedName,
  );
  assert.equal(await classic.locator("#output p").first().textContent(), `${seedName}: hello from the classic page`);

  await say(alice, "hi classic, this is the new page");
  await classic.locator("#output p", { hasText: "alice: hi classic, this is the new page" }).waitFor();
  await screenshot(classic, "classic-page");
  await screenshot(alice, "classic-new-page");
});
