// The dashboard page: reads the last minutes of the stats topic's history, then listens live
// through megaphone.js (reconnects with backoff, close codes, resubscribes from its offset).
// The arithmetic (adding up the workers' own rates) is dashboard-figures.js.
import { Megaphone } from "./megaphone.js";
import { Figures } from "./dashboard-figures.js";

const topic = document.querySelector("script[data-topic]").dataset.topic;
const WINDOW = 600; // seconds drawn: the stats topic keeps ten minutes of history
const TICK = 120; // seconds between two time labels
const HISTORY_PAGE = 1000; // the protocol's largest history page
const SVG = "http://www.w3.org/2000/svg";
const figures = new Figures(WINDOW);
const $ = (id) => document.getElementById(id);
// The workers' clock: the time of the latest snapshot, plus the page's time since it came.
let clock = null; // {server, page}

function now() {
  return clock ? clock.server + (Date.now() / 1000 - clock.page) : Date.now() / 1000;
}

function take(data) {
  const snapshot = JSON.parse(data); // each snapshot is published as JSON text
  if (!clock || snapshot.time > clock.server) clock = { server: snapshot.time, page: Date.now() / 1000 };
  figures.add(snapshot);
}

function element(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clockTime(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

/** Draw `keys` of the series on `svg`: a wall-clock time axis over the last WINDOW seconds. */
function draw(svg, keys, colors) {
  const width = 900, height = 180, left = 44, bottom = 22, top = 8;
  const t1 = now(), t0 = t1 - WINDOW;
  const points = figures.series.filter((point) => point.t >= t0);
  const max = Math.max(1, ...points.flatMap((point) => keys.map((key) => point[key])));
  const x = (t) => left + ((t - t0) / WINDOW) * (width - left);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const children = [element("line", { class: "axis", x1: left, x2: width, y1: y(0), y2: y(0) })];
  for (let t = Math.ceil(t0 / TICK) * TICK; t <= t1; t += TICK) {
    children.push(element("line", { class: "grid", x1: x(t), x2: x(t), y1: top, y2: y(0) }));
    children.push(element("text", { class: "tick", x: x(t), y: height - 6, "text-anchor": "middle" }, clockTime(t)));
  }
  for (const value of [0, max]) {
    const label = Number.isInteger(value) ? String(value) : value.toFixed(1);
    children.push(element("text", { class: "value", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, label));
  }
  keys.forEach((key, k) => {
    const line = points.map((point) => `${x(point.t).toFixed(1)},${y(point[key]).toFixed(1)}`).join(" ");
    children.push(element("polyline", { points: line, fill: "none", stroke: colors[k], "stroke-width": 2 }));
  });
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.points = String(points.length);
  svg.dataset.from = points.length ? String(points[0].t) : "";
  svg.replaceChildren(...children);
}

function rows(topics) {
  return [...topics].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([name, count]) => {
    const row = document.createElement("tr");
    for (const text of [name, String(count)]) {
      const cell = document.createElement("td");
      cell.textContent = text; // topic names are shown as text, never as HTML
      row.append(cell);
    }
    return row;
  });
}

function render() {
  const sum = figures.totals(now());
  const { least, most } = sum.topics;
  $("connections").textContent = sum.connections;
  $("subscriptions").textContent = sum.subscriptions;
  $("topics").textContent = least === most ? String(most) : `${least}–${most}`;
  $("published-rate").textContent = sum.published.toFixed(1);
  $("delivered-rate").textContent = sum.delivered.toFixed(1);
  $("busiest").replaceChildren(...rows(sum.busiest));
  $("internal").replaceChildren(...rows(sum.internal));
  $("workers").textContent = `${sum.workers} worker(s) reporting`;
  draw($("connections-chart"), ["connections"], ["#2b6cb0"]);
  draw($("rates-chart"), ["published", "delivered"], ["#c05621", "#2f855a"]);
}

/** Read the stats topic's history, oldest first; the position it ends at, to go live from. */
async function replay() {
  let since = 0, epoch;
  for (;;) {
    const page = await megaphone.history(topic, { since, limit: HISTORY_PAGE, epoch });
    for (const message of page.messages) take(message.data);
    epoch = page.epoch;
    since = page.messages.length ? page.messages[page.messages.length - 1].offset : page.offset;
    if (page.messages.length < HISTORY_PAGE) return { offset: since, epoch };
  }
}

async function listen() {
  let since;
  try {
    since = await replay();
  } catch (error) {
    console.warn("dashboard: no history, going live", error);
  }
  render();
  megaphone.subscribe(topic, {
    since,
    onMessage: (data) => { take(data); render(); },
    onError: (error) => {
      $("status").dataset.state = "closed";
      $("status").textContent = `refused (${error.code})`;
    },
  });
}

const megaphone = new Megaphone("/ws/connect/");
let listening = false;
megaphone.addEventListener("state", ({ detail: { state, code } }) => {
  $("status").dataset.state = state;
  $("status").textContent = state === "open" ? "live" : state === "closed" ? `disconnected (${code})` : "connecting…";
  // Once: afterwards megaphone.js resubscribes by itself from the last offset it saw.
  if (state === "open" && !listening) {
    listening = true;
    listen();
  }
});
setInterval(render, 1000); // the time axis moves on, and silent workers drop out
