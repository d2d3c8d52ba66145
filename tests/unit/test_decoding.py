"""Tier 1: the strict decoding boundary (megaphone.core.decoding) and the gates built on it.

Text that is not valid Unicode (a lone surrogate, which Python's ``json`` decodes from a
``"\\ud800"`` escape) is refused where it enters: protocol frames (``bad_request``), Python-side
publishes (``InvalidMessage``), the node (``InvalidText``), settings (``megaphone.E042``).
"""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from megaphone.backends.memory import MemoryBackend
from megaphone.core.decoding import InvalidText, decode_json, invalid_strings, strict_query
from megaphone.core.hub import Hub
from megaphone.core.message import Message
from megaphone.engine import publishing
from megaphone.engine.node import Node
from megaphone.engine.publishing import InvalidMessage
from megaphone.protocol.schema import Code, ProtocolError, parse
from megaphone.testing import unique

#: Lone high, lone low, and a pair in the wrong order, as JSON escapes.
ESCAPES = ["\\ud800", "\\udfff", "\\udc00\\ud800"]

FRAMES = [
    '{"op":"publish","id":7,"topic":"t","data":"x@y"}',
    '{"op":"publish","id":7,"topic":"t","data":{"k":["@"]}}',
    '{"op":"publish","id":7,"topic":"t","data":{"@":1}}',
    '{"op":"publish","id":7,"topic":"t","data":1,"msg_id":"m@"}',
    '{"op":"publish","id":7,"topic":"t@","data":1}',
    '{"op":"subscribe","id":7,"topic":"t","info":{"name":"@"}}',
    '{"op":"subscribe","id":7,"topic":"t","since":{"offset":1,"epoch":"@"}}',
    '{"op":"history","id":7,"topic":"t","epoch":"@"}',
    '{"op":"@","id":7}',
]


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("frame", FRAMES)
def test_a_lone_surrogate_anywhere_in_a_frame_is_a_bad_request_with_its_id(
    frame: str, escape: str
) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(frame.replace("@", escape))
    assert raised.value.code == Code.BAD_REQUEST
    assert "not valid" in raised.value.message
    assert raised.value.id == 7  # the client can tell which request failed


def test_a_lone_surrogate_in_the_id_itself_leaves_the_error_without_id() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse('{"op":"ping","id":"a\\ud800"}')
    assert (raised.value.code, raised.value.id) == (Code.BAD_REQUEST, None)


def test_text_frames_holding_a_surrogate_itself_are_refused() -> None:
    """What a lenient ASGI server could hand over: the str itself holds the surrogate."""
    with pytest.raises(ProtocolError) as raised:
        parse('{"op":"ping","id":1,"x":"\ud800"}')
    assert raised.value.code == Code.BAD_REQUEST and "U+D800" in raised.value.message


@pytest.mark.parametrize(
    "data", [b'"\xed\xa0\x80"', b'"\xff"', b'"\\ud800"', "NaN", "[1,Infinity]", "1e999"]
)
def test_json_that_is_not_valid_unicode_or_not_json_is_refused(data: str | bytes) -> None:
    with pytest.raises(InvalidText):
        decode_json(data)
    assert decode_json(b'["\\ud83d\\ude00", "\xc3\xa9"]') == ["😀", "é"]  # pairs are fine


def test_query_strings_decode_as_strict_utf8() -> None:
    assert strict_query("a=%C3%A9&b=&c=1+2") == [("a", "é"), ("b", ""), ("c", "1 2")]
    for query in ("a=%FF", "a=%ED%A0%80", "%ED%B0%80=1", "a=\udcff"):
        with pytest.raises(InvalidText):
            strict_query(query)


@pytest.mark.parametrize(
    ("data", "msg_id", "code"),
    [
        ("x\ud800y", None, "invalid_data"),
        ({"k": ["\udc00"]}, None, "invalid_data"),
        ({"\ud800": 1}, None, "invalid_data"),
        ("ok", "m\ud800", "invalid_msg_id"),
        ("ok", "m\udcff", "invalid_msg_id"),  # undecodable bytes read with surrogateescape
    ],
)
def test_python_publishes_of_invalid_text_raise_invalid_message(
    data: object, msg_id: str | None, code: str
) -> None:
    with pytest.raises(InvalidMessage) as raised:
        publishing.prepare("t", data, msg_id)
    assert raised.value.code == code and "not valid Unicode" in str(raised.value)


async def test_the_node_refuses_invalid_text_before_the_backend_sees_it() -> None:
    node = Node(MemoryBackend("memory://"))
    await node.start()
    topic = unique("dec")
    try:
        for payload, msg_id in (("x\ud800", None), ("ok", "\udc00")):
            with pytest.raises(InvalidText):
                await node.publish(topic, payload, msg_id=msg_id)
        assert (await node.history(topic)).offset == 0  # nothing was numbered or stored
    finally:
        await node.stop()


def test_a_subscriber_that_raises_costs_the_others_nothing() -> None:
    class Broken:
        def deliver(self, message: Message) -> None:
            raise RuntimeError("a bug")

    got: list[Message] = []

    class Sink:
        def deliver(self, message: Message) -> None:
            got.append(message)

    hub, message = Hub(), Message("t", "x", 1, "e", 0.0)
    hub.add("t", Broken())
    hub.add("t", Sink())
    assert hub.broadcast(message) == 2
    assert got == [message]


def test_settings_holding_invalid_text_are_a_system_error() -> None:
    settings = {"API_KEYS": {"key-\udcff-0123456789": ["*"]}, "TOPICS": {"a\ud800*": {}}}
    assert list(invalid_strings(settings, "S")) == ["S['API_KEYS'] (a key)", "S['TOPICS'] (a key)"]
    with override_settings(MEGAPHONE=settings):
        errors = [e for e in run_checks() if e.id == "megaphone.E042"]
    assert len(errors) == 2
    assert "MEGAPHONE['API_KEYS']" in errors[0].msg and "MEGAPHONE['TOPICS']" in errors[1].msg
    with override_settings(MEGAPHONE={"API_KEYS": ["fine-é-0123456789abcdef"]}):
        assert not [e for e in run_checks() if e.id == "megaphone.E042"]
