// Unit tests of megaphone.js under Node (`node --test tests/js/`), with a fake WebSocket the test
// plays the server through, and node:test's mock timers: no network, no real waiting.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import * as megaphone from "../../src/megaphone/static/megaphone/megaphone.js";
import { FakeWebSocket } from "./fake_websocket.mjs";

const { Megaphone } = megaphone;
const URL = "ws://megaphone.test/ws/connect/";
const MIN_DELAY = 500;
const MAX_DELAY = 10_000;
const STABLE_PERIOD = 15_000;
const PUBLISH_TIMEOUT = 10_000;

// The table of docs/protocol.md ("Close codes"), as the client must apply it.
const DOCUMENTED_ACTIONS = {
  1000: "reconnect",
  1001: "reconnect",
  1006: "reconnect",
  1007: "refuse",
  1008: "refuse",
  1009: "refuse",
  1011: "reconnect",
  1012: "reconnect",
  1013: "reconnect",
  4400: "refuse",
  4401: "reauthenticate",
  4403: "refuse",
  4408: "reconnect",
  4410: "reauthenticate",
  4429: "slow_down",
};
const codesWith = (action) =>
  Object.keys(DOCUMENTED_ACTIONS)
    .map(Number)
    .filter((code) => DOCUMENTED_ACTIONS[code] === action);

beforeEach(() => FakeWebSocket.reset());

/** Fake timers, and no jitter (Math.random() = 1: every delay is its backoff exactly). */
function setUp(t) {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  t.mock.method(Math, "random", () => 1);
}

/** Let promise callbacks run (real time does not pass: setImmediate is not mocked). */
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A client on the fake WebSocket, connected (its `connected` frame received). */
function connectedClient(options = {}) {
  const client = new Megaphone(options.url ?? URL, { WebSocket: FakeWebSocket, ...options });
  FakeWebSocket.last().accept();
  assert.equal(client.state, "open");
  return client;
}

/** A connected client subscribed to `topic`, at `position` ({offset, epoch}) once the reply came. */
async function subscribedClient(topic, position, callbacks = {}) {
  const client = connectedClient();
  client.subscribe(topic, callbacks);
  const socket = FakeWebSocket.last();
  socket.reply(socket.sent[0], { topic, ...position });
  await flush(); // a browser runs the reply's promise callbacks before the next frame's event
  return client;
}

/** Follow `promise`: `outcome.value` / `outcome.error` once it settles. */
function watch(promise) {
  const outcome = { settled: false };
  promise.then(
    (value) => Object.assign(outcome, { settled: true, value }),
    (error) => Object.assign(outcome, { settled: true, error }),
  );
  return outcome;
}

const publishes = (socket) => socket.sent.filter((frame) => frame.op === "publish");

/** Close the current socket with `code`, wait the announced delay, return the next socket. */
function reconnectAfter(t, client, code) {
  const socket = FakeWebSocket.last();
  socket.serverClose(code);
  assert.notEqual(client.nextRetryDelay, null, `no reconnection after ${code}`);
  t.mock.timers.tick(client.nextRetryDelay);
  const next = FakeWebSocket.last();
  assert.notEqual(next, socket, `no new connection after ${code}`);
  return next;
}

test("the backoff doubles up to maxDelay, and starts again only after a stable period", (t) => {
  setUp(t);
  const client = connectedClient();
  const delays = [];
  for (let i = 0; i < 7; i++) {
    // Each connection is accepted, then dropped at once: a server failing every connection.
    reconnectAfter(t, client, 1006).accept();
    delays.push(client.nextRetryDelay);
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);

  t.mock.timers.tick(STABLE_PERIOD - 1);
  reconnectAfter(t, client, 1006).accept();
  assert.equal(client.nextRetryDelay, MAX_DELAY, "reset before the stable period was over");

  t.mock.timers.tick(STABLE_PERIOD);
  FakeWebSocket.last().serverClose(1006);
  assert.equal(client.nextRetryDelay, MIN_DELAY, "not reset after a stable connection");
});

