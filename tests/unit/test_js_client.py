"""Tier 1: megaphone.js under Node, so that ``make test`` runs the client's unit tests.

``tests/js/`` holds them (``node --test``, a fake WebSocket, mock timers). A second test keeps the
JS client's close-code table (``CLOSE_CODES`` in megaphone.js), the server's and the Python
client's (``CloseCode`` and ``CLOSE_ACTIONS`` in ``megaphone.core.closecodes``) and the documented
one
(docs/protocol.md, "Close codes") the same table.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from megaphone.core.closecodes import CLOSE_ACTIONS, CloseCode
from tests.conftest import ROOT, timeout

NODE = shutil.which("node")
MEGAPHONE_JS = ROOT / "src" / "megaphone" / "static" / "megaphone" / "megaphone.js"

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js (node) for megaphone.js")


def node(*args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout(120)
    )


def test_node_unit_tests_of_megaphone_js_pass() -> None:
    run = node("--test", "tests/js/")
    assert run.returncode == 0, f"node --test tests/js/ failed:\n{run.stdout}\n{run.stderr}"
    assert re.search(r"^# pass [1-9]", run.stdout, re.MULTILINE), run.stdout


def documented_actions() -> dict[int, str]:
    """The client action column of the close-code table in docs/protocol.md."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{4}) \|.*\| `(\w+)` \|$", section, re.MULTILINE)
    return {int(code): action for code, action in rows}


def test_the_js_client_python_client_server_and_documented_close_code_tables_agree() -> None:
    script = (
        f"import({json.dumps(MEGAPHONE_JS.as_uri())})"
        ".then((m) => console.log(JSON.stringify(m.CLOSE_CODES)))"
    )
    run = node("--input-type=module", "-e", script)
    assert run.returncode == 0, run.stderr
    client = {int(code): entry for code, entry in json.loads(run.stdout).items()}
    server = {int(code): code.name.lower() for code in CloseCode}
    assert {code: entry["name"] for code, entry in client.items()} == server
    assert documented_actions() == {code: entry["action"] for code, entry in client.items()}
    assert {
        int(code): str(action) for code, action in CLOSE_ACTIONS.items()
    } == documented_actions()
