// The demo page: a live view of topic "broadcast" through megaphone.js and /ws/connect/.
// Messages are inserted as text nodes, never as HTML: a "<script>" payload shows as text.

import { CLOSE_CODES, Megaphone } from "../megaphone/megaphone.js";

const TOPIC = "broadcast";
const MAX_SHOWN = 500;
const status = document.getElementById("status");
const presence = document.getElementById("presence");
const notice = document.getElementById("notice");
const list = document.getElementById("messages");
const form = document.getElementById("send-form");
const input = document.getElementById("message");
const transport = document.getElementById("transport");

const megaphone = new Megaphone("/ws/connect/");

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

function showNotice(text, kind) {
  notice.textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = false;
}

function show(data, message) {
  const item = document.createElement("li");
  item.dataset.offset = message.offset;
  const offset = document.createElement("span");
  offset.className = "offset";
  offset.textContent = `#${message.offset}`;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString();
  let text;
  if (data instanceof Uint8Array) text = `[binary, ${data.byteLength} bytes]`;
  else if (typeof data === "string") text = data;
  else text = JSON.stringify(data);
  item.append(offset, time, text);
  list.prepend(item);
  while (list.childElementCount > MAX_SHOWN) list.lastElementChild.remove();
}

// Who is online, kept from the join and leave events: one presence request when the
// subscription is confirmed, then every event updates the list in place. (Asking the server
// again on each event would let any client that churns subscriptions make every open page flood
// the server.) Events that arrive while the request is out are applied on top of its answer, in
// order. In case the server coalesced or dropped events, the list is read again at most once
// every RESYNC_MS, and only after events arrived.
const RESYNC_MS = 30_000;
const online = new Map(); // client id -> presence entry
let arrivedDuringLoad = null; // events received while the presence request is out
let loads = 0; // presence requests sent: only the latest answer counts
let resyncTimer = null;

function showPresence() {
  presence.textContent = `${online.size} online`;
  presence.dataset.count = online.size;
}

function applyPresenceEvent(event) {
  if (event.type === "join") online.set(event.client, event);
  else online.delete(event.client);
}

async function loadPresence() {
  const load = ++loads;
  arrivedDuringLoad = [];
  clearTimeout(resyncTimer);
  resyncTimer = null;
  try {
    const { clients } = await megaphone.presence(TOPIC);
    if (load !== loads) return;
    online.clear();
    for (const entry of clients) online.set(entry.client, entry);
    for (const event of arrivedDuringLoad) applyPresenceEvent(event);
    showPresence();
  } catch {
    if (load === loads) presence.textContent = "– online";
  } finally {
    if (load === loads) arrivedDuringLoad = null;
  }
}

function onPresenceEvent(event) {
  if (arrivedDuringLoad) {
    arrivedDuringLoad.push(event);
    return;
  }
  applyPresenceEvent(event);
  showPresence();
  resyncTimer ??= setTimeout(loadPresence, RESYNC_MS);
}

megaphone.addEventListener("state", ({ detail }) => {
  transport.textContent = detail.transport;
  transport.dataset.transport = detail.transport;
  if (detail.state === "open") setStatus("open", "connected");
  else if (detail.state === "connecting") setStatus("connecting", "connecting…");
  else {
    const wait = megaphone.nextRetryDelay ? `, retrying in ${(megaphone.nextRetryDelay / 1000).toFixed(1)} s` : "";
    const name = CLOSE_CODES[detail.code]?.name;
    setStatus("closed", `disconnected (${detail.code ?? "–"}${name ? ` ${name}` : ""})${wait}`);
  }
});

megaphone.subscribe(TOPIC, {
  onMessage: show,
  onSubscribed(result) {
    if (result.recovered) {
      const s = result.missed === 1 ? "" : "s";
      showNotice(`recovered ${result.missed} message${s}`, "recovered");
    }
    loadPresence();
  },
  onRecoveryFailed() {
    showNotice("some messages were missed and could not be recovered", "lost");
  },
  onJoin: onPresenceEvent,
  onLeave: onPresenceEvent,
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (input.value === "") return;
  megaphone.publish(TOPIC, input.value).catch((error) => showNotice(`not sent: ${error.message}`, "lost"));
  input.value = "";
});
