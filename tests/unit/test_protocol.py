"""Tier 1: the JSON protocol's parsing and frame encoding, without sockets."""

from __future__ import annotations

import json

import pytest

from megaphone.core.message import Message
from megaphone.protocol.schema import (
    Code,
    History,
    Ping,
    Position,
    Presence,
    ProtocolError,
    Publish,
    Subscribe,
    Unsubscribe,
    error_frame,
    frame,
    history_reply,
    message_event,
    message_json,
    parse,
    reply_frame,
)


def test_every_op_parses_into_its_request() -> None:
    assert parse('{"op":"ping","id":1}') == Ping(1)
    assert parse('{"op":"subscribe","id":"a","topic":"news"}') == Subscribe("a", "news")
    assert parse(
        '{"op":"subscribe","id":2,"topic":"news","since":{"offset":7,"epoch":"e1"},"info":{"n":1}}'
    ) == Subscribe(2, "news", Position(7, "e1"), {"n": 1})
    assert parse('{"op":"unsubscribe","id":3,"topic":"news"}') == Unsubscribe(3, "news")
    assert parse('{"op":"history","id":4,"topic":"news","since":5,"limit":10}') == History(
        4, "news", 5, None, 10
    )
    assert parse('{"op":"presence","topic":"news"}') == Presence(None, "news")


def test_publish_maps_json_values_to_payloads() -> None:
    assert parse('{"op":"publish","topic":"t","data":"hi"}') == Publish(None, "t", "hi")
    assert parse('{"op":"publish","topic":"t","data":{"a":[1,2]},"msg_id":"m1"}') == Publish(
        None, "t", '{"a":[1,2]}', json=True, msg_id="m1"
    )
    assert parse('{"op":"publish","topic":"t","data":42}') == Publish(None, "t", "42", json=True)
    assert parse('{"op":"publish","topic":"t","data":null}') == Publish(
        None, "t", "null", json=True
    )
    assert parse('{"op":"publish","topic":"t","data":"AP8=","binary":true}') == Publish(
        None, "t", b"\x00\xff"
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", Code.BAD_REQUEST),
        ('{"op":"ping"', Code.BAD_REQUEST),
        ("[1,2]", Code.BAD_REQUEST),
        ('"ping"', Code.BAD_REQUEST),
        ("{}", Code.BAD_REQUEST),
        ('{"op":5}', Code.BAD_REQUEST),
        ('{"op":"fly"}', Code.UNKNOWN_OP),
        ('{"op":"ping","id":1.5}', Code.BAD_REQUEST),
        ('{"op":"ping","id":true}', Code.BAD_REQUEST),
        ('{"op":"ping","id":-1}', Code.BAD_REQUEST),
        ('{"op":"ping","id":' + "9" * 40 + "}", Code.BAD_REQUEST),
        ('{"op":"ping","id":"' + "x" * 65 + '"}', Code.TOO_LARGE),
        ('{"op":"ping","id":[1]}', Code.BAD_REQUEST),
        ('{"op":"subscribe"}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":5}', Code.INVALID_TOPIC),
        ('{"op":"subscribe","topic":"bad topic"}', Code.INVALID_TOPIC),
        ('{"op":"subscribe","topic":"$presence:x"}', Code.INVALID_TOPIC),
        ('{"op":"subscribe","topic":"' + "a" * 201 + '"}', Code.INVALID_TOPIC),
        ('{"op":"subscribe","topic":"t","since":5}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":"t","since":{"offset":"5","epoch":"e"}}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":"t","since":{"offset":-1,"epoch":"e"}}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":"t","since":{"offset":1}}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":"t","info":[1]}', Code.BAD_REQUEST),
        ('{"op":"subscribe","topic":"t","info":{"a":"' + "x" * 2000 + '"}}', Code.TOO_LARGE),
        ('{"op":"publish","topic":"t"}', Code.BAD_REQUEST),
        ('{"op":"publish","topic":"t","data":1,"msg_id":7}', Code.BAD_REQUEST),
        ('{"op":"publish","topic":"t","data":"!!","binary":true}', Code.BAD_REQUEST),
        ('{"op":"publish","topic":"t","data":1,"binary":"yes"}', Code.BAD_REQUEST),
        ('{"op":"publish","topic":"t","data":NaN}', Code.BAD_REQUEST),
        ('{"op":"history","topic":"t","limit":100000}', Code.BAD_REQUEST),
        ('{"op":"history","topic":"t","since":"0"}', Code.BAD_REQUEST),
        ("[" * 100000 + "]" * 100000, Code.BAD_REQUEST),
    ],
)
def test_malformed_frames_raise_a_protocol_error_with_a_stable_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(text)
    assert raised.value.code == code
    assert raised.value.message


def test_errors_keep_the_request_id_when_it_could_be_read() -> None:
    with pytest.raises(ProtocolError) as raised:
        parse('{"op":"fly","id":9}')
    assert raised.value.id == 9
    with pytest.raises(ProtocolError) as raised:
        parse('{"op":"subscribe","id":"x","topic":"$"}')
    assert raised.value.id == "x"


def message(payload: str | bytes, *, as_json: bool = False) -> Message:
    return Message("news", payload, 7, "ep", 0.0, json=as_json)


def test_message_frames_for_text_json_and_binary_payloads() -> None:
    assert json.loads(message_json(message("hé <b>"))) == {
        "type": "message",
        "topic": "news",
        "offset": 7,
        "epoch": "ep",
        "data": "hé <b>",
    }
    assert json.loads(message_json(message('{"a":1}', as_json=True)))["data"] == {"a": 1}
    assert json.loads(message_json(message('{"a":1}')))["data"] == '{"a":1}'
    binary = json.loads(message_json(message(b"\x00\xff")))
    assert binary["data"] == "AP8=" and binary["binary"] is True
    assert json.loads(message_json(message("")))["data"] == ""


def test_a_message_event_is_built_once_and_shared() -> None:
    msg = message("x")
    first = msg.encoded(message_event)
    assert first is msg.encoded(message_event)
    assert first == {"type": "websocket.send", "text": message_json(msg)}


def test_server_frames() -> None:
    assert json.loads(reply_frame(3, {"topic": "t"})) == {
        "type": "reply",
        "id": 3,
        "result": {"topic": "t"},
    }
    assert json.loads(error_frame(None, "bad_request", "nope")) == {
        "type": "error",
        "id": None,
        "code": "bad_request",
        "message": "nope",
    }
    assert json.loads(frame("pong", id=None)) == {"type": "pong"}
    messages = [Message("t", f"m{i}", i, "ep", 0.0) for i in (1, 2)]
    reply = json.loads(history_reply(4, {"topic": "t", "offset": 2}, messages))
    assert reply["id"] == 4 and reply["result"]["offset"] == 2
    assert [m["data"] for m in reply["result"]["messages"]] == ["m1", "m2"]
    assert json.loads(history_reply(5, {"topic": "t"}, []))["result"]["messages"] == []
