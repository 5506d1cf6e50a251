// The page enforces the server's limits before sending and explains refusals in plain words.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  joinAs,
  launchBrowser,
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

test("a too-long message is refused with a readable error", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "too-long", args: ["--max-text-bytes", "200"] });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  // 101 characters, 202 bytes: the limit is in bytes, as the server counts it.
  const tooLong = "é".repeat(101);
  const input = alice.getByRole("textbox", { name: "Message" });
  await input.fill(tooLong);
  assert.equal(await alice.locator("#counter").textContent(), "202 / 200 bytes");
  assert.match(await alice.locator("#hint-text").textContent(), /Too long by 2 bytes/);
  assert.ok(await alice.getByRole("button", { name: "Send" }).isDisabled());
  await input.press("Enter");
  const alert = alice.getByRole("alert").filter({ hasText: "too long" });
  await alert.waitFor();
  assert.match(await alert.textContent(), /This message is too long to send: 202 bytes, and the limit is 200/);
  assert.equal(await input.inputValue(), tooLong, "the text is kept so it can be shortened");
  assert.equal(await alice.locator("li.msg").count(), 0);
  await screenshot(alice, "too-long");

  const fits = "é".repeat(100);
  await input.fill(fits);
  await input.press("Enter");
  await waitMessage(bob, "lobby", fits);
  assert.deepEqual((await messages(bob, "lobby")).map((m) => m.text), [fits], "bob never got the long one");
});

test("line breaks count as the server counts them, and the page says so", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "too-long-escapes", args: ["--max-text-bytes", "200"] });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  // 134 characters, but each line break is 2 bytes in the message frame: 201 bytes.
  const input = alice.getByRole("textbox", { name: "Message" });
  await input.fill("a\n".repeat(67));
  assert.equal(await alice.locator("#counter").textContent(), "201 / 200 bytes");
  assert.match(await alice.locator("#hint-text").textContent(), /Too long by 1 bytes \(line breaks.*count as 2 bytes/);
  assert.ok(await alice.getByRole("button", { name: "Send" }).isDisabled());

  const fits = "a\n".repeat(66) + "a";
  await input.fill(fits);
  await input.press("Enter");
  await bob.locator('ol.stream[aria-label="Messages in #lobby"] li.msg .text').first().waitFor();
  assert.deepEqual((await messages(bob, "lobby")).map((m) => m.text), [fits]);
});

test("a taken name is explained and another can be picked", async (t) => {
  const [server, first, second] = await twoPeople(t, browser, { label: "name-taken" });
  await joinAs(first, `${server.url}/#room=lobby`, "sam", "lobby");

  await second.goto(`${server.url}/#room=lobby`);
  await second.getByLabel("Your name", { exact: true }).fill("sam");
  await second.getByRole("button", { name: "Join", exact: true }).click();
  const error = second.locator("#welcome-error");
  await error.filter({ hasText: "already uses that name" }).waitFor();
  assert.equal(await error.textContent(), "Someone in #lobby already uses that name. Pick another one.");
  await screenshot(second, "name-taken");

  await second.getByLabel("Your name", { exact: true }).fill("sam 2");
  await second.getByRole("button", { name: "Join", exact: true }).click();
  await second.locator(".member-list li", { hasText: "sam 2" }).waitFor();
  await say(second, "hello from the second sam");
  await waitMessage(first, "lobby", "hello from the second sam");
});

test("sending faster than the rate limit is paced, never dropped", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "rate", args: ["--rate", "2", "--burst", "3"] });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");

  const burst = Array.from({ length: 8 }, (_, i) => `quick message ${i + 1}`);
  for (const text of burst) await say(alice, text);
  await waitMessage(bob, "lobby", burst.at(-1));
  assert.deepEqual((await messages(bob, "lobby")).map((m) => m.text), burst);
  await alice.locator("li.msg[data-state=pending]").waitFor({ state: "detached" });
  assert.equal(await alice.getByRole("alert").filter({ hasText: "too fast" }).count(), 0);
});

/**
 * Routes `page`'s websocket through the test: `toServer(frame, forward)` sees each frame the
 * page sends; `refused` counts the server's `rate_limited` errors on the way back.
 */
async function throughTest(page, toServer) {
  const seen = { refused: 0 };
  await page.routeWebSocket(/\/ws$/, (ws) => {
    const server = ws.connectToServer();
    let queue = Promise.resolve();
    ws.onMessage((frame) => {
      // One frame at a time, in order, whatever each one waits for.
      queue = queue.then(() => toServer(frame, (f) => server.send(f)));
    });
    server.onMessage((frame) => {
      if (String(frame).includes('"rate_limited"')) seen.refused += 1;
      ws.send(frame);
    });
  });
  return seen;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("a message refused because its join reached the server late is sent again, in order", async (t) => {
  const [server, alice, bob] = await twoPeople(t, browser, { label: "rate-late", args: ["--rate", "1", "--burst", "5"] });
  // The page paces from when it sent the join; the server's bucket empties when the join
  // arrives. Held longer than the page's model takes to refill (4 tokens at 0.9/s), the join
  // leaves the page free to send the whole burst into an empty bucket: the server takes all
  // four only if the fourth reaches it 4 s after the join. So bob joins first, and alice types
  // as soon as she is in.
  const seen = await throughTest(alice, async (frame, forward) => {
    if (String(frame).includes('"type":"join"')) await sleep(5000);
    forward(frame);
  });
  await joinAs(bob, `${server.url}/#room=lobby`, "bob", "lobby");
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");

  const burst = Array.from({ length: 4 }, (_, i) => `late message ${i + 1}`);
  for (const text of burst) await say(alice, text);
  await waitMessage(bob, "lobby", burst.at(-1));
  assert.deepEqual((await messages(bob, "lobby")).map((m) => m.text), burst);
  await alice.locator("li.msg[data-state=pending]").waitFor({ state: "detached" });
  assert.ok(seen.refused >= 1, "the server refused one, so the page did send it again");
  assert.equal(await alice.getByRole("alert").count(), 0);
});

test("a join refused for the rate limit is sent again", async (t) => {
  const [server, alice] = await twoPeople(t, browser, { label: "rate-join", args: ["--rate", "2", "--burst", "3"] });
  // A frame the page does not know of takes a token just before its join, which costs the
  // whole bucket.
  let extra = true;
  const seen = await throughTest(alice, async (frame, forward) => {
    if (extra && String(frame).includes('"type":"join"')) {
      extra = false;
      forward(JSON.stringify({ type: "ping" }));
    }
    forward(frame);
  });
  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  assert.ok(seen.refused >= 1, "the server refused the first join");
  await say(alice, "in at the second try");
  await waitMessage(alice, "lobby", "in at the second try");
  assert.equal(await alice.getByRole("alert").count(), 0);
});
