"""Tier 1: ``manage.py megaphone`` in-process (``call_command``), on the in-memory backend."""

from __future__ import annotations

import asyncio
import json
import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings

import megaphone
from megaphone.engine.node import get_node
from megaphone.testing import unique
from tests.conftest import timeout


def run(*args: str) -> str:
    out = StringIO()
    call_command("megaphone", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_publish_prints_the_offset_and_publishes_text_or_json() -> None:
    topic = unique("cmd")
    assert run("publish", topic, "hello") == "1\n"
    assert run("publish", topic, '{"a": [1, 2]}', "--json") == "2\n"
    assert run("publish", topic, "again", "--msg-id", "m1") == "3\n"
    assert run("publish", topic, "again", "--msg-id", "m1") == "3\n"
    assert run("history", topic) == '#1 hello\n#2 {"a":[1,2]}\n#3 again\n'


@pytest.mark.django_db(transaction=True)
def test_publish_inside_a_transaction_says_it_is_pending_and_publishes_on_commit() -> None:
    topic, err = unique(), StringIO()
    with transaction.atomic():
        out = StringIO()
        call_command("megaphone", "publish", topic, "hello", stdout=out, stderr=err)
        assert out.getvalue() == ""  # no offset yet
        assert run("history", topic) == ""  # nothing published before the commit
    assert "once the transaction commits" in err.getvalue()
    assert run("history", topic) == "#1 hello\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("publish", "bad topic", "x"), "character outside"),
        (("publish", "t", "{nope", "--json"), "not JSON"),
        (("history", "t", "--limit", "5000"), "--limit"),
        (("topics",), "cannot list the topics"),
    ],
)
def test_errors_are_command_errors(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)


@override_settings(MEGAPHONE={"MAX_MESSAGE_SIZE": 5})
def test_publish_too_large_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="limit is 5 bytes"):
        run("publish", unique("cmd"), "123456")


def test_history_since_limit_and_json_format() -> None:
    topic = unique("cmd")
    for i in range(5):
        megaphone.publish(topic, {"n": i})
    megaphone.publish(topic, b"\x00\x01")
    # The latest two after offset 2, not the oldest two.
    assert run("history", topic, "--since", "2", "--limit", "2") == (
        '#5 {"n":4}\n#6 (binary, base64) AAE=\n'
    )
    assert run("history", topic, "--since", "2", "--limit", "3").startswith('#4 {"n":3}\n')
    lines = run("history", topic, "--since", "4", "--format", "json").splitlines()
    frames = [json.loads(line) for line in lines]
    assert frames[0] == {
        "type": "message",
        "topic": topic,
        "offset": 5,
        "epoch": frames[0]["epoch"],
        "data": {"n": 4},
    }
    assert frames[1]["binary"] is True and frames[1]["data"] == "AAE="
    assert run("history", topic, "--since", "5") == "#6 (binary, base64) AAE=\n"


def test_tail_prints_live_messages_until_count() -> None:
    topic = unique("cmd")
    megaphone.publish(topic, "old")
    out = StringIO()
    errors: list[BaseException] = []

    def tail() -> None:
        try:
            call_command(
                "megaphone",
                "tail",
                topic,
                "--count",
                "3",
                "--timeout",
                str(timeout(10)),
                stdout=out,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=tail)
    thread.start()
    # Publish until the tail has subscribed and seen the first one, then two more.
    seen = 0
    for attempt in range(int(timeout(100))):
        megaphone.publish(topic, f"probe {attempt}")
        thread.join(0.05)
        if out.getvalue():
            seen = attempt + 1
            break
    megaphone.publish(topic, "second")
    megaphone.publish(topic, "third")
    thread.join(timeout(10))
    assert not thread.is_alive() and errors == []
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1:] == [f"#{seen + 2} second", f"#{seen + 3} third"]


def test_tail_since_prints_history_first_then_live_without_duplicates() -> None:
    topic = unique("cmd")
    for text in ("a", "b", "c"):
        megaphone.publish(topic, text)
    out = StringIO()
    thread = threading.Thread(
        target=call_command,
        args=("megaphone", "tail", topic, "--since", "1", "--count", "3", "--timeout", "10"),
        kwargs={"stdout": out},
    )
    thread.start()
    while out.getvalue().count("\n") < 2 and thread.is_alive():
        thread.join(0.02)
    megaphone.publish(topic, "d")
    thread.join(timeout(10))
    assert out.getvalue() == "#2 b\n#3 c\n#4 d\n"


def test_tail_timeout_with_count_not_reached_is_an_error() -> None:
    with pytest.raises(CommandError, match="0 of 2 messages"):
        run("tail", unique("cmd"), "--count", "2", "--timeout", "0.2")
    assert run("tail", unique("cmd"), "--timeout", "0.1") == ""


@override_settings(MEGAPHONE={"PRESENCE": True})
async def test_presence_prints_one_json_line_per_client() -> None:
    topic = unique("cmd")
    node = await get_node()
    await node.presence_add(topic, "c2", {"client": "c2", "user": "bob", "info": None})
    await node.presence_add(topic, "c1", {"client": "c1", "user": "alice", "info": {"x": 1}})
    out = await asyncio.to_thread(run, "presence", topic)
    assert [json.loads(line)["user"] for line in out.splitlines()] == ["alice", "bob"]
    await node.presence_remove(topic, "c1")
    await node.presence_remove(topic, "c2")


def test_commands_that_find_nothing_say_so_and_fail_where_they_cannot_answer() -> None:
    err = StringIO()
    call_command("megaphone", "history", unique("cmd"), stdout=StringIO(), stderr=err)
    assert "no message in the history of" in err.getvalue()
    with pytest.raises(CommandError, match="keeps no presence: turn it on"):
        run("presence", unique("cmd"))  # PRESENCE is off by default
    with override_settings(MEGAPHONE={"PRESENCE": True}):
        err = StringIO()
        call_command("megaphone", "presence", unique("cmd"), stdout=StringIO(), stderr=err)
        assert "nobody is present on" in err.getvalue()