test("the jitter takes at most half of a delay off (Math.random() = 0: half)", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  t.mock.method(Math, "random", () => 0);
  const client = connectedClient();
  FakeWebSocket.last().serverClose(1006);
  assert.equal(client.nextRetryDelay, MIN_DELAY / 2);
});

test("the close-code table is the documented one", () => {
  assert.deepEqual(
    Object.fromEntries(Object.entries(megaphone.CLOSE_CODES).map(([code, e]) => [code, e.action])),
    Object.fromEntries(Object.entries(DOCUMENTED_ACTIONS).map(([code, a]) => [code, a])),
  );
  for (const [code, action] of Object.entries(DOCUMENTED_ACTIONS)) {
    assert.equal(megaphone.closeAction(Number(code)), action, `closeAction(${code})`);
  }
  assert.equal(megaphone.closeAction(4999), "reconnect", "a code the table does not name");
});

for (const code of [...codesWith("reconnect"), 4999]) {
  test(`after close ${code} the client reconnects, resubscribes and publishes again`, async (t) => {
    setUp(t);
    const client = await subscribedClient("news", { offset: 3, epoch: "e1" });
    const publish = watch(client.publish("news", "hello", { msgId: "m1" }));

    const second = reconnectAfter(t, client, code);
    second.accept();
    assert.deepEqual(
      second.sent.map(({ op, since, msg_id }) => ({ op, since, msg_id })),
      [
        { op: "subscribe", since: { offset: 3, epoch: "e1" }, msg_id: undefined },
        { op: "publish", since: undefined, msg_id: "m1" },
      ],
    );
    second.reply(second.sent[1], { topic: "news", offset: 4, epoch: "e1" });
    await flush();
    assert.deepEqual(publish.value, { topic: "news", offset: 4, epoch: "e1" });
  });
}

for (const code of codesWith("refuse")) {
  test(`after close ${code} the refused publish is rejected with ${code} and not sent again`, async (t) => {
    setUp(t);
    const client = connectedClient();
    const publish = watch(client.publish("news", "refused"));
    const second = reconnectAfter(t, client, code);
    await flush();
    assert.equal(publish.error?.code, code);
    second.accept();
    assert.deepEqual(publishes(second), []);
  });

  test(`after close ${code} with nothing to blame the client stops`, (t) => {
    setUp(t);
    const client = connectedClient();
    FakeWebSocket.last().serverClose(code);
    assert.equal(client.state, "closed");
    assert.equal(client.nextRetryDelay, null);
    t.mock.timers.tick(MAX_DELAY);
    assert.equal(FakeWebSocket.opened.length, 1);
  });
}

test("1009 rejects the largest frame in flight only: the others are sent again", async (t) => {
  setUp(t);
  const client = connectedClient();
  const small = watch(client.publish("news", "small", { msgId: "small" }));
  const big = watch(client.publish("news", "x".repeat(200_000), { msgId: "big" }));
  const second = reconnectAfter(t, client, 1009);
  await flush();
  assert.equal(big.error?.code, 1009);
  assert.equal(small.settled, false);
  second.accept();
  assert.deepEqual(
    publishes(second).map((frame) => frame.msg_id),
    ["small"],
  );
});

