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

async function refreshPresence() {
  try {
    const { count } = await megaphone.presence(TOPIC);
    presence.textContent = `${count} online`;
    presence.dataset.count = count;
  } catch {
    presence.textContent = "– online";
  }
}

megaphone.addEventListener("state", ({ detail }) => {
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
    refreshPresence();
  },
  onRecoveryFailed() {
    showNotice("some messages were missed and could not be recovered", "lost");
  },
  onJoin: refreshPresence,
  onLeave: refreshPresence,
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (input.value === "") return;
  megaphone.publish(TOPIC, input.value).catch((error) => showNotice(`not sent: ${error.message}`, "lost"));
  input.value = "";
});
