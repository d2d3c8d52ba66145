"""What Megaphone's uvicorn protocols take from uvicorn's internals, verified before serving.

:mod:`megaphone.server.uvicorn` subclasses two internal classes of uvicorn (its sans-I/O
WebSocket protocol and its httptools HTTP protocol), overrides some of their methods and reads or
replaces about twenty of their attributes. uvicorn does not promise to keep any of them, so the
supported range is declared in ``pyproject.toml`` and CI runs both of its ends. Outside that range
a release could rename one: the subclass would then fail at import or, worse, keep running with an
override that uvicorn never calls any more (say, no close for a client that stopped reading).

:func:`protocols` answers which protocol classes a server should run: Megaphone's where every
internal it relies on is there, uvicorn's stock protocol where one is not. It never raises.
:func:`problems` says what is missing; the system check ``megaphone.W060`` reports it once, at
start-up. The verification reads uvicorn's source (``inspect``): a method must still be a method of
the base class, an attribute must still be assigned by it (``self.name =``), and an object
Megaphone replaces with a lighter one (the received-events queue, the ``writable`` flag) must be
used by uvicorn only through the methods the replacement has.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class Contract:
    """What one Megaphone protocol class relies on in the uvicorn class it subclasses."""

    #: uvicorn's module and class that Megaphone's class subclasses.
    module: str
    base: str
    #: Megaphone's class, the way uvicorn's ``ws=`` / ``http=`` options take it.
    ours: str
    #: uvicorn's own name for the base protocol, run instead when the contract is broken.
    stock: str
    #: Methods Megaphone overrides or calls: each must be a method of the base class.
    methods: tuple[str, ...]
    #: Instance attributes Megaphone reads or replaces: each must be assigned by the base class.
    attributes: tuple[str, ...]
    #: Attributes Megaphone replaces with its own object, and the methods that object has: the
    #: base class may call no other method on them.
    replaced: dict[str, frozenset[str]] = field(default_factory=dict)
    #: What the server goes without when it falls back to the stock protocol.
    lost: str = ""


WEBSOCKET = Contract(
    module="uvicorn.protocols.websockets.websockets_sansio_impl",
    base="WebSocketsSansIOProtocol",
    ours="megaphone.server.uvicorn:WebSocketProtocol",
    stock="websockets-sansio",
    methods=(
        "data_received",
        "handle_close",
        "handle_connect",
        "handle_cont",
        "handle_parser_exception",
        "handle_ping",
        "keepalive_timeout",
        "on_task_complete",
        "receive",
        "resume_writing",
        "send",
        "send_receive_event_to_app",
    ),
    attributes=(
        "client",
        "close_sent",
        "close_timer",
        "config",
        "conn",
        "disconnected",
        "frames",
        "handshake_complete",
        "initial_response",
        "loop",
        "queue",
        "read_paused",
        "request",
        "response",
        "scope",
        "transport",
        "writable",
    ),
    replaced={
        "queue": frozenset({"put_nowait", "get", "empty"}),
        "writable": frozenset({"set", "clear", "is_set", "wait"}),
    },
    lost="the frame-once write path (megaphone.write_frame), the prompt close of a client that "
    "stopped reading, the bound on a fragmented message's buffer, the bounds on a client that "
    "floods it (received frames parsed in slices, unread pongs closed with 4408), a close "
    "between fragments answered as any close, one log line instead of a traceback per invalid "
    "UTF-8 message, and 4.8 KiB less per connection",
)

HTTP = Contract(
    module="uvicorn.protocols.http.httptools_impl",
    base="HttpToolsProtocol",
    ours="megaphone.server.uvicorn:HttpProtocol",
    stock="httptools",
    methods=("connection_made", "connection_lost", "on_message_begin", "on_headers_complete"),
    attributes=("client", "loop", "transport"),
    lost="HANDSHAKE_TIMEOUT (a silent socket or half a request head stays open) and the "
    "redaction of ?token= in uvicorn's request log",
)

#: The native transport's HTTP protocol (megaphone.server.native) takes WebSocket handshakes
#: over from uvicorn's HTTP protocol, reading what uvicorn's own upgrade reads. Not a fallback:
#: ``serve --transport native`` refuses to start without it.
NATIVE = Contract(
    module="uvicorn.protocols.http.httptools_impl",
    base="HttpToolsProtocol",
    ours="megaphone.server.native:NativeHttpProtocol",
    stock="httptools",
    methods=("handle_websocket_upgrade",),
    attributes=(
        "config",
        "connections",
        "root_path",
        "scheme",
        "scope",
        "server_state",
        "transport",
        "url",
    ),
)

CONTRACTS = (WEBSOCKET, HTTP)


def contract_problems(contract: Contract) -> list[str]:
    """What ``contract`` misses in the installed uvicorn; empty when it holds."""
    try:
        base = getattr(importlib.import_module(contract.module), contract.base)
        source = inspect.getsource(base)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        return [f"{contract.module}.{contract.base} cannot be read ({exc})"]
    missing = [
        f"method {name}()" for name in contract.methods if not callable(getattr(base, name, None))
    ]
    missing += [
        f"attribute {name}"
        for name in contract.attributes
        if not re.search(rf"\bself\.{name}\s*(:[^=\n]+)?=(?!=)", source)
    ]
    for name, offered in contract.replaced.items():
        used = set(re.findall(rf"\bself\.{name}\.(\w+)", source))
        missing += [
            f"{name}.{method}(), which Megaphone's {name} lacks"
            for method in sorted(used - offered)
        ]
    return [f"{contract.base}: {item}" for item in missing]


@functools.cache
def problems() -> dict[str, list[str]]:
    """What each broken contract misses in the installed uvicorn, by Megaphone's class (cached).

    Megaphone's two classes live in one module, which imports both base classes: when either
    cannot be imported, neither class can be, and both contracts count as broken."""
    found = {contract.ours: contract_problems(contract) for contract in CONTRACTS}
    if not all(_importable(contract) for contract in CONTRACTS):
        unimportable = "megaphone.server.uvicorn cannot be imported"
        found = {ours: missing or [unimportable] for ours, missing in found.items()}
    return {ours: missing for ours, missing in found.items() if missing}


def native_problems() -> list[str]:
    """What the native transport misses in the installed uvicorn (its contract, and the HTTP
    protocol it subclasses); empty when it can run."""
    return problems().get(HTTP.ours, []) + contract_problems(NATIVE)


def protocols() -> dict[str, str]:
    """uvicorn's ``ws`` and ``http`` options: Megaphone's protocol classes where their contract
    holds, uvicorn's stock protocols where it does not."""
    broken = problems()
    chosen = {}
    for option, contract in (("ws", WEBSOCKET), ("http", HTTP)):
        if contract.ours not in broken:
            chosen[option] = contract.ours
        else:  # an older uvicorn may lack the stock class too: then uvicorn picks one
            chosen[option] = contract.stock if _importable(contract) else "auto"
    return chosen


def _importable(contract: Contract) -> bool:
    try:
        return hasattr(importlib.import_module(contract.module), contract.base)
    except ImportError:
        return False
