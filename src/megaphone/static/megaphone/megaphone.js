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
// The backoff starts again from minDelay only once a connection has stayed open for stablePeriod,
// so a server that accepts and then drops every connection is retried ever more slowly.
//
// What the client does after each close code is one table, CLOSE_CODES (the same as the one in
// docs/protocol.md, "Close codes"): transient failures reconnect; a close that refuses something
// the client sent (1009: a frame over the server's size limit) rejects the request to blame with
// the close code and never sends it again; 4429 waits the longest backoff and drops the publishes
// in flight. Every promise settles: a publish is rejected at the latest publishTimeout after the
// call ("timeout"), and is never sent after that.
//
// Server subscriptions: topics the server subscribes the connection to at connect (docs/protocol.md)
// arrive as "subscribed" frames. Each becomes a Subscription (server: true) and a "subscribed"
// event; mp.subscribe(topic, callbacks) on such a topic attaches the callbacks (before or after the
// frame). On reconnect their positions go in the URL (?since=...), so the server recovers them.
// A subscription the server ends ("unsubscribed" with "revoked", "server_unsubscribed" or the
// project's code) calls onUnsubscribed(frame) and is over; "insufficient_state" resubscribes.
//
// Authentication: a page's session cookie goes with the socket. Other clients pass a function as
// the URL, called before every connection attempt, e.g. to fetch a fresh token:
//   new Megaphone(async () => `/ws/connect/?token=${(await (await fetch("/api/token")).json()).token}`);
// After close code 4401 (logged out, token expired) a client with a fixed URL stops reconnecting
// (state "closed", code 4401); one with a URL function reconnects with a new URL.

/**
 * What the client does after the server closes with each code (docs/protocol.md, "Close codes"):
 * - "reconnect": a transient failure. Reconnect after the jittered backoff, resubscribe from the
 *   last offsets, send again the publishes still waiting.
 * - "refuse": the server refused something this client sent. The requests to blame are rejected
 *   with a MegaphoneError whose code is the close code, and never sent again: for 1009, the
 *   largest frame sent on that connection and not answered (the frame over the limit was one of
 *   them, so the largest is over it too); for the others, every frame sent on it and not answered.
 *   Then reconnect after the backoff. With nothing to blame, the refusal is the connection's own:
 *   stop (state "closed" with the code).
 * - "slow_down": rate limited. The publishes sent on that connection and not answered are rejected
 *   with the close code; reconnect after the longest backoff (maxDelay, jittered).
 * - "reauthenticate": the credentials are over. Stop, unless the URL is a function: then
 *   reconnect (with backoff) with the URL it gives.
 * A code not in the table is treated as "reconnect".
 */
export const CLOSE_CODES = Object.freeze({
  1000: Object.freeze({ name: "normal", action: "reconnect" }),
  1001: Object.freeze({ name: "going_away", action: "reconnect" }),
  1006: Object.freeze({ name: "abnormal", action: "reconnect" }),
  1007: Object.freeze({ name: "invalid_payload", action: "refuse" }),
  1008: Object.freeze({ name: "policy_violation", action: "refuse" }),
  1009: Object.freeze({ name: "message_too_big", action: "refuse" }),
  1011: Object.freeze({ name: "internal_error", action: "reconnect" }),
  1012: Object.freeze({ name: "service_restart", action: "reconnect" }),
  1013: Object.freeze({ name: "try_again_later", action: "reconnect" }),
  4400: Object.freeze({ name: "bad_request", action: "refuse" }),
  4401: Object.freeze({ name: "unauthorized", action: "reauthenticate" }),
  4403: Object.freeze({ name: "forbidden", action: "refuse" }),
  4408: Object.freeze({ name: "slow_consumer", action: "reconnect" }),
  4410: Object.freeze({ name: "disconnected", action: "reauthenticate" }),
  4429: Object.freeze({ name: "rate_limited", action: "slow_down" }),
});

/** The action of CLOSE_CODES for `code`: "reconnect" for a code the table does not name. */
export function closeAction(code) {
  return CLOSE_CODES[code]?.action ?? "reconnect";
}

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

