// megaphone.js: the browser client of Megaphone's JSON protocol (docs/protocol.md).
// One ES module, no dependencies, no build step.
//
//   import { Megaphone } from "/static/megaphone/megaphone.js";
//   const mp = new Megaphone("/ws/connect/");
//   mp.addEventListener("state", (e) => console.log(e.detail.state));
//   const sub = mp.subscribe("news", {
//     onMessage: (data, message) => console.log(message.offset, data),
//     onSubscribed: (result) => { if (result.recovered) console.log(`recovered ${result.missed}`); },
//     onRecoveryFailed: (result) => location.reload(), // messages were lost: reload your state
//   });
//   await mp.publish("news", { hello: "world" }); // resolves to {topic, offset, epoch}
//
// The client reconnects by itself with jittered exponential backoff, resubscribes every topic from
// the last offset it saw, and the server sends exactly the missed messages (or says it cannot:
// onRecoveryFailed). Publishes carry a msg_id, so one retried after a reconnect is delivered once.
//
// Authentication: a page's session cookie goes with the socket. Other clients pass a function as
// the URL, called before every connection attempt, e.g. to fetch a fresh token:
//   new Megaphone(async () => `/ws/connect/?token=${(await (await fetch("/api/token")).json()).token}`);
// After close code 4401 (logged out, token expired) a client with a fixed URL stops reconnecting
// (state "closed", code 4401); one with a URL function reconnects with a new URL.

const STATES = ["connecting", "open", "closed"];

function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function bytesToBase64(bytes) {
  let binary = "";
  for (const byte of new Uint8Array(bytes.buffer ?? bytes)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

export class MegaphoneError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "MegaphoneError";
    this.code = code;
  }
}

/** One topic subscription. `offset`/`epoch`: the position of the last message delivered. */
export class Subscription {
  constructor(client, topic, callbacks) {
    this.client = client;
    this.topic = topic;
    this.callbacks = callbacks;
    this.offset = callbacks.since?.offset ?? null;
    this.epoch = callbacks.since?.epoch ?? null;
    this.active = true;
  }

  /** Who is subscribed (topics with presence on): {count, clients: [{client, user, info}]}. */
  presence() {
    return this.client.presence(this.topic);
  }

  history(options = {}) {
    return this.client.history(this.topic, options);
  }

  unsubscribe() {
    if (!this.active) return Promise.resolve();
    this.active = false;
    this.client._subscriptions.delete(this.topic);
    if (this.client.state !== "open") return Promise.resolve();
    return this.client._request({ op: "unsubscribe", topic: this.topic }).catch(() => {});
  }

  _call(name, ...args) {
    const callback = this.callbacks[name];
    if (!callback) return;
    try {
      callback(...args);
    } catch (error) {
      console.error(`megaphone: ${name} callback for ${this.topic} failed`, error);
    }
  }
}

/**
 * A connection to a Megaphone protocol endpoint.
 * Events (EventTarget): "state" {state, code}, "connected" {client}, "error" {code, message}.
 */
export class Megaphone extends EventTarget {
  constructor(url = "/ws/connect/", options = {}) {
    super();
    this.url = url;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 10000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.state = "closed";
    this.clientId = null;
    this._socket = null;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // id -> {frame, resolve, reject, timer}
    this._subscriptions = new Map(); // topic -> Subscription
    this._stopped = false;
    this._retryTimer = null;
    if (options.autoConnect ?? true) this.connect();
  }

  static absoluteUrl(url) {
    if (/^wss?:/.test(url)) return url;
    const base = new URL(url, location.href);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    return base.href;
  }

  async connect() {
    this._stopped = false;
    if (this._socket || this.state === "connecting") return;
    clearTimeout(this._retryTimer);
    this._setState("connecting");
    let url;
    try {
      url = Megaphone.absoluteUrl(typeof this.url === "function" ? await this.url() : this.url);
    } catch (error) {
      console.error("megaphone: could not get the connection URL", error);
      this._retry("closed", 1006);
      return;
    }
    if (this._stopped) return this._setState("closed");
    const socket = (this._socket = new WebSocket(url));
    socket.onmessage = (event) => this._onFrame(event.data);
    socket.onclose = (event) => this._onClose(socket, event.code);
  }

