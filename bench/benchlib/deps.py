"""Install what the benchmark needs beyond the project's virtualenv, when it is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .servers import PEERS

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def missing_requirements() -> list[str]:
    missing = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def ensure_pip(log) -> list[str]:
    """pip-install bench/requirements.txt when something in it is missing; returns what is
    still missing afterwards."""
    missing = missing_requirements()
    if not missing:
        return []
    log(f"installing benchmark requirements: {', '.join(missing)}")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=False,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        log("pip install timed out")
    return missing_requirements()


def ensure_node_ws(log) -> str | None:
    """npm ci in bench/peers/node_ws when node_modules is missing; None when ready."""
    root = PEERS / "node_ws"
    if (root / "node_modules" / "ws" / "package.json").exists():
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed"
    log("installing the Node ws peer (npm ci)")
    try:
        r = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "npm ci timed out"
    if r.returncode != 0:
        return "npm ci failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
    return None
