"""Tier 2: the HTTP API in-process (Django's AsyncClient), every success and every error status."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, override_settings
from django.urls import get_resolver

from example.asgi import application
from megaphone.api.openapi import openapi_document
from megaphone.api.views import STATUS
from megaphone.backends import BackendUnavailable, PresenceStore
from megaphone.backends.memory import MemoryBackend
from megaphone.core.message import Message
from megaphone.testing import unique
from tests.conftest import timeout

KEY = "test-key-0123456789"
ORDERS_KEY = "orders-only-key"
SETTINGS = {"API_KEYS": {KEY: ["*"], ORDERS_KEY: ["orders.*"]}, "API_RATE_LIMIT": None}


class ApiClient:
    """Django's AsyncClient sending ``Authorization: Bearer <key>`` on every request (its own
    ``headers=`` default does not reach an ASGI request as a header)."""

    def __init__(self, key: str | None = KEY) -> None:
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = AsyncClient()

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.client, method)

        async def request(*args: Any, **kwargs: Any) -> Any:
            return await call(
                *args, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs
            )

        return request


def client(key: str | None = KEY) -> ApiClient:
    return ApiClient(key)


async def post(path: str, body: Any, key: str | None = KEY) -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await client(key).post(path, data, content_type="application/json")


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    assert STATUS[body["error"]["code"]] == status
    return str(body["error"]["code"])


@pytest.fixture(autouse=True)
def api_keys() -> Iterator[None]:
    with override_settings(MEGAPHONE=SETTINGS):
        yield


async def subscribe(topic: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/broadcast/{topic}/")
    connected, code = await communicator.connect(timeout=timeout(5))
    assert connected, code
    return communicator


# Successes ----------------------------------------------------------------------------------


async def test_publish_reaches_subscribers_and_answers_the_position() -> None:
    topic = unique("api")
    subscriber = await subscribe(topic)
    response = await post("/api/publish", {"topic": topic, "data": "hello"})
    assert response.status_code == 200
    position = response.json()
    assert position["topic"] == topic and position["offset"] == 1
    assert set(position) == {"topic", "offset", "epoch", "time"}
    assert await subscriber.receive_from(timeout=timeout(2)) == "hello"
    await post("/api/publish", {"topic": topic, "data": {"id": 17}})
    assert await subscriber.receive_from(timeout=timeout(2)) == '{"id":17}'
    raw = base64.b64encode(b"\x00\xff").decode()
    await post("/api/publish", {"topic": topic, "data": raw, "binary": True})
    assert (await subscriber.receive_output(timeout=timeout(2)))["bytes"] == b"\x00\xff"
    await subscriber.disconnect()


async def test_msg_id_makes_a_retry_safe() -> None:
    topic = unique("api")
    body = {"topic": topic, "data": "once", "msg_id": "req-1"}
    first, again = (
        (await post("/api/publish", body)).json(),
        (await post("/api/publish", body)).json(),
    )
    assert first["offset"] == again["offset"] == 1


async def test_batch_publishes_in_order() -> None:
    a, b = unique("api"), unique("api")
    subscriber = await subscribe(a)
    messages = [{"topic": a, "data": f"m{i}"} for i in range(5)] + [{"topic": b, "data": [1]}]
    response = await post("/api/publish/batch", {"messages": messages})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["topic"], r["offset"]) for r in results] == [(a, i) for i in range(1, 6)] + [(b, 1)]
    assert [await subscriber.receive_from(timeout=timeout(2)) for _ in range(5)] == [
        f"m{i}" for i in range(5)
    ]
    await subscriber.disconnect()


async def test_history_has_the_protocol_message_shape() -> None:
    topic = unique("api")
    for data in ("one", {"two": 2}, [3]):
        await post("/api/publish", {"topic": topic, "data": data})
    await post("/api/publish", {"topic": topic, "data": "AAE=", "binary": True})
    response = await client().get(f"/api/topics/{topic}/history", {"since": 1, "limit": 2})
    assert response.status_code == 200
    page = response.json()
    assert (page["topic"], page["offset"], page["complete"]) == (topic, 4, True)
    assert [(m["type"], m["offset"], m["data"]) for m in page["messages"]] == [
        ("message", 2, {"two": 2}),
        ("message", 3, [3]),
    ]
    everything = (await client().get(f"/api/topics/{topic}/history")).json()
    assert everything["messages"][-1]["binary"] is True
    assert everything["messages"][-1]["data"] == "AAE="
    stale = (await client().get(f"/api/topics/{topic}/history?since=3&epoch=old")).json()
    assert stale["complete"] is False and len(stale["messages"]) == 4


async def test_topics_lists_subscribed_topics_with_counts() -> None:
    topic = unique("orders.t")
    subscribers = [await subscribe(topic) for _ in range(2)]
    body = (await client().get("/api/topics")).json()
    assert body["scope"] in ("process", "cluster")
    assert {"topic": topic, "subscribers": 2} in body["topics"]
    other = unique("other")
    extra = await subscribe(other)
    limited = (await client(ORDERS_KEY).get("/api/topics")).json()["topics"]
    assert {"topic": topic, "subscribers": 2} in limited
    assert all(t["topic"].startswith("orders.") for t in limited)
    for subscriber in [*subscribers, extra]:
        await subscriber.disconnect()


@override_settings(MEGAPHONE={**SETTINGS, "PRESENCE": True})
async def test_presence_lists_protocol_subscribers() -> None:
    topic = unique("api")
    ws = WebsocketCommunicator(application, "/ws/connect/")
    assert (await ws.connect(timeout=timeout(5)))[0]
    await ws.receive_from(timeout=timeout(2))  # connected
    await ws.send_to(text_data=json.dumps({"id": 1, "op": "subscribe", "topic": topic}))
    assert json.loads(await ws.receive_from(timeout=timeout(2)))["type"] == "reply"
    body = (await client().get(f"/api/topics/{topic}/presence")).json()
    assert body["topic"] == topic and body["count"] == 1 and len(body["clients"]) == 1
    await ws.disconnect()


async def test_openapi_document_is_served_without_a_key_and_validates() -> None:
    from openapi_spec_validator import validate

    response = await client(None).get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://testserver/api/"}]
    assert document == json.loads(json.dumps(openapi_document("http://testserver/api/")))


def test_openapi_document_lists_every_route_and_error_code() -> None:
    document = openapi_document()
    resolver = get_resolver("megaphone.api_urls")
    routes = {
        "/" + re.sub(r"<str:(\w+)>", r"{\1}", str(p.pattern))
        for p in resolver.url_patterns
        if p.name
    }
    assert routes == set(document["paths"])
    schemas = document["components"]["schemas"]
    detail = schemas["Error"]["properties"]["error"]["$ref"].rpartition("/")[2]
    assert set(schemas[detail]["properties"]["code"]["enum"]) == set(STATUS)


# Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "code"), [(None, "missing_api_key"), ("wrong", "invalid_api_key")])
async def test_a_missing_or_bad_key_is_refused_with_401(key: str | None, code: str) -> None:
    topic = unique("api")
    response = await post("/api/publish", {"topic": topic, "data": "x"}, key=key)
    assert error(response, 401) == code
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error(await client(key).get("/api/topics"), 401) == code
    page = (await client().get(f"/api/topics/{topic}/history")).json()
    assert page["messages"] == []  # nothing was published


async def test_other_schemes_and_no_configured_keys_are_refused() -> None:
    basic = await AsyncClient().get("/api/topics", headers={"Authorization": f"Basic {KEY}"})
    assert error(basic, 401) == "missing_api_key"
    with override_settings(MEGAPHONE={}):
        response = await client().get("/api/topics")
        assert error(response, 401) == "invalid_api_key"
        assert "no API keys" in response.json()["error"]["message"]


async def test_a_key_limited_to_some_topics_gets_403_on_others() -> None:
    response = await post("/api/publish", {"topic": "orders.1", "data": "x"}, key=ORDERS_KEY)
    assert response.status_code == 200
    assert error(await post("/api/publish", {"topic": "x", "data": 1}, ORDERS_KEY), 403) == (
        "forbidden_topic"
    )
    batch = {"messages": [{"topic": "orders.2", "data": 1}, {"topic": "private", "data": 2}]}
    assert error(await post("/api/publish/batch", batch, ORDERS_KEY), 403) == "forbidden_topic"
    assert (await client().get("/api/topics/orders.2/history")).json()["offset"] == 0
    assert error(await client(ORDERS_KEY).get("/api/topics/private/history"), 403)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ([1, 2], "invalid_request"),
        ({"topic": "t"}, "invalid_request"),
        ({"topic": "t", "data": "x", "extra": 1}, "invalid_request"),
        ({"topic": "t", "data": 1, "binary": "yes"}, "invalid_request"),
        ({"topic": "t", "data": "@@@", "binary": True}, "invalid_request"),
        ({"topic": "t", "data": 1, "binary": True}, "invalid_request"),
        ({"topic": "t", "data": "x", "msg_id": 5}, "invalid_request"),
        ({"topic": "t", "data": "x", "msg_id": ""}, "invalid_request"),
        ({"topic": "t", "data": "x", "msg_id": "a\u0000b"}, "invalid_request"),  # SQL refuses
        ({"topic": "t", "data": "x", "msg_id": "line\nbreak"}, "invalid_request"),
        ({"topic": "bad topic", "data": "x"}, "invalid_topic"),
        ({"data": "x"}, "invalid_topic"),
    ],
)
async def test_bad_bodies_get_400(body: Any, code: str) -> None:
    assert error(await post("/api/publish", body), 400) == code


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_request"),
        ({"messages": []}, "invalid_request"),
        ({"messages": "x"}, "invalid_request"),
        ({"messages": [{"topic": "t", "data": 1}], "other": 1}, "invalid_request"),
        ({"messages": [{"topic": "t", "data": 1}, {"topic": "$x", "data": 1}]}, "invalid_topic"),
    ],
)
async def test_bad_batches_get_400_and_publish_nothing(body: Any, code: str) -> None:
    response = await post("/api/publish/batch", body)
    assert error(response, 400) == code
    if code == "invalid_topic":
        assert "messages[1]" in response.json()["error"]["message"]
        assert (await client().get("/api/topics/t/history")).json()["messages"] == []


@pytest.mark.parametrize("query", ["since=-1", "since=x", "limit=1001", "limit=-5"])
async def test_bad_history_parameters_get_400(query: str) -> None:
    assert error(await client().get(f"/api/topics/t/history?{query}"), 400) == ("invalid_parameter")


async def test_bad_topic_in_path_gets_400() -> None:
    assert error(await client().get("/api/topics/-bad/history"), 400) == "invalid_topic"
    assert error(await client().get("/api/topics/-bad/presence"), 400) == "invalid_topic"


@pytest.mark.parametrize("method", ["get", "post", "delete"])
async def test_unknown_routes_get_a_json_404(method: str) -> None:
    response = await getattr(client(), method)("/api/nothing/here")
    assert error(response, 404) == "not_found"


async def test_presence_on_a_topic_without_presence_is_404() -> None:
    assert error(await client().get("/api/topics/t/presence"), 404) == "presence_off"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", "/api/publish", "POST"),
        ("put", "/api/publish/batch", "POST"),
        ("post", "/api/topics", "GET, HEAD"),
        ("post", "/api/topics/t/history", "GET, HEAD"),
        ("delete", "/api/topics/t/presence", "GET, HEAD"),
        ("post", "/api/openapi.json", "GET, HEAD"),
    ],
)
async def test_wrong_methods_get_405_with_allow(method: str, path: str, allow: str) -> None:
    response = await getattr(client(), method)(path)
    assert error(response, 405) == "method_not_allowed"
    assert response["Allow"] == allow


@override_settings(
    MEGAPHONE={**SETTINGS, "MAX_MESSAGE_SIZE": 100, "API_BATCH_MAX": 3, "API_MAX_BODY_SIZE": 1000}
)
async def test_too_large_gets_413() -> None:
    topic = unique("api")
    assert (await post("/api/publish", {"topic": topic, "data": "x" * 100})).status_code == 200
    big = await post("/api/publish", {"topic": topic, "data": "é" * 51})
    assert error(big, 413) == "message_too_large"
    body = await post("/api/publish", {"topic": topic, "data": "x" * 2000})
    assert error(body, 413) == "body_too_large"
    batch = {"messages": [{"topic": topic, "data": i} for i in range(4)]}
    assert error(await post("/api/publish/batch", batch), 413) == "batch_too_large"
    assert (await client().get(f"/api/topics/{topic}/history")).json()["offset"] == 1


@override_settings(MEGAPHONE={**SETTINGS, "API_RATE_LIMIT": 0.5, "API_RATE_BURST": 3})
async def test_over_the_rate_limit_gets_429_with_retry_after() -> None:
    topic = unique("api")
    batch = {"messages": [{"topic": topic, "data": i} for i in range(2)]}
    assert (await post("/api/publish/batch", batch)).status_code == 200  # 2 tokens of 3
    assert (await post("/api/publish", {"topic": topic, "data": "x"})).status_code == 200
    response = await post("/api/publish", {"topic": topic, "data": "y"})
    assert error(response, 429) == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    # Another key has its own bucket.
    other = await post("/api/publish", {"topic": "orders.1", "data": "z"}, key=ORDERS_KEY)
    assert other.status_code == 200
    assert (await client().get(f"/api/topics/{topic}/history")).status_code == 429


class FailingBackend(MemoryBackend):
    """``failing://``: publishing on ``fail*`` topics raises; presence is not kept at all."""

    @property
    def presence_store(self) -> PresenceStore | None:
        return None

    async def publish(self, topic: str, payload: str | bytes, **kwargs: Any) -> Message:
        if topic.startswith("fail"):
            raise BackendUnavailable("connection refused (test)")
        return await super().publish(topic, payload, **kwargs)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> Any:
        if topic.startswith("fail"):
            raise BackendUnavailable("connection refused (test)")
        return await super().history(topic, since, limit)


