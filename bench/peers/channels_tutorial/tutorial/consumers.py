"""The Channels tutorial's consumer pattern, as users copy it.

group_add on connect, group_send on receive, a handler that calls self.send(). The only change from
the tutorial is that the text is forwarded as it is (the tutorial wraps it in JSON), so that every
server in the benchmark sends back exactly the frame it received.
"""

from channels.generic.websocket import AsyncWebsocketConsumer


class BroadcastConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        topic = self.scope["url_route"]["kwargs"].get("topic", "broadcast")
        self.group_name = f"topic_{topic}"
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            self.group_name, {"type": "broadcast.message", "text": text_data, "bytes": bytes_data}
        )

    async def broadcast_message(self, event):
        await self.send(text_data=event["text"], bytes_data=event["bytes"])
