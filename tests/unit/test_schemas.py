"""Tier 1: one declaration per boundary. The OpenAPI document is generated from the HTTP API's
structs and its limits are the code's; the error codes of the protocol and of the HTTP API are
the ones their documents list, with the same statuses; limits enforced at the wire are the
declared ones, exactly (the last value allowed passes, the next is refused)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from megaphone.api.errors import STATUS
from megaphone.api.openapi import openapi_document
from megaphone.core.message import MAX_MSG_ID_LENGTH
from megaphone.core.topics import MAX_TOPIC_LENGTH, TOPIC_PATTERN
from megaphone.protocol.schema import (
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_INT_ID,
    OPS,
    Code,
    ProtocolError,
    parse,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_openapi_document_validates() -> None:
    from openapi_spec_validator import validate

    validate(openapi_document())


def test_the_openapi_documents_limits_are_the_codes() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    publish = schemas["PublishRequest"]
    topic = publish["properties"]["topic"]
    assert (topic["minLength"], topic["maxLength"]) == (1, MAX_TOPIC_LENGTH)
    assert topic["pattern"] == TOPIC_PATTERN
    (msg_id, _null) = publish["properties"]["msg_id"]["anyOf"]
    assert (msg_id["minLength"], msg_id["maxLength"]) == (1, MAX_MSG_ID_LENGTH)
    assert publish["required"] == ["topic", "data"] and publish["additionalProperties"] is False
    assert schemas["BatchRequest"]["properties"]["messages"]["minItems"] == 1
    history = document["paths"]["/topics/{topic}/history"]
    parameters = {p["name"]: p["schema"] for p in history["get"]["parameters"]}
    assert parameters["since"]["maximum"] == MAX_INT_ID
    assert (parameters["limit"]["maximum"], parameters["limit"]["default"]) == (
        MAX_HISTORY_LIMIT,
        100,
    )
    assert parameters["epoch"] == {"type": "string"}
    assert history["parameters"][0]["schema"] == topic
    detail = schemas["Error"]["properties"]["error"]["$ref"].rpartition("/")[2]
    assert schemas[detail]["properties"]["code"]["enum"] == sorted(STATUS)


def test_every_http_error_code_is_documented_with_its_status() -> None:
    rows = re.findall(r"^\| (\d{3}) \| `(\w+)` \|", (DOCS / "http-api.md").read_text(), re.M)
    assert {code: int(status) for status, code in rows} == STATUS


def test_every_protocol_error_code_is_documented() -> None:
    text = (DOCS / "protocol.md").read_text()
    table = text[text.index("## Error codes") :]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    codes = {value for name, value in vars(Code).items() if name.isupper()}
    assert documented == codes


def test_the_ops_are_the_documented_ones() -> None:
    assert set(OPS) == {"subscribe", "unsubscribe", "publish", "history", "presence", "ping"}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def refusal(text: str) -> str:
    with pytest.raises(ProtocolError) as raised:
        parse(text)
    return raised.value.code


@pytest.mark.parametrize(
    ("field", "limit", "code"),
    [
        ("id", MAX_ID_LENGTH, Code.TOO_LARGE),
        ("msg_id", MAX_MSG_ID_LENGTH, Code.TOO_LARGE),
        ("topic", MAX_TOPIC_LENGTH, Code.INVALID_TOPIC),
    ],
)
def test_protocol_string_limits_are_exact(field: str, limit: int, code: str) -> None:
    fields = {"op": "publish", "topic": "t", "data": 1}
    parse(frame(**{**fields, field: "a" * limit}))
    assert refusal(frame(**{**fields, field: "a" * (limit + 1)})) == code


@pytest.mark.parametrize("msg_id", ["", "a\x00b", "tab\there", "\x85"])
def test_a_protocol_msg_id_is_never_empty_nor_holds_a_control_character(msg_id: str) -> None:
    assert refusal(frame(op="publish", topic="t", data=1, msg_id=msg_id)) == Code.BAD_REQUEST


@pytest.mark.parametrize(
    ("op", "field", "limit"),
    [("ping", "id", MAX_INT_ID), ("history", "since", MAX_INT_ID), ("history", "limit", 1000)],
)
def test_protocol_integer_limits_are_exact(op: str, field: str, limit: int) -> None:
    parse(frame(op=op, topic="t", **{field: limit}))
    parse(frame(op=op, topic="t", **{field: 0}))
    assert refusal(frame(op=op, topic="t", **{field: limit + 1})) == Code.BAD_REQUEST
    assert refusal(frame(op=op, topic="t", **{field: -1})) == Code.BAD_REQUEST


def test_a_topic_with_a_trailing_newline_is_refused() -> None:
    # JSON Schema patterns search, and "$" matches before a final newline: the whole name must.
    assert refusal(frame(op="subscribe", topic="news\n")) == Code.INVALID_TOPIC


def test_the_error_code_does_not_depend_on_the_order_of_the_fields() -> None:
    long_id = "x" * (MAX_ID_LENGTH + 1)
    keys_out_of_order = '{"topic": 5, "op": "subscribe", "id": "' + long_id + '"}'
    assert refusal(keys_out_of_order) == Code.TOO_LARGE
    assert refusal('{"topic": 5, "id": 3, "op": "fly"}') == Code.UNKNOWN_OP
    with pytest.raises(ProtocolError) as raised:
        parse('{"since": {"offset": -1, "epoch": "e"}, "topic": "$x", "op": "subscribe", "id": 4}')
    assert (raised.value.code, raised.value.id) == (Code.INVALID_TOPIC, 4)  # topic first
