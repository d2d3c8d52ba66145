"""The OpenAPI 3.1 description of the HTTP API, served at ``<prefix>/openapi.json``.

Generated: ``components.schemas`` are the structs of :mod:`megaphone.api.schemas` (by
:func:`msgspec.json.schema_components`, so every limit is the one the views enforce), the history
parameters are :class:`~megaphone.api.schemas.HistoryQuery`'s fields, and the error codes of each
status come from :data:`megaphone.api.errors.STATUS`. What is written here is what no struct
says: the routes, what each answers, and the words.
"""

from __future__ import annotations

from typing import Any

import msgspec

from megaphone import __version__
from megaphone.api import schemas
from megaphone.api.errors import STATUS

_REF = "#/components/schemas/{name}"

#: The error responses, by status: their name in ``components.responses`` and what they mean.
ERROR_RESPONSES = {
    400: ("BadRequest", "The body, a field or a parameter is not valid."),
    401: ("Unauthorized", "No API key, or one that is not valid."),
    403: ("Forbidden", "This API key may not use this topic (or order users)."),
    404: ("NotFound", "No such route, or presence is not kept on this topic."),
    405: ("MethodNotAllowed", "The route does not take this method (see `Allow`)."),
    413: ("TooLarge", "The body, a message or the batch is too large."),
    429: ("RateLimited", "Over this key's rate limit; retry after `Retry-After` seconds."),
    501: ("NotImplemented", "The backend keeps no presence."),
    503: ("Unavailable", "The backend is unavailable; retry later (with the same msg_id)."),
}
_HEADERS = {
    "RateLimited": ("Retry-After", "Seconds to wait.", "integer"),
    "Unauthorized": ("WWW-Authenticate", "The scheme: Bearer.", "string"),
    "MethodNotAllowed": ("Allow", "The methods the route takes.", "string"),
}


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json(struct: type[msgspec.Struct], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_RESPONSES[s][0]}"} for s in statuses}


def _codes(status: int) -> list[str]:
    return sorted(code for code, code_status in STATUS.items() if code_status == status)


def _body(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(struct)}}}


