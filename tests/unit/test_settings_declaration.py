"""Tier 1: every setting is declared once (``megaphone.conf.Config``) and checked from that
declaration: a bad value of any setting gives its check id, with a hint saying what is expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from django.core.checks import CheckMessage, run_checks
from django.test import override_settings

from megaphone.conf import SETTINGS, Check, declare

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def checks(**megaphone: Any) -> list[CheckMessage]:
    with override_settings(MEGAPHONE=megaphone):
        return list(run_checks(tags=["megaphone"]))


def _bounds(name: str) -> list[tuple[str, Any]]:
    """Values just outside the declared range of a numeric setting."""
    schema = msgspec.json.schema(SETTINGS[name].type)
    options = schema.get("anyOf", [schema])
    out: list[tuple[str, Any]] = []
    for option in options:
        if "minimum" in option:
            out.append((name, option["minimum"] - 1))
        if "exclusiveMinimum" in option:
            out.append((name, option["exclusiveMinimum"]))
    return out


NUMERIC = [bad for name in SETTINGS for bad in _bounds(name)]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_value_of_the_wrong_type_gives_the_settings_check_id(name: str) -> None:
    found = checks(**{name: 1j})
    mine = [m for m in found if f"MEGAPHONE[{name!r}]" in m.msg]
    assert [m.id for m in mine] == [SETTINGS[name].check.id], found
    assert mine[0].hint and name in mine[0].hint


@pytest.mark.parametrize(("name", "value"), NUMERIC)
def test_a_number_out_of_its_declared_range_gives_the_settings_check_id(
    name: str, value: Any
) -> None:
    assert [m.id for m in checks(**{name: value}) if m.level >= 40] == [SETTINGS[name].check.id]


@pytest.mark.parametrize("name", [name for name, _ in NUMERIC])
def test_a_boolean_is_not_a_number(name: str) -> None:
    assert SETTINGS[name].check.id in {m.id for m in checks(**{name: True})}


def test_a_rate_that_is_not_a_number_is_a_check_error_not_a_run_time_type_error() -> None:
    (error,) = checks(PUBLISH_RATE="fast")
    assert error.id == "megaphone.E050"
    assert "a number >= 0" in error.msg and "'fast'" in error.msg


def test_every_default_satisfies_its_declaration() -> None:
    for setting in SETTINGS.values():
        msgspec.convert(setting.default, setting.type, strict=True)


def test_a_setting_declared_without_a_check_is_refused() -> None:
    @dataclass
    class Unchecked:
        GOOD: Annotated[int, Check("megaphone.E999")] = 1
        NEW: int = 2

    with pytest.raises(TypeError, match="NEW declares no Check"):
        declare(Unchecked)


def test_every_check_id_of_the_declaration_is_documented() -> None:
    text = DOCS.read_text()
    for setting in SETTINGS.values():
        assert f"`{setting.check.id}`" in text, setting.name
        assert f"`{setting.name}`" in text, setting.name
