// The status page at /status: the server's own counters as numbers and a chart, under the same
// Content-Security-Policy as the chat page.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { joinAs, launchBrowser, say, screenshot, twoPeople, waitMessage, WAIT } from "./helpers.js";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

test("the status page shows live connections, rooms and messages per second", async (t) => {
  const [server, alice, status] = await twoPeople(t, browser, { label: "status" });
  const violations = [];
  status.on("console", (m) => {
    if (m.type() === "error") violations.push(m.text());
  });
  await status.goto(`${server.url}/status`);
  const csp = (await status.request.get(`${server.url}/status`)).headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/, "the status page has the chat page's policy");
  await status.getByRole("status").filter({ hasText: "Live" }).waitFor({ timeout: WAIT });

  await joinAs(alice, `${server.url}/#room=lobby`, "alice", "lobby");
  // The page reads /stats once a second: a read between alice's connect and her join shows
  // the connection without the room, so each number is waited for.
  for (const id of ["connections", "rooms", "members"]) {
    await status.locator(`#${id}`).filter({ hasText: /^1$/ }).waitFor({ timeout: WAIT });
  }

  // A few messages a second for a few seconds: the rate and the chart move.
  for (let i = 0; i < 12; i++) {
    await say(alice, `tick ${i}`);
    await waitMessage(alice, "lobby", `tick ${i}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  await status.waitForFunction(() => Number(document.getElementById("rate").textContent) > 0, null, {
    timeout: WAIT,
  });
  await status.waitForFunction(() => Number(document.getElementById("deliveries").textContent) > 0, null, {
    timeout: WAIT,
  });
  assert.match(await status.locator("#p99").textContent(), /^\d+(\.\d)? ms$/, "fan-out p99 from the server's histogram");
  const points = await status.locator("#line").getAttribute("points");
  assert.ok(points.split(" ").length >= 2, `the chart has a line: ${points}`);
  assert.match(await status.locator("#max").textContent(), /\/s$/);
  await screenshot(status, "status");

  // The server goes away: the page says so instead of showing stale numbers as live.
  await server.stop();
  await status.locator("#state[data-down]").waitFor({ timeout: WAIT });
  assert.match(await status.locator("#state").textContent(), /Cannot reach the server/);
  assert.deepEqual(
    violations.filter((v) => /Content Security Policy|Refused/.test(v)),
    [],
    "no CSP violations",
  );
});