function utf8Size(text) {
  return new TextEncoder().encode(text).length;
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
    this.server = false; // subscribed by the server (a "subscribed" frame), not by a request
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

/** Statuses of a POST of the HTTP transport, as the close code a WebSocket would have got. */
const POST_CLOSE_CODES = Object.freeze({ 403: 4403, 413: 1009, 503: 1013 });

/**
 * The HTTP transport, with a WebSocket's interface (send, close, onopen, onmessage, onclose):
 * frames come down on an EventSource of /sse/connect/ (the WebSocket URL's path with /ws/
 * replaced by /sse/, same query), each event's data one frame; they go up as POSTs to
 * /sse/connect/<session>/, one frame each, one at a time, in order (a 429 waits a second and
 * sends it again). The server's "close" event, or a POST refused, closes it with that code.
 */
export class HttpSocket {
  constructor(url) {
    const base = new URL(url);
    base.protocol = base.protocol === "wss:" ? "https:" : "http:";
    base.pathname = base.pathname.replace(/\/ws\/connect\/$/, "/sse/connect/");
    this._base = base;
    this._queue = [];
    this._posting = false;
    this._session = null;
    this._closed = false;
    this.onopen = this.onmessage = this.onclose = null;
    const source = (this._source = new EventSource(base.href, { withCredentials: true }));
    source.addEventListener("session", (event) => {
      this._session = event.data;
      this.onopen?.({});
      this._post();
    });
    source.onmessage = (event) => this.onmessage?.({ data: event.data });
    source.addEventListener("close", (event) => {
      let code = 1006;
      try {
        code = JSON.parse(event.data).code;
      } catch {}
      this._end(code);
    });
    source.onerror = () => this._end(1006); // the stream ended or never opened: we reconnect
  }

  send(text) {
    this._queue.push(text);
    this._post();
  }

  close(code = 1000) {
    this._end(code);
  }

  async _post() {
    if (this._posting || this._session === null || this._closed) return;
    this._posting = true;
    try {
      while (this._queue.length > 0 && !this._closed) {
        const url = new URL(`${this._session}/`, this._base);
        url.search = this._base.search;
        let response;
        try {
          response = await fetch(url, {
            method: "POST",
            body: this._queue[0],
            headers: { "Content-Type": "application/json" },
            credentials: "include",
          });
        } catch {
          return this._end(1006);
        }
        if (response.status === 429) {
          await new Promise((resolve) => setTimeout(resolve, 1000));
          continue;
        }
        if (!response.ok) return this._end(POST_CLOSE_CODES[response.status] ?? 1011);
        this._queue.shift();
      }
    } finally {
      this._posting = false;
    }
  }

  _end(code) {
    if (this._closed) return;
    this._closed = true;
    this._source.close();
    this.onclose?.({ code });
  }
}

/**
 * A connection to a Megaphone protocol endpoint.
 * Events (EventTarget): "state" {state, code}, "connected" {client}, "error" {code, message},
 * "subscribed" {subscription, result} (a server subscription).
 *
 * Options (times in ms): minDelay (500) and maxDelay (10000): the reconnection backoff, doubling
 * from minDelay up to maxDelay, each delay times a random 0.5 to 1; stablePeriod (15000): how long
 * a connection must stay open before the backoff starts again from minDelay; requestTimeout
 * (10000): how long a request other than publish waits for its answer once sent; publishTimeout
 * (10000): how long a publish may wait, from the call, across reconnects, before it is rejected
 * with "timeout" and dropped; autoConnect (true); WebSocket: the WebSocket class to use
 * (globalThis.WebSocket by default; tests pass a fake one).
 *
 * Transports: WebSocket first. When a WebSocket never opens (the upgrade refused, or no open
 * within openTimeout, 5000), the client switches to the HTTP transport (HttpSocket: an event
 * stream down, POSTs up; the same frames, recovery and close codes) at once, and tries WebSocket
 * again after websocketRetry (60000) ms: beside the open HTTP connection (if it opens, the client
 * moves to it and recovers as after any reconnect), and at its next reconnect. httpFallback (true where
 * EventSource exists): false to use WebSocket only; HttpSocket: the class of the HTTP transport
 * (tests pass a fake one). `transport` ("websocket" or "http") is in every "state" event.
 */
export class Megaphone extends EventTarget {
  constructor(url = "/ws/connect/", options = {}) {
    super();
    this.url = url;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 10000;
    this.stablePeriod = options.stablePeriod ?? 15000;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.publishTimeout = options.publishTimeout ?? 10000;
    this.state = "closed";
    this.clientId = null;
    this.nextRetryDelay = null;
    this._WebSocket = options.WebSocket ?? null;
    this._HttpSocket = options.HttpSocket ?? HttpSocket;
    this.httpFallback =
      options.httpFallback ?? (options.HttpSocket !== undefined || typeof globalThis.EventSource === "function");
    this.openTimeout = options.openTimeout ?? 5000;
    this.websocketRetry = options.websocketRetry ?? 60000;
    this.transport = "websocket"; // or "http": the transport of the current (or next) connection
    this._websocketAgain = false; // over HTTP: whether the next connection tries WebSocket
    this._websocketTimer = null;
    this._lastUrl = null; // the URL of the last connection (a WebSocket probe's)
    this._socket = null;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // id -> {frame, text, resolve, reject, retry, timer, socket}
    this._subscriptions = new Map(); // topic -> Subscription
    this._stopped = false;
    this._retryTimer = null;
    this._stableTimer = null;
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
      url = this._withPositions(url);
      this._lastUrl = url;
    } catch (error) {
      console.error("megaphone: could not get the connection URL", error);
      this._retry("closed", 1006);
      return;
    }
    if (this._stopped) return this._setState("closed");
    if (this.transport === "http" && this._websocketAgain) this.transport = "websocket";
    const Socket =
      this.transport === "http" ? this._HttpSocket : (this._WebSocket ?? globalThis.WebSocket);
    const socket = (this._socket = new Socket(url));
    let opened = false;
    // A socket that never opens (an upgrade refused, or a proxy that holds it): another transport.
    const openTimer = setTimeout(() => {
      if (opened || socket !== this._socket) return;
      socket.onclose = () => {};
      socket.close();
      this._onClose(socket, 1006, { neverOpened: true });
    }, this.openTimeout);
    socket.onopen = () => {
      opened = true;
      clearTimeout(openTimer);
    };
    socket.onmessage = (event) => {
      opened = true; // a frame came: open, whether or not the socket said so
      clearTimeout(openTimer);
      this._onFrame(event.data);
    };
    socket.onclose = (event) => {
      clearTimeout(openTimer);
      this._onClose(socket, event.code, { neverOpened: !opened });
    };
  }

  /** `url` with the positions of the server subscriptions (?since=...), to recover them. */
  _withPositions(url) {
    const since = {};
    for (const subscription of this._subscriptions.values()) {
      if (subscription.server && subscription.offset !== null && subscription.epoch !== null) {
        since[subscription.topic] = { offset: subscription.offset, epoch: subscription.epoch };
      }
    }
    if (Object.keys(since).length === 0) return url;
    const withSince = new URL(url);
    withSince.searchParams.set("since", JSON.stringify(since));
    return withSince.href;
  }

  /** Close for good (no reconnect). Pending requests, publishes included, are rejected now. */
  disconnect() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._websocketTimer);
    clearTimeout(this._stableTimer);
    for (const entry of [...this._pending.values()]) {
      this._settle(entry).reject(new MegaphoneError("disconnected", "disconnected"));
    }
    if (this._socket) this._socket.close(1000);
    else this._setState("closed");
  }

  /**
   * Subscribe to `topic`. Callbacks: onMessage(data, message), onSubscribed(result),
   * onRecoveryFailed(result) (messages were missed and cannot be sent: reload your state),
   * onJoin(entry), onLeave(entry), onError(error), onUnsubscribed(frame) (the server ended it).
   * Options: info (presence), since {offset, epoch}. On a server subscription (see above), the
   * callbacks are attached to it.
   */
  subscribe(topic, callbacks = {}) {
    const held = this._subscriptions.get(topic);
    if (held?.server && !held.claimed) {
      held.claimed = true;
      held.callbacks = callbacks;
      return held;
    }
    if (held) throw new MegaphoneError("already_subscribed", topic);
    const subscription = new Subscription(this, topic, callbacks);
    this._subscriptions.set(topic, subscription);
    if (this.state === "open") this._subscribe(subscription);
    return subscription;
  }

  /**
   * Publish `data` (any JSON value; a Uint8Array/ArrayBuffer is sent as binary) on `topic`.
   * Resolves to {topic, offset, epoch} once the server accepted it. If the connection drops
   * first, the publish is sent again after reconnecting, with the same msg_id: delivered once.
   * Rejects with a MegaphoneError: the error frame's code ("forbidden", "rate_limited"...) when
   * the server refused it; the close code (1009...) when the server closed the connection over
   * it (CLOSE_CODES); "timeout" when no answer came within publishTimeout of the call (it may
   * still have been published: publish again with the same msgId to be sure, it counts once);
   * "disconnected" after disconnect() or a close that stops the client.
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
    const transport = this.transport;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, code, transport } }));
  }

  /** Send `frame` now (or, with `retry`, whenever connected) and wait for its answer. The entry
   * leaves `_pending` exactly once, through `_settle`: answered, refused, timed out or dropped. */
  _request(frame, { retry = false } = {}) {
    return new Promise((resolve, reject) => {
      if (this.state !== "open" && !retry) {
        reject(new MegaphoneError("disconnected", "not connected"));
        return;
      }
      const id = this._nextId++;
      const framed = { ...frame, id };
      const text = JSON.stringify(framed);
      // socket: the one it was last sent on (the close of that socket may be its refusal).
      const entry = { frame: framed, text, resolve, reject, retry, socket: null };
      // The deadline runs from the call, never restarted by a reconnect.
      entry.timer = setTimeout(
        () => this._settle(entry).reject(new MegaphoneError("timeout", "no reply from the server")),
        retry ? this.publishTimeout : this.requestTimeout,
      );
      this._pending.set(id, entry);
      if (this.state === "open") this._sendPending(entry);
    });
  }

  /** Take `entry` out of the pending requests and return it, to resolve or reject it once. */
  _settle(entry) {
    this._pending.delete(entry.frame.id);
    clearTimeout(entry.timer);
    return entry;
  }

  _sendPending(entry) {
    entry.socket = this._socket;
    this._socket.send(entry.text);
  }

  _subscribe(subscription) {
    const frame = { op: "subscribe", topic: subscription.topic };
    if (subscription.callbacks.info) frame.info = subscription.callbacks.info;
    const since = subscription.offset !== null && subscription.epoch !== null;
    if (since) frame.since = { offset: subscription.offset, epoch: subscription.epoch };
    this._request(frame).then(
      (result) => {
        if (!subscription.active) return;
        if (result.server) {
          // The server had subscribed it already: its frames move the position themselves.
          if (!subscription.server) this._serverSubscribed(subscription, result);
          return;
        }
        subscription.server = false;
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

  /** `subscription` is the server's (a "subscribed" frame, or a reply saying so). */
  _serverSubscribed(subscription, result) {
    const recovering = result.recovered && subscription.epoch === result.epoch;
    subscription.server = true;
    subscription.epoch = result.epoch;
    if (!recovering) subscription.offset = result.offset;
    subscription._call("onSubscribed", result);
    if (result.recovered === false) subscription._call("onRecoveryFailed", result);
    this.dispatchEvent(new CustomEvent("subscribed", { detail: { subscription, result } }));
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
        this._settle(entry);
        if (frame.type === "error") entry.reject(new MegaphoneError(frame.code, frame.message));
        else entry.resolve(frame.type === "pong" ? {} : frame.result);
        return;
      }
      case "join":
      case "leave":
        this._subscriptions.get(frame.topic)?._call(frame.type === "join" ? "onJoin" : "onLeave", frame);
        return;
      case "unsubscribed": {
        const subscription = this._subscriptions.get(frame.topic);
        if (!subscription) return;
        if (frame.code === "insufficient_state") {
          // The server lost our place (a gap it could not fill): subscribe again from it.
          if (this.state === "open") this._subscribe(subscription);
          return;
        }
        // Ended by the server (revoked, or the project's reason): over, no message follows.
        this._subscriptions.delete(frame.topic);
        subscription.active = false;
        subscription._call("onUnsubscribed", frame);
        return;
      }
      case "subscribed": {
        let subscription = this._subscriptions.get(frame.topic);
        if (!subscription) {
          subscription = new Subscription(this, frame.topic, {});
          this._subscriptions.set(frame.topic, subscription);
        } else {
          subscription.claimed = true; // the page subscribed it before the frame came
        }
        this._serverSubscribed(subscription, frame);
        return;
      }
      case "connected": {
        this.clientId = frame.client;
        clearTimeout(this._stableTimer);
        this._stableTimer = setTimeout(() => (this._attempt = 0), this.stablePeriod);
        const waiting = [...this._pending.values()]; // publishes made while not connected
        this._setState("open");
        this.dispatchEvent(new CustomEvent("connected", { detail: { client: frame.client } }));
        // Server subscriptions come back by themselves ("subscribed" frames), recovered.
        for (const subscription of this._subscriptions.values()) {
          if (!subscription.server) this._subscribe(subscription);
        }
        for (const entry of waiting) if (this._pending.has(entry.frame.id)) this._sendPending(entry);
        return;
      }
      default:
        return;
    }
  }

  /** Act on the close as CLOSE_CODES says: reject what the server refused, then reconnect or
   * stop. Requests not sent again (all but the waiting publishes) are rejected. */
  _onClose(socket, code, { neverOpened = false } = {}) {
    if (socket !== this._socket) return;
    this._socket = null;
    this.clientId = null;
    clearTimeout(this._stableTimer);
    const action = closeAction(code);
    const refused = this._refusedBy(socket, code, action);
    const reason = `connection closed (${code} ${CLOSE_CODES[code]?.name ?? "unknown"})`;
    for (const entry of refused) {
      this._settle(entry).reject(new MegaphoneError(code, `refused: ${reason}`));
    }
    // 4401: these credentials are over; only a URL function can bring new ones. A refusal with
    // nothing to blame is the connection's own: connecting again would be refused again.
    if (action === "reauthenticate" && typeof this.url !== "function") this._stopped = true;
    if (action === "refuse" && refused.length === 0) this._stopped = true;
    for (const entry of [...this._pending.values()]) {
      if (entry.retry && !this._stopped) continue; // sent again once connected
      this._settle(entry).reject(new MegaphoneError("disconnected", reason));
    }
    if (neverOpened && !this._stopped && this.transport === "websocket" && this.httpFallback) {
      // WebSocket refused on this network: the HTTP transport, now (no backoff).
      this.transport = "http";
      this._websocketAgain = false;
      this._armWebSocketRetry();
      this._setState("closed", code);
      this.connect();
      return;
    }
    if (neverOpened && this.transport === "http") this.transport = "websocket"; // try both in turn
    this._retry("closed", code, { longest: action === "slow_down" });
  }

  /** Over HTTP: after websocketRetry, the next connection tries WebSocket, and a WebSocket is
   * tried now beside the open HTTP one; if it opens, the client moves to WebSocket (it closes
   * the probe and the HTTP stream, and reconnects and recovers as after any close). */
  _armWebSocketRetry() {
    clearTimeout(this._websocketTimer);
    this._websocketAgain = false;
    this._websocketTimer = setTimeout(() => {
      this._websocketAgain = true;
      this._probeWebSocket();
    }, this.websocketRetry);
  }

  _probeWebSocket() {
    if (this._stopped || this.transport !== "http" || this.state !== "open" || !this._lastUrl) return;
    const Socket = this._WebSocket ?? globalThis.WebSocket;
    let probe;
    try {
      probe = new Socket(this._lastUrl);
    } catch {
      return this._armWebSocketRetry();
    }
    let done = false;
    const finish = (opened) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      probe.onmessage = probe.onclose = () => {};
      probe.close(1000);
      if (!opened) return this._armWebSocketRetry(); // still blocked: HTTP for another while
      if (this.transport === "http" && this.state === "open" && this._socket) this._socket.close(1000);
    };
    const timer = setTimeout(() => finish(false), this.openTimeout);
    probe.onopen = null;
    probe.onmessage = () => finish(true); // its `connected` frame: WebSocket works here now
    probe.onclose = () => finish(false);
  }

  /** The requests that `socket`'s close with `code` refused (see CLOSE_CODES). */
  _refusedBy(socket, code, action) {
    const unanswered = [...this._pending.values()].filter((entry) => entry.socket === socket);
    if (action === "slow_down") return unanswered.filter((entry) => entry.frame.op === "publish");
    if (action !== "refuse") return [];
    if (code !== 1009 || unanswered.length === 0) return unanswered;
    const sizes = unanswered.map((entry) => utf8Size(entry.text));
    return [unanswered[sizes.indexOf(Math.max(...sizes))]];
  }

  /** Announce `state` (with `code`), then reconnect after a jittered backoff unless stopped;
   * `nextRetryDelay` (ms, null when no retry comes) is set before the announcement. */
  _retry(state, code, { longest = false } = {}) {
    // Jittered exponential backoff: minDelay, 2x, 4x... up to maxDelay (at once when `longest`),
    // times 0.5 to 1. Only a connection open for stablePeriod brings it back to minDelay.
    const backoff = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
    const delay = longest ? this.maxDelay : backoff;
    this.nextRetryDelay = this._stopped ? null : delay * (0.5 + Math.random() / 2);
    this._setState(state, code);
    if (this._stopped) return;
    this._retryTimer = setTimeout(() => this.connect(), this.nextRetryDelay);
  }
}

export default Megaphone;
