"""Tier 1: megaphone.js as a product: its TypeScript declarations and its npm package.

``tsc --noEmit`` checks tests/js/types/example.ts (the API as an application uses it) against
megaphone.d.ts, and must report every misuse in tests/js/types/misuse.ts. ``npm pack`` of
src/megaphone/static/megaphone/ must give a package (``megaphone-client``) that installs into a
fresh project, imports under Node and type-checks there through its ``exports``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import megaphone
from tests.conftest import ROOT, timeout
from tests.node_tools import NODE, npm, tsc

TYPES = ROOT / "tests" / "js" / "types"
PACKAGE = ROOT / "src" / "megaphone" / "static" / "megaphone"


def errors_by_file(output: str) -> dict[str, set[int]]:
    """``tsc``'s errors: file name -> the line numbers it reports."""
    found: dict[str, set[int]] = {}
    for name, line in re.findall(r"^(?:.*/)?([\w.]+\.tsx?)\((\d+),\d+\): error", output, re.M):
        found.setdefault(name, set()).add(int(line))
    return found


def test_tsc_accepts_the_example_and_reports_every_misuse(node_tools: Path) -> None:
    run = tsc("-p", str(TYPES), cwd=ROOT)
    misuses = {
        number
        for number, line in enumerate((TYPES / "misuse.ts").read_text().splitlines(), 1)
        if "// misuse:" in line
    }
    assert len(misuses) == 4
    assert errors_by_file(run.stdout) == {"misuse.ts": misuses}, run.stdout


def test_npm_pack_gives_a_package_that_installs_imports_and_type_checks(
    node_tools: Path, tmp_path: Path
) -> None:
    packed = npm("pack", str(PACKAGE), "--pack-destination", str(tmp_path), "--json", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    [info] = json.loads(packed.stdout)
    assert (info["name"], info["version"]) == ("megaphone-client", megaphone.__version__)
    assert {f["path"] for f in info["files"]} == {"package.json", "megaphone.js", "megaphone.d.ts"}

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    installed = npm("install", "--offline", str(tmp_path / info["filename"]), cwd=app)
    assert installed.returncode == 0, installed.stderr

    script = (
        'import Megaphone, { closeAction, CLOSE_CODES } from "megaphone-client";'
        "console.log(typeof Megaphone, closeAction(4401), CLOSE_CODES[1009].name);"
    )
    assert NODE is not None
    imported = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["function", "reauthenticate", "message_too_big"]

    (app / "main.ts").write_text(
        'import { Megaphone, type Published } from "megaphone-client";\n'
        'const mp = new Megaphone("wss://example.com/ws/connect/", { autoConnect: false });\n'
        'const published: Promise<Published> = mp.publish("news", { hello: "world" });\n'
        "void published;\n"
    )
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "module": "ESNext",
            "moduleResolution": "Bundler",
            "lib": ["ES2022", "DOM"],
            "types": [],
        },
        "files": ["main.ts"],
    }
    (app / "tsconfig.json").write_text(json.dumps(config))
    checked = tsc("-p", str(app), cwd=app)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.skipif(NODE is None, reason="needs Node.js (node)")
def test_the_declarations_name_every_export_of_megaphone_js_and_nothing_else() -> None:
    assert NODE is not None
    script = (
        f"import({json.dumps((PACKAGE / 'megaphone.js').as_uri())})"
        ".then((m) => console.log(JSON.stringify(Object.keys(m))))"
    )
    run = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert run.returncode == 0, run.stderr
    declarations = (PACKAGE / "megaphone.d.ts").read_text()
    declared = set(
        re.findall(r"^export declare (?:const|function|class) (\w+)", declarations, re.M)
    )
    if re.search(r"^export default \w+;$", declarations, re.M):
        declared.add("default")
    assert declared == set(json.loads(run.stdout))
