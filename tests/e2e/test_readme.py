"""Tier 3: the README's "Add it to your Django project", followed word for word.

The test builds the wheel, installs it (alone: ``--no-deps`` into a directory first on
``PYTHONPATH``, the test environment providing Django, Channels, uvicorn and redis), creates a
project with ``django-admin startproject mysite`` and applies the section's code blocks as they
are written: each Python block goes into the file the sentence before it names (at its end when
the sentence says so, else replacing it), each ``python manage.py`` line of the shell block is run
(``createsuperuser`` with ``--noinput``, ``serve`` on a free port). The only code of its own is a
page, the template snippet of the section behind one URL. Then, with ``MEGAPHONE = {}``: a
Chromium page receives what a wscat-like client publishes on ``/ws/broadcast/``, a client
publishing on a server-fed topic is closed with 4403, the health, metrics and static URLs answer,
and the staff user logs in to the dashboard. A step the README does not state fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import ROOT, ServerProcess, free_port, timeout, wait_for_port
from tests.e2e.browser import chromium

pytestmark = pytest.mark.browser

SECTION = "## Add it to your Django project"
PASSWORD = "a-long-readme-password"


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else None]


def code_blocks(section: str) -> list[tuple[str, str, str]]:
    """``(prose before the block, language, code)`` for every fenced block, in order."""
    pattern = re.compile(r"```(\w+)\n(.*?)```", re.S)
    blocks, prose_start = [], 0
    for match in pattern.finditer(section):
        blocks.append((section[prose_start : match.start()], match.group(1), match.group(2)))
        prose_start = match.end()
    return blocks


def apply_python_block(project: Path, prose: str, code: str) -> None:
    """Write ``code`` into the last ``mysite/...py`` file the prose names: appended if the prose
    says "at the end", else as the whole file."""
    names = re.findall(r"`(mysite/[\w/]+\.py)`", prose)
    assert names, f"the README does not say which file this block goes in:\n{code}"
    path = project / names[-1]
    assert path.exists(), f"startproject made no {names[-1]}"
    if "at the end" in prose:
        path.write_text(path.read_text() + "\n" + code)
    else:
        path.write_text(code)


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    """The wheel built from a copy of this checkout's sources (a build leaves build/ and
    *.egg-info behind), installed alone into a directory."""
    source, dist, target = tmp_path / "source", tmp_path / "dist", tmp_path / "site"
    cache = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", ignore=cache)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=timeout(300),
    )
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=timeout(120),
    )
    return target


@pytest.fixture
def project(tmp_path: Path, wheel_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MEGAPHONE_"))}
    env |= {"PYTHONPATH": str(wheel_dir), "PYTHONUNBUFFERED": "1"}
    env["MEGAPHONE_TEST_TIMEOUT_FACTOR"] = os.environ.get("MEGAPHONE_TEST_TIMEOUT_FACTOR", "1")
    where = subprocess.run(
        [sys.executable, "-c", "import megaphone; print(megaphone.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(wheel_dir)), "the wheel is not the megaphone imported"
    django_admin = [sys.executable, "-m", "django"]
    subprocess.run([*django_admin, "startproject", "mysite", str(tmp_path)], env=env, check=True)
    yield tmp_path, env


def test_the_readme_section_works_verbatim_in_a_fresh_project(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    blocks = code_blocks(readme_section())
    languages = [language for _, language, _ in blocks]
    assert languages == ["sh", "python", "python", "python", "sh", "html"], languages
    (_, _, install), *python_blocks, (_, _, commands), (_, _, snippet) = blocks
    assert install.strip() == 'pip install "django-megaphone[redis]"'  # the wheel, here
    for prose, _, code in python_blocks:
        apply_python_block(root, prose, code)
    assert "MEGAPHONE = {}" in (root / "mysite" / "settings.py").read_text()

    # The test's own page: the README's template snippet behind /page/.
    (root / "templates").mkdir()
    (root / "templates" / "page.html").write_text(snippet)
    with (root / "mysite" / "settings.py").open("a") as settings:
        settings.write('\nTEMPLATES[0]["DIRS"] = [BASE_DIR / "templates"]\n')
    with (root / "mysite" / "urls.py").open("a") as urls:
        urls.write(
            "\nfrom django.views.generic import TemplateView\n\n"
            'urlpatterns.append(path("page/", TemplateView.as_view(template_name="page.html")))\n'
        )

    port = free_port()
    server = None
    for line in commands.strip().splitlines():
        assert line.startswith("python manage.py "), line
        argv = [sys.executable, "manage.py", *line.split()[2:]]
        if argv[2] == "createsuperuser":
            argv += ["--noinput", "--username", "admin", "--email", "admin@example.com"]
            run_env = {**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
            subprocess.run(argv, cwd=root, env=run_env, check=True, timeout=timeout(60))
        elif argv[2] == "serve":
            log_path = root / "server.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [*argv, "--port", str(port)],
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            server = ServerProcess(port, process, log_path, {})
        else:
            subprocess.run(argv, cwd=root, env=env, check=True, timeout=timeout(120))
    assert server is not None, "the README never serves the project"
    try:
        wait_for_port(port, server.process, 30)
        check_the_project(server)
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop(signal.SIGKILL)


def check_the_project(server: ServerProcess) -> None:
    for path, expected in (
        ("/healthz", "ok"),
        ("/metrics", "megaphone_"),
        ("/static/megaphone/megaphone.js", "export class Megaphone"),
    ):
        with urllib.request.urlopen(server.http_url + path, timeout=timeout(10)) as response:
            assert response.status == 200, path
            assert expected in response.read().decode(), path

    # MEGAPHONE = {}: a client may not write a topic the server feeds ...
    with connect(f"{server.ws_url}/ws/broadcast/orders/", open_timeout=timeout(10)) as wscat:
        wscat.send("HACKED / refunded")
        with pytest.raises(ConnectionClosed) as closed:
            wscat.recv(timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

    with chromium() as browser:
        page = browser.new_page()
        # ... but the seed's promise holds: wscat on /ws/broadcast/ reaches the page.
        page.goto(f"{server.http_url}/page/")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'live'", timeout=timeout(15) * 1000
        )
        with connect(f"{server.ws_url}/ws/broadcast/", open_timeout=timeout(10)) as wscat:
            wscat.send("hello from wscat")
            assert wscat.recv(timeout(10)) == "hello from wscat"
        page.locator("#messages li", has_text="hello from wscat").wait_for(
            timeout=timeout(15) * 1000
        )

        # The staff user the README creates logs in to the dashboard.
        page.goto(f"{server.http_url}/megaphone/dashboard/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", PASSWORD)
        with page.expect_navigation():
            page.click("input[type=submit]")
        assert page.url == f"{server.http_url}/megaphone/dashboard/"
        assert page.locator("script[src$='dashboard.js']").count() == 1