test("a publish the server closes with 1009 settles, and the client reconnects once", async (t) => {
  setUp(t);
  const LIMIT = 1024; // a server refusing frames over 1 KiB, as MAX_MESSAGE_SIZE does
  const client = new Megaphone(URL, { WebSocket: FakeWebSocket });
  const served = new Set();
  const serve = () => {
    for (const socket of FakeWebSocket.opened) {
      if (served.has(socket)) continue;
      served.add(socket);
      const send = socket.send.bind(socket);
      socket.send = (text) => {
        send(text);
        if (Buffer.byteLength(text) > LIMIT) queueMicrotask(() => socket.serverClose(1009));
      };
      socket.accept();
    }
  };
  serve();
  const publish = watch(client.publish("news", "x".repeat(2 * LIMIT)));
  for (let second = 0; second < 60; second++) {
    await flush();
    t.mock.timers.tick(1000);
    serve();
  }
  assert.equal(publish.error?.code, 1009);
  assert.equal(FakeWebSocket.opened.length, 2, "one reconnection after the 1009, no loop");
  assert.equal(client.state, "open");
});

test("after close 4401 a client with a fixed URL stops and rejects its publishes", async (t) => {
  setUp(t);
  const client = connectedClient();
  FakeWebSocket.last().serverClose(1006); // a publish waiting for the next connection
  const publish = watch(client.publish("news", "hello"));
  t.mock.timers.tick(client.nextRetryDelay);
  FakeWebSocket.last().accept();
  FakeWebSocket.last().serverClose(4401);
  await flush();
  assert.equal(client.state, "closed");
  assert.equal(client.nextRetryDelay, null);
  assert.equal(publish.error?.code, "disconnected");
  t.mock.timers.tick(MAX_DELAY);
  assert.equal(FakeWebSocket.opened.length, 2);
});

test("after close 4401 a client with a URL function reconnects with a new URL", async (t) => {
  setUp(t);
  let tokens = 0;
  const client = new Megaphone(() => `${URL}?token=${++tokens}`, { WebSocket: FakeWebSocket });
  await flush(); // the URL function's answer
  FakeWebSocket.last().accept();
  FakeWebSocket.last().serverClose(4401);
  assert.notEqual(client.nextRetryDelay, null);
  t.mock.timers.tick(client.nextRetryDelay);
  await flush();
  assert.deepEqual(
    FakeWebSocket.opened.map((socket) => socket.url),
    [`${URL}?token=1`, `${URL}?token=2`],
  );
});

test("after close 4429 the publishes in flight are rejected and the client waits maxDelay", async (t) => {
  setUp(t);
  const client = await subscribedClient("news", { offset: 1, epoch: "e1" });
  const flood = [1, 2, 3].map((i) => watch(client.publish("news", `flood ${i}`)));
  FakeWebSocket.last().serverClose(4429);
  assert.equal(client.nextRetryDelay, MAX_DELAY);
  await flush();
  assert.deepEqual(
    flood.map((outcome) => outcome.error?.code),
    [4429, 4429, 4429],
  );
  t.mock.timers.tick(MAX_DELAY);
  const second = FakeWebSocket.last();
  second.accept();
  assert.deepEqual(
    second.sent.map((frame) => frame.op),
    ["subscribe"],
  );
});

test("an error frame rejects the publish with its code", async (t) => {
  setUp(t);
  const client = connectedClient();
  const publish = watch(client.publish("announcements", "hi"));
  const socket = FakeWebSocket.last();
  socket.serverSend({ type: "error", id: socket.sent[0].id, code: "forbidden", message: "no" });
  await flush();
  assert.equal(publish.error?.code, "forbidden");
  assert.ok(publish.error instanceof megaphone.MegaphoneError);
});

test("a publish made while disconnected times out, and is not sent after that", async (t) => {
  setUp(t);
  const client = new Megaphone(URL, { WebSocket: FakeWebSocket }); // never accepted
  const publish = watch(client.publish("news", "late"));
  t.mock.timers.tick(PUBLISH_TIMEOUT - 1);
  await flush();
  assert.equal(publish.settled, false);
  t.mock.timers.tick(1);
  await flush();
  assert.equal(publish.error?.code, "timeout");
  FakeWebSocket.last().accept();
  assert.deepEqual(publishes(FakeWebSocket.last()), []);
});