@pytest.fixture
def failing_backend() -> Iterator[None]:
    backend = f"{__name__}:FailingBackend"  # a backend class named by its path
    with override_settings(MEGAPHONE={**SETTINGS, "BACKEND": backend, "PRESENCE": True}):
        yield


async def test_backend_unavailable_gets_503(failing_backend: None) -> None:
    response = await post("/api/publish", {"topic": "fail-1", "data": "x"})
    assert error(response, 503) == "backend_unavailable"
    assert error(await client().get("/api/topics/fail-1/history"), 503) == "backend_unavailable"
    ok = unique("api")
    batch = {
        "messages": [
            {"topic": ok, "data": 1},
            {"topic": "fail-2", "data": 2},
            {"topic": ok, "data": 3},
        ]
    }
    response = await post("/api/publish/batch", batch)
    assert error(response, 503) == "backend_unavailable"
    assert [r["offset"] for r in response.json()["results"]] == [1]  # the one that went out


async def test_presence_on_a_backend_without_presence_is_501(failing_backend: None) -> None:
    assert error(await client().get("/api/topics/t/presence"), 501) == "presence_unsupported"


async def test_orders_to_a_users_connections_answer_and_refuse_as_documented() -> None:
    for path, body, order in (
        ("/api/users/42/disconnect", {}, "disconnect"),
        ("/api/users/42/disconnect", {"code": 1012}, "disconnect"),
        ("/api/users/42/unsubscribe", {"topic": "news", "reason": "muted"}, "unsubscribe"),
        ("/api/users/42/recheck", {}, "recheck"),
    ):
        response = await post(path, body)
        assert response.status_code == 200, response.content
        assert response.json() == {"user": "42", "order": order}
    empty = await client().post("/api/users/42/disconnect", "", content_type="application/json")
    assert empty.status_code == 200, empty.content
    assert error(await post("/api/users/42/recheck", {}, ORDERS_KEY), 403) == "forbidden_users"
    for path, body, code in (
        ("/api/users/42/disconnect", {"code": 1006}, "invalid_request"),
        ("/api/users/42/disconnect", {"code": "4410"}, "invalid_request"),
        ("/api/users/42/unsubscribe", {"topic": "news", "reason": "Not A Code"}, "invalid_request"),
        ("/api/users/42/unsubscribe", {"topic": "$user:1"}, "invalid_topic"),
        ("/api/users/42/unsubscribe", {"reason": "muted"}, "invalid_topic"),
        ("/api/users/42/unsubscribe", "not json", "invalid_json"),
    ):
        assert error(await post(path, body), 400) == code, (path, body)