  /** Close for good (no reconnect). Pending requests are rejected. */
  disconnect() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    if (this._socket) this._socket.close(1000);
    else this._setState("closed");
  }

  /**
   * Subscribe to `topic`. Callbacks: onMessage(data, message), onSubscribed(result),
   * onRecoveryFailed(result) (messages were missed and cannot be sent: reload your state),
   * onJoin(entry), onLeave(entry), onError(error). Options: info (presence), since {offset, epoch}.
   */
  subscribe(topic, callbacks = {}) {
    if (this._subscriptions.has(topic)) throw new MegaphoneError("already_subscribed", topic);
    const subscription = new Subscription(this, topic, callbacks);
    this._subscriptions.set(topic, subscription);
    if (this.state === "open") this._subscribe(subscription);
    return subscription;
  }

  /**
   * Publish `data` (any JSON value; a Uint8Array/ArrayBuffer is sent as binary) on `topic`.
   * Resolves to {topic, offset, epoch} once the server accepted it. If the connection drops
   * first, the publish is sent again after reconnecting, with the same msg_id: delivered once.
   */
  publish(topic, data, { msgId = randomId() } = {}) {
    const frame = { op: "publish", topic, msg_id: msgId };
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      frame.data = bytesToBase64(data);
      frame.binary = true;
    } else {
      frame.data = data;
    }
    return this._request(frame, { retry: true });
  }

  history(topic, { since = 0, limit = 100, epoch } = {}) {
    return this._request({ op: "history", topic, since, limit, epoch });
  }

  presence(topic) {
    return this._request({ op: "presence", topic });
  }

  ping() {
    return this._request({ op: "ping" });
  }

  // Internals --------------------------------------------------------------------------------

  _setState(state, code) {
    if (!STATES.includes(state) || (state === this.state && code === undefined)) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, code } }));
  }

  _request(frame, { retry = false } = {}) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const entry = { frame: { ...frame, id }, resolve, reject, retry, timer: null };
      this._pending.set(id, entry);
      if (this.state === "open") this._sendPending(entry);
      else if (!retry) {
        this._pending.delete(id);
        reject(new MegaphoneError("disconnected", "not connected"));
      }
    });
  }

  _sendPending(entry) {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      this._pending.delete(entry.frame.id);
      entry.reject(new MegaphoneError("timeout", "no reply from the server"));
    }, this.requestTimeout);
    this._socket.send(JSON.stringify(entry.frame));
  }

  _subscribe(subscription) {
    const frame = { op: "subscribe", topic: subscription.topic };
    if (subscription.callbacks.info) frame.info = subscription.callbacks.info;
    const since = subscription.offset !== null && subscription.epoch !== null;
    if (since) frame.since = { offset: subscription.offset, epoch: subscription.epoch };
    this._request(frame).then(
      (result) => {
        if (!subscription.active) return;
        subscription.epoch = result.epoch;
        // When recovered, the missed messages follow and move the offset forward themselves.
        if (!result.recovered) subscription.offset = result.offset;
        subscription._call("onSubscribed", result);
        if (since && result.recovered === false) subscription._call("onRecoveryFailed", result);
      },
      (error) => {
        if (error.code === "disconnected" || error.code === "timeout") return; // resubscribes
        this._subscriptions.delete(subscription.topic);
        subscription.active = false;
        subscription._call("onError", error);
      },
    );
  }

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "message": {
        const subscription = this._subscriptions.get(frame.topic);
        if (!subscription) return;
        if (frame.epoch === subscription.epoch && frame.offset <= subscription.offset) return;
        subscription.offset = frame.offset;
        subscription.epoch = frame.epoch;
        subscription._call("onMessage", frame.binary ? base64ToBytes(frame.data) : frame.data, frame);
        return;
      }
      case "reply":
      case "error":
      case "pong": {
        const entry = this._pending.get(frame.id);
        if (!entry) {
          if (frame.type === "error") this.dispatchEvent(new CustomEvent("error", { detail: frame }));
          return;
        }
        this._pending.delete(frame.id);
        clearTimeout(entry.timer);
        if (frame.type === "error") entry.reject(new MegaphoneError(frame.code, frame.message));
        else entry.resolve(frame.type === "pong" ? {} : frame.result);
        return;
      }
      case "join":
      case "leave":
        this._subscriptions.get(frame.topic)?._call(frame.type === "join" ? "onJoin" : "onLeave", frame);
        return;
      case "unsubscribed": {
        // The server lost our place (a gap it could not fill): subscribe again from it.
        const subscription = this._subscriptions.get(frame.topic);
        if (subscription && this.state === "open") this._subscribe(subscription);
        return;
      }
      case "connected":
        this.clientId = frame.client;
        this._attempt = 0;
        this._setState("open");
        this.dispatchEvent(new CustomEvent("connected", { detail: { client: frame.client } }));
        for (const subscription of this._subscriptions.values()) this._subscribe(subscription);
        for (const entry of this._pending.values()) this._sendPending(entry);
        return;
      default:
        return;
    }
  }

  _onClose(socket, code) {
    if (socket !== this._socket) return;
    this._socket = null;
    this.clientId = null;
    // 4401: these credentials are over; only a URL function can bring new ones.
    if (code === 4401 && typeof this.url !== "function") this._stopped = true;
    for (const [id, entry] of this._pending) {
      clearTimeout(entry.timer);
      if (!entry.retry || this._stopped) {
        this._pending.delete(id);
        entry.reject(new MegaphoneError("disconnected", `connection closed (${code})`));
      }
    }
    this._retry("closed", code);
  }

  /** Announce `state` (with `code`), then reconnect after a jittered backoff unless stopped;
   * `nextRetryDelay` (ms, null when no retry comes) is set before the announcement. */
  _retry(state, code) {
    // Jittered exponential backoff: minDelay, 2x, 4x... up to maxDelay, times 0.5 to 1.
    const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
    this.nextRetryDelay = this._stopped ? null : delay * (0.5 + Math.random() / 2);
    this._setState(state, code);
    if (this._stopped) return;
    this._retryTimer = setTimeout(() => this.connect(), this.nextRetryDelay);
  }
}

export default Megaphone;