test("a publish's deadline runs from the call, not from each reconnection", async (t) => {
  setUp(t);
  const client = connectedClient({ publishTimeout: 5000 });
  const publish = watch(client.publish("news", "unanswered"));
  t.mock.timers.tick(3000);
  reconnectAfter(t, client, 1006).accept(); // sent again at 3500 ms
  assert.equal(publishes(FakeWebSocket.last()).length, 1);
  t.mock.timers.tick(1500);
  await flush();
  assert.equal(publish.error?.code, "timeout");
  reconnectAfter(t, client, 1006).accept();
  assert.deepEqual(publishes(FakeWebSocket.last()), []);
});

test("recovery: the client resubscribes once with since = the last message it saw", async (t) => {
  setUp(t);
  const received = [];
  const onMessage = (data, message) => received.push([message.offset, data]);
  const client = await subscribedClient("news", { offset: 5, epoch: "e1" }, { onMessage });
  FakeWebSocket.last().serverSend({ type: "message", topic: "news", offset: 6, epoch: "e1", data: "six" });
  assert.deepEqual(received, [[6, "six"]]);

  const second = reconnectAfter(t, client, 1012);
  second.accept();
  assert.deepEqual(
    second.sent.map(({ op, topic, since }) => ({ op, topic, since })),
    [{ op: "subscribe", topic: "news", since: { offset: 6, epoch: "e1" } }],
  );
});

test("disconnect() rejects the publishes waiting for a connection", async (t) => {
  setUp(t);
  const client = connectedClient();
  FakeWebSocket.last().serverClose(1006);
  const publish = watch(client.publish("news", "waiting"));
  client.disconnect();
  await flush();
  assert.equal(publish.error?.code, "disconnected");
  assert.equal(client.state, "closed");
});

test("a server subscription is announced, recovered through the URL, and ended by the server", async (t) => {
  setUp(t);
  const client = connectedClient();
  const announced = [];
  client.addEventListener("subscribed", (e) => announced.push(e.detail.result.topic));
  let socket = FakeWebSocket.last();
  socket.serverSend({ type: "subscribed", topic: "user:7", offset: 4, epoch: "e1" });
  const got = [];
  const ended = [];
  const subscription = client.subscribe("user:7", {
    onMessage: (data) => got.push(data),
    onUnsubscribed: (frame) => ended.push(frame.code),
  });
  assert.equal(subscription.server, true);
  assert.deepEqual(announced, ["user:7"]);
  assert.deepEqual(socket.sent, [], "no subscribe request for a server subscription");
  socket.serverSend({ type: "message", topic: "user:7", offset: 5, epoch: "e1", data: "hi" });
  assert.deepEqual(got, ["hi"]);
  socket = reconnectAfter(t, client, 1006);
  const since = JSON.parse(new globalThis.URL(socket.url).searchParams.get("since"));
  assert.deepEqual(since, { "user:7": { offset: 5, epoch: "e1" } });
  socket.accept();
  assert.deepEqual(socket.sent, [], "not resubscribed by the client");
  socket.serverSend({ type: "subscribed", topic: "user:7", offset: 6, epoch: "e1", recovered: true, missed: 1 });
  socket.serverSend({ type: "message", topic: "user:7", offset: 6, epoch: "e1", data: "missed" });
  assert.deepEqual(got, ["hi", "missed"]);
  socket.serverSend({ type: "unsubscribed", topic: "user:7", code: "revoked", offset: 6, epoch: "e1" });
  assert.deepEqual(ended, ["revoked"]);
  assert.equal(subscription.active, false);
  assert.deepEqual(socket.sent, [], "a revoked subscription is not resubscribed");
});

// The HTTP fallback -------------------------------------------------------------------------

/** A fake HTTP transport: a FakeWebSocket the test can tell apart. */
class FakeHttpSocket extends FakeWebSocket {}

