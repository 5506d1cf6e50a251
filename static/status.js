// The status page: reads the server's own counters at /stats once a second and shows them, with
// rates from the difference between two readings and a chart of the last minute.

const $ = (id) => document.getElementById(id);
const HISTORY = 60;
const rates = [];
let last = null;

const number = (n) => (n === undefined || n === null ? "–" : Math.round(n).toLocaleString("en-US"));

function draw() {
  const max = Math.max(1, ...rates);
  const step = 600 / (HISTORY - 1);
  const start = HISTORY - rates.length;
  const points = rates.map((r, i) => `${((start + i) * step).toFixed(1)},${(150 - (r / max) * 135).toFixed(1)}`);
  $("line").setAttribute("points", points.join(" "));
  $("max").textContent = `${number(max)}/s`;
}

async function poll() {
  try {
    const res = await fetch("/stats", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const s = await res.json();
    const now = performance.now();
    const messages = s.messages_total ?? s.messages;
    $("connections").textContent = number(s.connections);
    $("rooms").textContent = number(s.rooms);
    $("members").textContent = number(s.members);
    $("p99").textContent = s.fanout_p99_ms === undefined || s.fanout_p99_ms === null ? "–" : `${s.fanout_p99_ms.toFixed(1)} ms`;
    if (last) {
      const secs = (now - last.at) / 1000;
      const rate = Math.max(0, messages - last.messages) / secs;
      $("rate").textContent = number(rate);
      if (s.deliveries_total !== undefined && last.deliveries !== undefined) {
        $("deliveries").textContent = number(Math.max(0, s.deliveries_total - last.deliveries) / secs);
      }
      rates.push(rate);
      if (rates.length > HISTORY) rates.shift();
      draw();
    }
    last = { at: now, messages, deliveries: s.deliveries_total };
    $("state").textContent = `Live, updated ${new Date().toLocaleTimeString("en-GB")}`;
    $("state").removeAttribute("data-down");
  } catch (e) {
    $("state").textContent = `Cannot reach the server (${e.message}); retrying`;
    $("state").setAttribute("data-down", "");
  }
}

poll();
setInterval(poll, 1000);
