// The dashboard: adds up the latest snapshot of every worker and draws the last minutes.
// It listens through megaphone.js (reconnects with backoff, close codes, resubscribes).
import { Megaphone } from "./megaphone.js";

const topic = document.querySelector("script[data-topic]").dataset.topic;
const WINDOW = 300; // seconds of history drawn
const workers = new Map(); // worker -> {snapshot, at}
const series = []; // {t, connections, published, delivered}
const $ = (id) => document.getElementById(id);

function totals() {
  const now = Date.now() / 1000;
  const sum = { connections: 0, topics: 0, published: 0, delivered: 0, busiest: new Map() };
  for (const [worker, { snapshot, at }] of workers) {
    if (now - at > 30) { workers.delete(worker); continue; } // a worker that stopped reporting
    sum.connections += snapshot.connections;
    sum.topics += snapshot.topics;
    sum.published += snapshot.published;
    sum.delivered += snapshot.delivered;
    for (const { topic, subscribers } of snapshot.busiest) {
      sum.busiest.set(topic, (sum.busiest.get(topic) ?? 0) + subscribers);
    }
  }
  return sum;
}

function rate(key) {
  if (series.length < 2) return 0;
  const a = series[series.length - 2], b = series[series.length - 1];
  return Math.max(0, (b[key] - a[key]) / Math.max(0.001, b.t - a.t));
}

function draw(canvas, keys, colors) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = keys.map((key) => series.map((s, i) => [s.t, key.startsWith("rate:")
    ? (i ? Math.max(0, (s[key.slice(5)] - series[i - 1][key.slice(5)]) / Math.max(0.001, s.t - series[i - 1].t)) : 0)
    : s[key]]));
  const max = Math.max(1, ...points.flat().map(([, v]) => v));
  const t1 = Date.now() / 1000, t0 = t1 - WINDOW;
  points.forEach((line, k) => {
    ctx.strokeStyle = colors[k];
    ctx.lineWidth = 2;
    ctx.beginPath();
    line.forEach(([t, v], i) => {
      const x = ((t - t0) / WINDOW) * canvas.width, y = canvas.height - (v / max) * (canvas.height - 10) - 5;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#555";
  ctx.fillText(String(Math.round(max)), 4, 12);
}

function render() {
  const sum = totals();
  series.push({ t: Date.now() / 1000, ...sum });
  while (series.length && series[0].t < Date.now() / 1000 - WINDOW) series.shift();
  $("connections").textContent = sum.connections;
  $("topics").textContent = sum.topics;
  $("published-rate").textContent = rate("published").toFixed(1);
  $("delivered-rate").textContent = rate("delivered").toFixed(1);
  const rows = [...sum.busiest].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([name, count]) => {
    const row = document.createElement("tr");
    for (const text of [name, String(count)]) {
      const cell = document.createElement("td");
      cell.textContent = text; // topic names are shown as text, never as HTML
      row.append(cell);
    }
    return row;
  });
  $("busiest").replaceChildren(...rows);
  $("workers").textContent = `${workers.size} worker(s) reporting`;
  draw($("connections-chart"), ["connections"], ["#2b6cb0"]);
  draw($("rates-chart"), ["rate:published", "rate:delivered"], ["#c05621", "#2f855a"]);
}

const megaphone = new Megaphone("/ws/connect/");
megaphone.addEventListener("state", ({ detail: { state, code } }) => {
  $("status").dataset.state = state;
  $("status").textContent = state === "open" ? "live" : state === "closed" ? `disconnected (${code})` : "connecting…";
});
megaphone.subscribe(topic, {
  // Each snapshot is published as JSON text: protocol clients receive it as a string.
  onMessage: (data) => {
    const snapshot = JSON.parse(data);
    workers.set(snapshot.worker, { snapshot, at: Date.now() / 1000 });
    render();
  },
  onError: (error) => {
    $("status").dataset.state = "closed";
    $("status").textContent = `refused (${error.code})`;
  },
});
