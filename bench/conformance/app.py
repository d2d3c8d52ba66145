"""Tiny raw ASGI 3 app used to probe ASGI servers' WebSocket behaviour.

No Django, no channels: only the ASGI WebSocket protocol, so that what the
probe measures is the server, not the framework.

WebSocket behaviour (any path except the ones below):
  * accepts the connection;
  * echoes every received message back with the same type (text as text,
    bytes as bytes, empty ones included);
  * text "close:4321"  -> websocket.close with code 4321;
  * text "burst:N"     -> sends N text messages of 100 bytes as fast as the
                          server lets it (awaiting each send), then nothing.
Path "/reject": sends websocket.close(code=4403) *before* accepting, to see
what HTTP status the client gets (ASGI spec says 403).

HTTP: 200 "ok" on every path (used by the probe to wait for the server).
"""

BURST_PAYLOAD = "x" * 100


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif kind == "http":
        # Drain the request body, then answer.
        while True:
            msg = await receive()
            if msg["type"] != "http.request" or not msg.get("more_body"):
                break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
    elif kind == "websocket":
        await websocket(scope, receive, send)


async def websocket(scope, receive, send):
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    if scope.get("path") == "/reject":
        await send({"type": "websocket.close", "code": 4403})
        return
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg["type"] != "websocket.receive":
            continue
        text = msg.get("text")
        data = msg.get("bytes")
        if text is not None:
            if text == "close:4321":
                await send({"type": "websocket.close", "code": 4321})
                return
            if text.startswith("burst:"):
                n = int(text[6:])
                out = {"type": "websocket.send", "text": BURST_PAYLOAD}
                for _ in range(n):
                    await send(dict(out))
                continue
            await send({"type": "websocket.send", "text": text})
        elif data is not None:
            await send({"type": "websocket.send", "bytes": data})
