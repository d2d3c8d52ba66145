"""Tier 3: every code block of docs/clients.md runs, so the page cannot go stale.

Python blocks run as programs (those defining ``test_*`` functions under pytest) against a real
server, whose URL they read from ``MEGAPHONE_URL``; they must exit 0. JavaScript and TypeScript
blocks, and the module script of the Django template (rendered by Django, ``{% static %}``
included), are type-checked together by ``tsc --noEmit`` against megaphone.d.ts, with React's
types for the ``tsx`` hook.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from django.template import engines

from tests.conftest import ROOT, ServerProcess, timeout
from tests.node_tools import tsc

DOC = ROOT / "docs" / "clients.md"
DECLARATIONS = ROOT / "src" / "megaphone" / "static" / "megaphone" / "megaphone.d.ts"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODULE_SCRIPT = re.compile(r'<script type="module">\n(.*?)</script>', re.DOTALL)


def code_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the page, in order."""
    return FENCE.findall(DOC.read_text())


def test_the_page_has_the_examples_it_promises() -> None:
    languages = [language for language, _ in code_blocks()]
    assert languages.count("python") >= 4 and {"html", "js", "ts", "tsx"} <= set(languages)
    assert set(languages) <= {"python", "html", "js", "ts", "tsx"}, "a block no test runs"


def test_every_python_block_runs_against_a_real_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["MEGAPHONE_URL"] = f"{server.ws_url}/ws/connect/"
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    blocks = [code for language, code in code_blocks() if language == "python"]
    for number, code in enumerate(blocks, 1):
        if "\ndef test_" in code:
            path = tmp_path / f"test_block_{number}.py"
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            command += ["-p", "no:django", "-p", "no:asyncio", "-c", str(tmp_path / "pytest.ini")]
            command.append(str(path))
        else:
            path = tmp_path / f"block_{number}.py"
            command = [sys.executable, str(path)]
        path.write_text(code)
        run = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout(60)
        )
        assert run.returncode == 0, f"python block {number}:\n{code}\n{run.stdout}\n{run.stderr}"
        assert run.stdout, f"python block {number} printed nothing"


def test_every_js_and_ts_block_type_checks(node_tools: Path, tmp_path: Path) -> None:
    files = []
    for number, (language, code) in enumerate(code_blocks(), 1):
        if language == "html":
            rendered = engines["django"].from_string(code).render({})
            [code] = MODULE_SCRIPT.findall(rendered)
            language = "js"
        if language in ("js", "ts", "tsx"):
            path = tmp_path / f"block_{number}.{language}"
            path.write_text(code)
            files.append(path.name)
    (tmp_path / "node_modules").symlink_to(node_tools / "node_modules")
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "allowJs": True,
            "checkJs": True,
            "target": "ES2022",
            "module": "ESNext",
            "moduleResolution": "Bundler",
            "jsx": "react-jsx",
            "lib": ["ES2022", "DOM"],
            "types": [],
            "paths": {
                "megaphone-client": [str(DECLARATIONS)],
                "/static/megaphone/megaphone.js": [str(DECLARATIONS)],
            },
        },
        "files": files,
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    run = tsc("-p", str(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stdout
