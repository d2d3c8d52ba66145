"""The OpenAPI 3.1 description of the HTTP API, served at ``<prefix>/openapi.json``.

Written by hand, next to :mod:`megaphone.api.views`; a test validates it and checks that every
route and error code of the API appears in it. Keep the three (code, this, docs/http-api.md) in
step.
"""

from __future__ import annotations

from typing import Any

from megaphone import __version__
from megaphone.api.views import STATUS
from megaphone.core.topics import MAX_TOPIC_LENGTH
from megaphone.protocol.schema import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_INT_ID


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    names = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        413: "TooLarge",
        429: "RateLimited",
        501: "NotImplemented",
        503: "Unavailable",
    }
    return {str(s): {"$ref": f"#/components/responses/{names[s]}"} for s in statuses}


def _codes(status: int) -> list[str]:
    return sorted(code for code, code_status in STATUS.items() if code_status == status)


TOPIC_PARAMETER = {
    "name": "topic",
    "in": "path",
    "required": True,
    "description": "The topic name.",
    "schema": _ref("Topic"),
}


def openapi_document(server_url: str = "/api/") -> dict[str, Any]:
    """The document, with ``server_url`` (the API's prefix) as its server."""
    error_response = {
        400: ("BadRequest", "The body, a field or a parameter is not valid."),
        401: ("Unauthorized", "No API key, or one that is not valid."),
        403: ("Forbidden", "This API key may not use this topic."),
        404: ("NotFound", "No such route, or presence is not kept on this topic."),
        405: ("MethodNotAllowed", "The route does not take this method (see `Allow`)."),
        413: ("TooLarge", "The body, a message or the batch is too large."),
        429: ("RateLimited", "Over this key's rate limit; retry after `Retry-After` seconds."),
        501: ("NotImplemented", "The backend keeps no presence."),
        503: ("Unavailable", "The backend is unavailable; retry later (with the same msg_id)."),
    }
    responses: dict[str, Any] = {}
    for status, (name, description) in error_response.items():
        responses[name] = {
            "description": f"{description} Codes: {', '.join(_codes(status))}.",
            "content": {
                "application/json": {
                    "schema": _ref("Error"),
                    "example": {"error": {"code": _codes(status)[0], "message": "..."}},
                }
            },
        }
    responses["RateLimited"]["headers"] = {
        "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
    }
    responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"description": "The scheme: Bearer.", "schema": {"type": "string"}}
    }
    responses["MethodNotAllowed"]["headers"] = {
        "Allow": {"description": "The methods the route takes.", "schema": {"type": "string"}}
    }

    schemas: dict[str, Any] = {
        "Topic": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TOPIC_LENGTH,
            "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.:@=-]*$",
            "examples": ["orders", "chat.room-42", "user:17"],
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": sorted(STATUS)},
                        "message": {"type": "string"},
                    },
                },
                "results": {
                    "description": "Batch only: the messages published before the failure.",
                    "type": "array",
                    "items": _ref("Position"),
                },
            },
        },
        "PublishRequest": {
            "type": "object",
            "required": ["topic", "data"],
            "additionalProperties": False,
            "properties": {
                "topic": _ref("Topic"),
                "data": {
                    "description": "A string is sent as text; any other JSON value as its JSON "
                    "text (protocol clients receive the value); with `binary`, base64 bytes."
                },
                "binary": {"type": "boolean", "default": False},
                "msg_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": "Idempotency key: a retry with the same id on the same "
                    "topic returns the first message's position and publishes nothing.",
                },
            },
            "examples": [{"topic": "orders", "data": {"id": 17, "status": "paid"}}],
        },
        "BatchRequest": {
            "type": "object",
            "required": ["messages"],
            "additionalProperties": False,
            "properties": {
                "messages": {"type": "array", "minItems": 1, "items": _ref("PublishRequest")}
            },
        },
        "Position": {
            "type": "object",
            "required": ["topic", "offset", "epoch", "time"],
            "properties": {
                "topic": _ref("Topic"),
                "offset": {"type": "integer", "minimum": 1},
                "epoch": {"type": "string"},
                "time": {"type": "number", "description": "Accepted at (Unix seconds)."},
            },
        },
        "BatchResponse": {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": _ref("Position")}},
        },
        "Message": {
            "description": "A message, as the protocol's `message` frame.",
            "type": "object",
            "required": ["type", "topic", "offset", "epoch", "data"],
            "properties": {
                "type": {"const": "message"},
                "topic": _ref("Topic"),
                "offset": {"type": "integer"},
                "epoch": {"type": "string"},
                "data": {"description": "The text, the JSON value, or base64 when `binary`."},
                "binary": {"type": "boolean"},
            },
        },
        "History": {
            "type": "object",
            "required": ["topic", "offset", "epoch", "complete", "messages"],
            "properties": {
                "topic": _ref("Topic"),
                "offset": {"type": "integer", "description": "The topic's latest offset."},
                "epoch": {"type": "string"},
                "complete": {
                    "type": "boolean",
                    "description": "False when messages after `since` were trimmed from "
                    "history, or `epoch` was not the topic's.",
                },
                "messages": {"type": "array", "items": _ref("Message")},
            },
        },
        "Presence": {
            "type": "object",
            "required": ["topic", "count", "clients"],
            "properties": {
                "topic": _ref("Topic"),
                "count": {"type": "integer"},
                "clients": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "client": {"type": "string"},
                            "user": {"type": ["string", "null"]},
                            "info": {"type": ["object", "null"]},
                        },
                    },
                },
            },
        },
        "Topics": {
            "type": "object",
            "required": ["scope", "topics"],
            "properties": {
                "scope": {
                    "enum": ["process", "cluster"],
                    "description": "`process`: counts of the worker that answered (complete "
                    "with one worker); `cluster`: of every process (the backend counts).",
                },
                "topics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["topic", "subscribers"],
                        "properties": {
                            "topic": _ref("Topic"),
                            "subscribers": {"type": "integer"},
                        },
                    },
                },
            },
        },
    }

    def integer(name: str, description: str, default: int, maximum: int) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "description": description,
            "schema": {"type": "integer", "minimum": 0, "maximum": maximum, "default": default},
        }

    paths = {
        "/publish": {
            "post": {
                "operationId": "publish",
                "summary": "Publish one message",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PublishRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Position"), "Accepted: the message's position."),
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
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    "200": _json(_ref("BatchResponse"), "Every message was accepted."),
                    **_errors(400, 401, 403, 405, 413, 429, 503),
                },
            }
        },
        "/topics": {
            "get": {
                "operationId": "listTopics",
                "summary": "Topics with subscribers, and how many",
                "responses": {
                    "200": _json(_ref("Topics"), "The topics this key may use."),
                    **_errors(401, 405, 429, 503),
                },
            }
        },
        "/topics/{topic}/history": {
            "parameters": [TOPIC_PARAMETER],
            "get": {
                "operationId": "history",
                "summary": "A topic's messages after an offset",
                "parameters": [
                    integer("since", "Messages with an offset above this.", 0, MAX_INT_ID),
                    integer(
                        "limit", "At most this many.", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT
                    ),
                    {
                        "name": "epoch",
                        "in": "query",
                        "description": "The epoch `since` belongs to; if it is not the topic's, "
                        "the history is returned from its start with `complete: false`.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _json(_ref("History"), "The messages, oldest first."),
                    **_errors(400, 401, 403, 405, 429, 503),
                },
            },
        },
        "/topics/{topic}/presence": {
            "parameters": [TOPIC_PARAMETER],
            "get": {
                "operationId": "presence",
                "summary": "The clients subscribed to a topic",
                "responses": {
                    "200": _json(_ref("Presence"), "Every live presence entry."),
                    **_errors(400, 401, 403, 404, 405, 429, 501, 503),
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
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["token", "expires_in"],
                            "properties": {
                                "token": {"type": "string"},
                                "expires_in": {"type": "number", "description": "Seconds."},
                            },
                        },
                        "A signed token for the session's user.",
                    ),
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
            "schemas": schemas,
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