def _components() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The schemas, the history query parameters, and the schema of a topic (a path parameter)."""
    _, components = msgspec.json.schema_components(
        (*schemas.COMPONENTS, schemas.HistoryQuery), ref_template=_REF
    )
    query = components.pop("HistoryQuery")
    parameters = []
    for name, schema in query["properties"].items():
        described = dict(schema)
        description = described.pop("description")
        if described.get("default", 0) is None:  # optional: absent, never null, in a query
            del described["default"]
            (described,) = (s for s in described.pop("anyOf") if s != {"type": "null"})
        parameters.append(
            {"name": name, "in": "query", "description": description, "schema": described}
        )
    return components, parameters, components["PublishRequest"]["properties"]["topic"]


def openapi_document(server_url: str = "/api/") -> dict[str, Any]:
    """The document, with ``server_url`` (the API's prefix) as its server."""
    components, history_parameters, topic_schema = _components()
    responses: dict[str, Any] = {}
    for status, (name, description) in ERROR_RESPONSES.items():
        responses[name] = {
            "description": f"{description} Codes: {', '.join(_codes(status))}.",
            "content": {
                "application/json": {
                    "schema": _ref(schemas.Error),
                    "example": {"error": {"code": _codes(status)[0], "message": "..."}},
                }
            },
        }
        if name in _HEADERS:
            header, what, kind = _HEADERS[name]
            responses[name]["headers"] = {header: {"description": what, "schema": {"type": kind}}}
    topic_parameter = {
        "name": "topic",
        "in": "path",
        "required": True,
        "description": "The topic name.",
        "schema": topic_schema,
    }
    user_parameter = {
        "name": "user",
        "in": "path",
        "required": True,
        "description": "The user's primary key.",
        "schema": {"type": "string", "minLength": 1},
    }
    paths = {
        "/publish": {
            "post": {
                "operationId": "publish",
                "summary": "Publish one message",
                "requestBody": _body(schemas.PublishRequest),
                "responses": {
                    "200": _json(schemas.Position, "Accepted: the message's position."),
                    **_errors(400, 401, 403, 405, 413, 429, 503),
                },
            }
        },
        "/publish/batch": {
            "post": {
                "operationId": "publishBatch",
                "summary": "Publish several messages, in order",
                "description": "Every message is checked before the first is published. If "
                "the backend fails midway, the 503 lists those published in `results`.",
                "requestBody": _body(schemas.BatchRequest),
                "responses": {
                    "200": _json(schemas.BatchResponse, "Every message was accepted."),
                    **_errors(400, 401, 403, 405, 413, 429, 503),
                },
            }
        },
        "/topics": {
            "get": {
                "operationId": "listTopics",
                "summary": "Topics with subscribers, and how many",
                "responses": {
                    "200": _json(schemas.Topics, "The topics this key may use."),
                    **_errors(401, 405, 429, 503),
                },
            }
        },
        "/topics/{topic}/history": {
            "parameters": [topic_parameter],
            "get": {
                "operationId": "history",
                "summary": "A topic's messages after an offset",
                "parameters": history_parameters,
                "responses": {
                    "200": _json(schemas.History, "The messages, oldest first."),
                    **_errors(400, 401, 403, 405, 429, 503),
                },
            },
        },
        "/topics/{topic}/presence": {
            "parameters": [topic_parameter],
            "get": {
                "operationId": "presence",
                "summary": "The clients subscribed to a topic",
                "responses": {
                    "200": _json(schemas.Presence, "Every live presence entry."),
                    **_errors(400, 401, 403, 404, 405, 429, 501, 503),
                },
            },
        },
        "/users/{user}/disconnect": {
            "parameters": [user_parameter],
            "post": {
                "operationId": "disconnectUser",
                "summary": "Close every socket of a user, in every worker",
                "description": "The body is optional (default code 4410). Needs a key for every "
                "topic.",
                "requestBody": {**_body(schemas.DisconnectRequest), "required": False},
                "responses": {
                    "200": _json(schemas.Ordered, "Sent to every worker."),
                    **_errors(400, 401, 403, 405, 413, 429, 503),
                },
            },
        },
        "/users/{user}/unsubscribe": {
            "parameters": [user_parameter],
            "post": {
                "operationId": "unsubscribeUser",
                "summary": "End a user's subscriptions to a topic, in every worker",
                "description": "Protocol clients get `unsubscribed` with the reason as its "
                "code; raw clients of the topic are closed with 4403. Needs a key for every "
                "topic.",
                "requestBody": _body(schemas.UnsubscribeRequest),
                "responses": {
                    "200": _json(schemas.Ordered, "Sent to every worker."),
                    **_errors(400, 401, 403, 405, 413, 429, 503),
                },
            },
        },
        "/users/{user}/recheck": {
            "parameters": [user_parameter],
            "post": {
                "operationId": "recheckUser",
                "summary": "Re-check a user's live subscriptions against the topic policy",
                "description": "Each connection reloads the user and ends, with `unsubscribed` "
                "code `revoked`, the subscriptions the policy now refuses (4401 for a user "
                "gone or inactive). Needs a key for every topic.",
                "responses": {
                    "200": _json(schemas.Ordered, "Sent to every worker."),
                    **_errors(401, 403, 405, 429, 503),
                },
            },
        },
        "/token": {
            "get": {
                "operationId": "connectionToken",
                "summary": "A connection token for the session's user",
                "description": "For WebSocket clients without the session cookie: connect with "
                "`?token=<token>`. The socket closes with 4401 when the token expires or the "
                "user logs out.",
                "security": [{"session": []}],
                "responses": {
                    "200": _json(schemas.Token, "A signed token for the session's user."),
                    **_errors(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "The OpenAPI 3.1 document."}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Megaphone HTTP API",
            "version": __version__,
            "description": "Publish to Megaphone topics and read their history and presence "
            "from servers and scripts. See docs/http-api.md.",
        },
        "servers": [{"url": server_url}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": responses,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A key from MEGAPHONE['API_KEYS'].",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "sessionid",
                    "description": "A logged-in Django session (SESSION_COOKIE_NAME).",
                },
            },
        },
    }