function fallbackClient(t, options = {}) {
  setUp(t);
  const states = [];
  const client = new Megaphone(URL, {
    WebSocket: FakeWebSocket,
    HttpSocket: FakeHttpSocket,
    websocketRetry: 60_000,
    ...options,
  });
  client.addEventListener("state", ({ detail }) => states.push(detail));
  return { client, states };
}

test("a WebSocket refused before it opens switches to HTTP at once, same URL", (t) => {
  const { client, states } = fallbackClient(t);
  FakeWebSocket.last().serverClose(1006); // the upgrade refused: closed, never opened
  const http = FakeWebSocket.last();
  assert.ok(http instanceof FakeHttpSocket);
  assert.equal(http.url, URL);
  http.accept();
  assert.equal(client.state, "open");
  assert.equal(client.transport, "http");
  assert.deepEqual(states.at(-1), { state: "open", code: undefined, transport: "http" });
});

test("a WebSocket that never opens is given up after openTimeout", (t) => {
  const { client } = fallbackClient(t, { openTimeout: 3000 });
  const ws = FakeWebSocket.last();
  t.mock.timers.tick(2999);
  assert.equal(FakeWebSocket.opened.length, 1);
  t.mock.timers.tick(1);
  assert.notEqual(ws.closeCode, null);
  assert.ok(FakeWebSocket.last() instanceof FakeHttpSocket);
  assert.equal(client.transport, "http");
});

test("an open WebSocket that closes reconnects over WebSocket, never falls back", (t) => {
  const { client } = fallbackClient(t);
  FakeWebSocket.last().accept();
  FakeWebSocket.last().serverClose(1006);
  t.mock.timers.tick(MIN_DELAY);
  assert.ok(!(FakeWebSocket.last() instanceof FakeHttpSocket));
  assert.equal(client.transport, "websocket");
});

test("over HTTP, after websocketRetry a WebSocket is tried beside; once it opens, the client moves", async (t) => {
  const { client } = fallbackClient(t);
  await flush();
  FakeWebSocket.last().serverClose(1006);
  await flush();
  const http = FakeWebSocket.last();
  http.accept();
  t.mock.timers.tick(59_999);
  assert.equal(FakeWebSocket.last(), http);
  t.mock.timers.tick(1);
  const probe = FakeWebSocket.last();
  assert.ok(!(probe instanceof FakeHttpSocket));
  assert.equal(http.closeCode, null); // HTTP stays up while the probe tries
  probe.accept();
  assert.equal(probe.closeCode, 1000);
  assert.equal(http.closeCode, 1000);
  t.mock.timers.tick(MAX_DELAY);
  await flush();
  const ws = FakeWebSocket.last();
  assert.ok(!(ws instanceof FakeHttpSocket) && ws !== probe);
  ws.accept();
  assert.equal(client.transport, "websocket");
  assert.equal(client.state, "open");
});

test("a WebSocket probe that fails keeps HTTP, and tries again after websocketRetry", async (t) => {
  const { client } = fallbackClient(t);
  await flush();
  FakeWebSocket.last().serverClose(1006);
  await flush();
  const http = FakeWebSocket.last();
  http.accept();
  t.mock.timers.tick(60_000);
  FakeWebSocket.last().serverClose(1006); // the probe refused
  assert.equal(http.closeCode, null);
  assert.equal(client.transport, "http");
  const count = FakeWebSocket.opened.length;
  t.mock.timers.tick(60_000);
  assert.equal(FakeWebSocket.opened.length, count + 1);
  assert.ok(!(FakeWebSocket.last() instanceof FakeHttpSocket));
});

test("httpFallback: false never leaves WebSocket", (t) => {
  const { client } = fallbackClient(t, { httpFallback: false });
  FakeWebSocket.last().serverClose(1006);
  t.mock.timers.tick(MIN_DELAY);
  assert.ok(!(FakeWebSocket.last() instanceof FakeHttpSocket));
  assert.equal(client.transport, "websocket");
});
