"""Tier 1: the contract between Megaphone's uvicorn protocols and uvicorn's internals
(megaphone.server.uvicorn_contract): verified against the installed uvicorn, kept complete
against the subclasses' source, and broken on purpose to see the fallback and its one warning."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from megaphone.checks import check_uvicorn_protocols
from megaphone.server import uvicorn_contract
from megaphone.server.uvicorn_contract import HTTP, NATIVE, WEBSOCKET, Contract, contract_problems
from megaphone.server.uvicorn_options import NativeUnavailable, uvicorn_options

SERVER = Path(uvicorn_contract.__file__).parent


@pytest.fixture(autouse=True)
def fresh_verification() -> Iterator[None]:
    uvicorn_contract.problems.cache_clear()
    yield
    uvicorn_contract.problems.cache_clear()


def test_the_installed_uvicorn_keeps_the_contract() -> None:
    assert uvicorn_contract.problems() == {}
    assert uvicorn_options()["ws"] == "megaphone.server.uvicorn:WebSocketProtocol"
    assert uvicorn_options()["http"] == "megaphone.server.uvicorn:HttpProtocol"
    assert check_uvicorn_protocols() == []


def class_body(name: str, module: str = "uvicorn.py") -> ast.ClassDef:
    tree = ast.parse((SERVER / module).read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


@pytest.mark.parametrize(
    ("subclass", "module", "contract"),
    [
        ("WebSocketProtocol", "uvicorn.py", WEBSOCKET),
        ("HttpProtocol", "uvicorn.py", HTTP),
        ("NativeHttpProtocol", "native.py", NATIVE),
    ],
)
def test_the_contract_declares_every_internal_the_subclass_touches(
    subclass: str, module: str, contract: Contract
) -> None:
    """A name the subclass uses on ``self`` and does not define itself is uvicorn's: the contract
    must list it, or a uvicorn without it would pass the verification and break at run time."""
    body = class_body(subclass, module)
    own = (
        {
            node.name
            for node in body.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        | {
            node.target.id
            for node in body.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        }
        | {
            target.id
            for node in body.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
    )
    used = {
        node.attr
        for node in ast.walk(body)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    declared = set(contract.methods) | set(contract.attributes)
    assert used - own - declared == set()
    base = getattr(__import__(contract.module, fromlist=[contract.base]), contract.base)
    overrides = {name for name in own if hasattr(base, name) and not name.startswith("__")}
    assert overrides - set(contract.methods) == set()


def test_a_missing_method_falls_back_to_the_stock_protocol_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(WebSocketsSansIOProtocol, "keepalive_timeout")
    assert contract_problems(WEBSOCKET) == ["WebSocketsSansIOProtocol: method keepalive_timeout()"]
    options = uvicorn_options()
    assert options["ws"] == "websockets-sansio"  # uvicorn's own
    assert options["http"] == "megaphone.server.uvicorn:HttpProtocol"  # its contract holds
    [warning] = check_uvicorn_protocols()
    assert warning.id == "megaphone.W060"
    assert "keepalive_timeout()" in warning.msg and "megaphone.write_frame" in warning.msg


def test_an_attribute_uvicorn_no_longer_assigns_is_found() -> None:
    contract = dataclasses.replace(WEBSOCKET, attributes=("queue", "renamed_in_a_new_release"))
    assert contract_problems(contract) == [
        "WebSocketsSansIOProtocol: attribute renamed_in_a_new_release"
    ]


def test_uvicorn_calling_a_method_megaphones_replacement_lacks_is_found() -> None:
    contract = dataclasses.replace(WEBSOCKET, replaced={"queue": frozenset({"put_nowait"})})
    assert contract_problems(contract) == [
        "WebSocketsSansIOProtocol: queue.empty(), which Megaphone's queue lacks",
        "WebSocketsSansIOProtocol: queue.get(), which Megaphone's queue lacks",
    ]


def test_a_uvicorn_without_the_base_class_serves_with_its_own_protocols(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn before 0.35 has no sans-I/O protocol: Megaphone's module cannot even be imported,
    so both of its classes give way, and uvicorn picks its WebSocket implementation itself."""
    gone = dataclasses.replace(WEBSOCKET, module="uvicorn.protocols.websockets.no_such_module")
    monkeypatch.setattr(uvicorn_contract, "WEBSOCKET", gone)
    monkeypatch.setattr(uvicorn_contract, "CONTRACTS", (gone, HTTP))
    assert uvicorn_options()["ws"] == "auto"
    assert uvicorn_options()["http"] == "httptools"
    [warning] = check_uvicorn_protocols()
    assert "megaphone.server.uvicorn cannot be imported" in warning.msg


def test_the_native_transport_runs_on_the_installed_uvicorn() -> None:
    assert uvicorn_contract.native_problems() == []
    assert uvicorn_options(native=True)["http"] == "megaphone.server.native:NativeHttpProtocol"
    assert uvicorn_options(native=True)["ws"] == uvicorn_options()["ws"]  # other routes: ASGI


def test_without_its_internals_the_native_transport_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No half-working native transport: ``serve --transport native`` says what is missing."""
    from django.core.management import CommandError, call_command

    from megaphone.management.commands import serve

    broken = dataclasses.replace(
        NATIVE, attributes=(*NATIVE.attributes, "renamed_in_a_new_release")
    )
    monkeypatch.setattr(uvicorn_contract, "NATIVE", broken)
    monkeypatch.setenv("MEGAPHONE_WORKERS", "1")  # serve sets it: given back after the test
    monkeypatch.setattr(serve.Command, "check", lambda self, **kwargs: None)  # not this test's
    with pytest.raises(NativeUnavailable, match="attribute renamed_in_a_new_release"):
        uvicorn_options(native=True)
    with pytest.raises(CommandError, match="--transport native cannot run on this uvicorn"):
        call_command("serve", "--transport", "native", "--port", "1")
    assert uvicorn_options()["http"] == "megaphone.server.uvicorn:HttpProtocol"  # asgi: unchanged
