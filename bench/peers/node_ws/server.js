// Broadcast peer built on the Node `ws` package (benchmark only).
// ws://HOST:PORT/ws/broadcast/<topic>/ (or /ws/broadcast/): every frame a client sends goes to every
// client of the topic, the sender included, as the same text or bytes.
// --fanout-timing: print "fanout <clients> <microseconds>" per frame broadcast, from its receipt to
// the return of the last send() (ws writes to the socket from send() when the socket can take it).
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '8765'));
const fanoutTiming = process.argv.includes('--fanout-timing');
const PATH = /^\/ws\/broadcast\/(?:([\w.-]+)\/)?$/;
const topics = new Map();

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

server.on('upgrade', (req, socket, head) => {
  const m = PATH.exec(req.url);
  if (!m) {
    socket.destroy();
    return;
  }
  const topic = m[1] || 'broadcast';
  wss.handleUpgrade(req, socket, head, (ws) => {
    let members = topics.get(topic);
    if (!members) {
      members = new Set();
      topics.set(topic, members);
    }
    members.add(ws);
    ws.on('message', (data, isBinary) => {
      const start = fanoutTiming ? process.hrtime.bigint() : 0n;
      for (const client of members) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
      if (fanoutTiming) {
        const us = Number(process.hrtime.bigint() - start) / 1000;
        process.stdout.write(`fanout ${members.size} ${us.toFixed(0)}\n`);
      }
    });
    ws.on('close', () => {
      members.delete(ws);
      if (members.size === 0) topics.delete(topic);
    });
    ws.on('error', () => {});
  });
});

server.listen(port, host, 4096, () => {
  process.stdout.write(`node ws broadcast listening on ${host}:${port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
