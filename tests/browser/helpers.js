// Shared pieces of the browser suite: a real tidechat process per test, a TCP proxy that can cut
// connections, headless system Chromium, and page helpers that act like a person would.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR
  ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR)
  : path.join(ROOT, "target");
/** The tidechat binary under test (built by scripts/browser-test). */
export const BIN = process.env.TIDECHAT_BIN ?? path.join(TARGET, "debug", "tidechat");
export const STATIC_DIR = path.join(ROOT, "static");
export const SHOTS = path.join(ROOT, "target", "browser-screenshots");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Generous: a cold debug build on a busy 2-core machine is slow, and nothing here is timed. */
export const WAIT = 20_000;

/** Every server this process started, killed if the suite dies before its cleanup runs. */
const running = new Set();
/** The data directories startServer made, removed then too. */
const ownDirs = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
  for (const dir of ownDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh data directory for one server (the default `./data` would be shared by all). */
export function makeDataDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "tidechat-browser-"));
}

/**
 * Starts tidechat on `bind` (a free loopback port by default) and resolves once it listens.
 * Its log goes to target/browser-screenshots/<label>.log for post-mortems. Its history is in a
 * fresh temporary directory, removed when it stops, unless `args` has `--data-dir` (a test that
 * restarts a server on the same history passes its own, from makeDataDir, and removes it).
 */
export async function startServer({ bind = "127.0.0.1:0", args = [], label = "tidechat" } = {}) {
  if (!fs.existsSync(BIN)) throw new Error(`tidechat binary not found at ${BIN}: run cargo build -p server`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const named = args.some((a) => a === "--data-dir" || a.startsWith("--data-dir="));
  const dataDir = named ? null : makeDataDir();
  if (dataDir) ownDirs.add(dataDir);
  const removeDataDir = () => {
    if (!dataDir) return;
    fs.rmSync(dataDir, { recursive: true, force: true });
    ownDirs.delete(dataDir);
  };
  const log = fs.createWriteStream(path.join(SHOTS, `${label}.log`), { flags: "a" });
  const dataArgs = dataDir ? ["--data-dir", dataDir] : [];
  const proc = spawn(BIN, ["--bind", bind, "--static-dir", STATIC_DIR, ...dataArgs, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
  });
  running.add(proc);
  proc.once("exit", () => running.delete(proc));
  proc.stdout.pipe(log);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  // Once it is gone, whichever way: nothing writes there any more.
  exited.then(removeDataDir);
  const port = await new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`tidechat did not start within ${WAIT} ms:\n${buf}`)), WAIT);
    proc.stderr.on("data", (chunk) => {
      log.write(chunk);
      buf += chunk;
      const m = buf.match(/tidechat listening on http:\/\/[^\s:]+:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`tidechat exited (code ${code}, signal ${signal}) before listening:\n${buf}`));
    });
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    /** Where its history is, when startServer chose it. */
    dataDir,
    /** Stops it (SIGTERM, or SIGKILL to die without closing anything) and waits for the exit. */
    async stop(signal = "SIGTERM") {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
      log.end();
    },
  };
}

/**
 * A loopback TCP proxy to `targetPort`. `cut()` drops the browser side of every connection and
 * refuses new ones while leaving the server side open (a half-dead connection, as after a network
 * change); `restore()` accepts again.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => pairs.delete(pair);
    client.on("error", () => {});
    upstream.on("error", () => client.destroy());
    client.on("close", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const stale = [];
  return {
    port: server.address().port,
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      down = true;
      for (const p of pairs) {
        p.client.unpipe(p.upstream);
        p.upstream.unpipe(p.client);
        p.upstream.pause();
        p.client.destroy();
        stale.push(p.upstream);
      }
      pairs.clear();
    },
    restore() {
      down = false;
    },
    async close() {
      for (const s of stale) s.destroy();
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Headless system Chromium, with no network use of its own. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
    timeout: 60_000,
  });
}

/**
 * A fresh browser session (own localStorage) with a page that records what a person could not
 * see: alert() dialogs, page errors and console errors.
 */
export async function openSession(browser, { viewport = { width: 1100, height: 700 }, colorScheme = "light" } = {}) {
  const context = await browser.newContext({ viewport, colorScheme, reducedMotion: "reduce" });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.dialogs = [];
  page.errors = [];
  page.on("dialog", (d) => {
    page.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") page.errors.push(m.text());
  });
  return page;
}

/** Opens `url` and joins through the welcome dialog as `name` in `room`. */
export async function joinAs(page, url, name, room) {
  await page.goto(url);
  await page.getByLabel("Your name", { exact: true }).fill(name);
  await page.getByLabel("Room", { exact: true }).fill(room);
  await page.getByRole("button", { name: "Join", exact: true }).click();
  await waitOnline(page);
  await page.locator(`.member-list li`, { hasText: name }).waitFor({ state: "attached" });
}

export async function waitOnline(page) {
  await page.locator('#conn[data-state="online"]').waitFor();
}

/** Types `text` into the message box and presses Enter, as a person would. */
export async function say(page, text) {
  const input = page.getByRole("textbox", { name: "Message" });
  await input.fill(text);
  await input.press("Enter");
}

/** The visible stream's messages as {from, text, state}. */
export async function messages(page, room) {
  return page.$$eval(`ol.stream[aria-label="Messages in #${room}"] li.msg`, (lis) =>
    lis.map((li) => ({
      from: li.dataset.from,
      text: li.querySelector(".text").textContent,
      state: li.dataset.state ?? null,
      id: li.dataset.id ?? null,
    })),
  );
}

/** Waits until a message with exactly `text` is in `room`'s stream and confirmed. */
export async function waitMessage(page, room, text) {
  await page
    .locator(`ol.stream[aria-label="Messages in #${room}"] li.msg:not([data-state=pending]) .text`)
    .getByText(text, { exact: true })
    .waitFor();
}

export async function memberNames(page) {
  return page.$$eval(".member-list li", (lis) => lis.map((li) => li.firstChild.textContent.trim()));
}

export async function screenshot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.mouse.move(0, 0); // no hover highlight in the picture
  await page.screenshot({ path: file });
  return file;
}

/**
 * A tidechat (options as for startServer) and two browser sessions for one test, all stopped
 * and closed when the test ends: resolves to [server, firstPage, secondPage].
 */
export async function twoPeople(t, browser, serverOptions) {
  const server = await startServer(serverOptions);
  t.after(() => server.stop());
  const pages = [await openSession(browser), await openSession(browser)];
  for (const page of pages) {
    t.after(() => page.context().close());
  }
  return [server, ...pages];
}
