"""Every example of docs/testing.md runs, as a user's test suite would run it.

The page's Python blocks become test files of a project of their own (the example project's
settings, the page's pytest.ini), run by pytest in a subprocess: Megaphone's pytest plugin must
load through its ``pytest11`` entry point, and every example test must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, timeout

DOC = ROOT / "docs" / "testing.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [code for lang, code in FENCE.findall(DOC.read_text()) if lang == language]


def test_every_example_of_the_page_passes_under_the_plugin(tmp_path: Path) -> None:
    (ini,) = blocks("ini")
    (tmp_path / "pytest.ini").write_text(
        ini.replace("mysite.settings", "example.settings") + "filterwarnings = error\n"
    )
    examples = blocks("python")
    assert len(examples) >= 4
    expected = 0
    for number, code in enumerate(examples, 1):
        (tmp_path / f"test_example_{number}.py").write_text(code)
        expected += len(re.findall(r"^async def test_|^def test_", code, re.MULTILINE))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT / "example")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(120),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{expected} passed" in result.stdout, result.stdout


def test_the_plugin_is_harmless_where_no_test_uses_it(tmp_path: Path) -> None:
    """A project without Django settings or asyncio plugin config still runs its plain tests."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    plugins = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert "megaphone_communicator" in plugins.stdout, plugins.stdout[-2000:]


def test_loading_the_plugin_imports_neither_django_nor_channels() -> None:
    """pytest loads the plugin in every run where Megaphone is installed: it must cost nothing
    and need nothing (no settings, no Channels test extras) until a fixture is used."""
    code = (
        "import sys, megaphone.testing.plugin; "
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('django', 'channels', 'daphne')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout(60)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
