"""Tier 1: the hub, with recording subscribers and no sockets."""

from __future__ import annotations

from megaphone.core.hub import Hub
from megaphone.core.message import Message, raw_frame


class Recorder:
    def __init__(self) -> None:
        self.frames: list[object] = []

    def deliver(self, message: Message) -> None:
        self.frames.append(message.encoded(raw_frame))


def message(topic: str, offset: int, payload: str | bytes = "x") -> Message:
    return Message(topic, payload, offset, "e1", 0.0)


def test_delivers_to_every_subscriber_of_the_topic_only() -> None:
    hub = Hub()
    a, b, other = Recorder(), Recorder(), Recorder()
    hub.add("news", a)
    hub.add("news", b)
    hub.add("sport", other)
    assert hub.broadcast(message("news", 1, "hello")) == 2
    assert a.frames == b.frames == [{"type": "websocket.send", "text": "hello"}]
    assert other.frames == []


def test_encodes_once_and_shares_the_frame() -> None:
    calls = []

    def counting_encoder(m: Message) -> dict[str, object]:
        calls.append(m.offset)
        return raw_frame(m)

    class Encoding(Recorder):
        def deliver(self, m: Message) -> None:
            self.frames.append(m.encoded(counting_encoder))

    hub = Hub()
    subscribers = [Encoding() for _ in range(100)]
    for subscriber in subscribers:
        hub.add("t", subscriber)
    hub.broadcast(message("t", 1))
    assert calls == [1]
    assert all(s.frames[0] is subscribers[0].frames[0] for s in subscribers)


def test_preserves_order() -> None:
    hub = Hub()
    recorder = Recorder()
    hub.add("t", recorder)
    for offset in range(1, 51):
        hub.broadcast(message("t", offset, str(offset)))
    assert [f["text"] for f in recorder.frames] == [str(i) for i in range(1, 51)]  # type: ignore[index]


def test_binary_and_empty_payloads_keep_their_type() -> None:
    assert raw_frame(message("t", 1, b"")) == {"type": "websocket.send", "bytes": b""}
    assert raw_frame(message("t", 1, "")) == {"type": "websocket.send", "text": ""}


def test_add_and_remove_report_first_and_last() -> None:
    hub = Hub()
    a, b = Recorder(), Recorder()
    assert hub.add("t", a) is True
    assert hub.add("t", b) is False
    assert hub.add("t", b) is False  # idempotent
    assert hub.subscribers("t") == 2
    assert hub.remove("t", a) is False
    assert hub.remove("t", b) is True
    assert hub.remove("t", b) is False
    assert hub.topics() == {}
    assert hub.broadcast(message("t", 1)) == 0


def test_a_subscriber_leaving_during_broadcast_does_not_disturb_the_others() -> None:
    hub = Hub()

    class Leaver(Recorder):
        def deliver(self, m: Message) -> None:
            super().deliver(m)
            hub.remove("t", self)

    leaver, stayer = Leaver(), Recorder()
    hub.add("t", leaver)
    hub.add("t", stayer)
    hub.broadcast(message("t", 1))
    hub.broadcast(message("t", 2))
    assert len(leaver.frames) == 1
    assert len(stayer.frames) == 2
