// Unit tests of the page's protocol helpers (static/client.js), run in Node without a browser.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  RECONNECT_BASE_MS,
  RECONNECT_MAX_MS,
  backoffDelay,
  nameProblem,
  roomProblem,
  socketUrl,
  textBytes,
} from "../../static/client.js";

test("the websocket URL follows the page's scheme and host (works behind a TLS proxy)", () => {
  assert.equal(socketUrl({ protocol: "http:", host: "127.0.0.1:3000" }), "ws://127.0.0.1:3000/ws");
  assert.equal(socketUrl({ protocol: "https:", host: "chat.example.com" }), "wss://chat.example.com/ws");
});

test("reconnect backoff doubles, is capped, and is jittered", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
    assert.equal(backoffDelay(attempt, () => 0), ceiling / 2);
    assert.equal(backoffDelay(attempt, () => 1), ceiling);
  }
  assert.equal(backoffDelay(40, () => 1), RECONNECT_MAX_MS);
  const spread = new Set(Array.from({ length: 20 }, () => backoffDelay(3)));
  assert.ok(spread.size > 1, "two clients do not retry in lockstep");
});

test("text is measured in UTF-8 bytes inside a JSON string, as the server does", () => {
  assert.equal(textBytes("abc"), 3);
  assert.equal(textBytes("é"), 2);
  assert.equal(textBytes("🎉"), 4);
  // serde_json's escapes: short ones take 2 bytes, other control characters 6 (\u00XX).
  assert.equal(textBytes('a"b\\c'), 7);
  assert.equal(textBytes("\n\t\r\b\f"), 10);
  assert.equal(textBytes("\u0001".repeat(5000)), 30000);
  assert.equal(textBytes("\u007f\u2028"), 1 + 3);
});

test("names and rooms follow the server's rules", () => {
  for (const ok of ["alice", "Zoë", "bob 2", "a.b-c_d", "名前"]) assert.equal(nameProblem(ok), null, ok);
  for (const bad of ["", " alice", "alice ", "12345", "a".repeat(33), "al<ce"]) assert.notEqual(nameProblem(bad), null, bad);
  for (const ok of ["lobby", "dev-ops_2", "x".repeat(64)]) assert.equal(roomProblem(ok), null, ok);
  for (const bad of ["", "x".repeat(65), "café", "a b", "a/b"]) assert.notEqual(roomProblem(bad), null, bad);
});
