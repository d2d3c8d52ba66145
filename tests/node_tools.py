"""The Node tools the JS tests need beyond ``node``: TypeScript (``tsc``) and React's types.

:func:`install` puts pinned versions into a cache directory once (``npm install``, from the npm
registry or npm's own cache) and returns it; the ``node_tools`` fixture (tests/conftest.py)
skips only when ``npm`` is absent. A failed install fails the tests that need it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import timeout

NODE = shutil.which("node")
NPM = shutil.which("npm")
#: Pinned, so that a new release cannot change what the tests check.
PACKAGES = ("typescript@5.9.3", "@types/react@19.3.2")
CACHE = Path(
    os.environ.get(
        "MEGAPHONE_NODE_TOOLS",
        Path.home() / ".cache" / "megaphone-tests" / "-".join(PACKAGES).replace("/", "_"),
    )
)


def npm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert NPM is not None
    return subprocess.run(
        [NPM, *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout(300),
    )


def install() -> Path:
    """The cache directory, with ``node_modules/.bin/tsc`` and ``node_modules/@types/react``."""
    if not (CACHE / "node_modules" / ".bin" / "tsc").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "package.json").write_text('{"private": true}\n')
        run = npm("install", *PACKAGES, cwd=CACHE)
        assert run.returncode == 0, f"npm install {PACKAGES} failed:\n{run.stderr}"
    return CACHE


def tsc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the cached ``tsc`` with ``args`` in ``cwd``."""
    assert NODE is not None
    return subprocess.run(
        [NODE, str(CACHE / "node_modules" / "typescript" / "bin" / "tsc"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout(180),
    )
