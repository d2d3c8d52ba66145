// A fake WebSocket class for the Node tests of megaphone.js: the client gets it through its
// `WebSocket` option, and the test plays the server through the methods below.

export class FakeWebSocket {
  /** Every socket constructed since the last reset(), oldest first. */
  static opened = [];

  static reset() {
    FakeWebSocket.opened = [];
  }

  static last() {
    return FakeWebSocket.opened.at(-1);
  }

  constructor(url) {
    this.url = url;
    this.texts = []; // the frames the client sent, as sent
    this.closeCode = null;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    FakeWebSocket.opened.push(this);
  }

  /** The frames the client sent, parsed. */
  get sent() {
    return this.texts.map((text) => JSON.parse(text));
  }

  // The client's side --------------------------------------------------------------------------

  send(text) {
    if (this.closeCode !== null) throw new Error(`send() on a socket closed with ${this.closeCode}`);
    this.texts.push(text);
  }

  close(code = 1005) {
    this.serverClose(code);
  }

  // The server's side --------------------------------------------------------------------------

  /** Send the `connected` frame that opens every protocol connection. */
  accept(client = `client-${FakeWebSocket.opened.indexOf(this)}`) {
    this.onopen?.({});
    this.serverSend({ type: "connected", client, version: 1 });
  }

  serverSend(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }

  /** Answer the request `frame` (one the client sent) with a reply carrying `result`. */
  reply(frame, result) {
    this.serverSend({ type: "reply", id: frame.id, result });
  }

  /** Close the connection with `code`, as the browser reports it to the page. */
  serverClose(code) {
    if (this.closeCode !== null) return;
    this.closeCode = code;
    this.onclose({ code });
  }
}
