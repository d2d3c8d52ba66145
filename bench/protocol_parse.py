"""Micro-benchmark of the protocol's frame parse (``megaphone.protocol.schema.parse``), the hot
path of every request a ``/ws/connect/`` client sends.

    .venv/bin/python bench/protocol_parse.py [--against FILE]

Prints the median time per parse of a few frames. ``--against`` names another version of
``schema.py`` (``git show <commit>:src/megaphone/protocol/schema.py > /tmp/old.py``) to time
side by side, interleaved, with the ratio new/old.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from megaphone.protocol import schema

FRAMES = {
    "publish text (~100 B)": '{"op":"publish","id":17,"topic":"chat.room-42","data":"hello '
    'world, this is a message of about a hundred bytes, give or take a few"}',
    "publish JSON value + msg_id": '{"op":"publish","id":18,"topic":"chat.room-42","data":'
    '{"user":"ann","text":"hello","n":[1,2,3]},"msg_id":"m-18"}',
    "subscribe with since": '{"op":"subscribe","id":"s1","topic":"news","since":{"offset":7,'
    '"epoch":"e1"}}',
    "bad topic (error path)": '{"op":"subscribe","id":3,"topic":"bad topic"}',
}


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("other_schema", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_schema"] = module
    spec.loader.exec_module(module)
    return module


def _time(parse: Callable[[str], object], text: str, number: int = 5000) -> float:
    def once() -> None:
        try:
            parse(text)
        except schema.ProtocolError:
            pass
        except Exception as exc:  # the other version's own ProtocolError
            if type(exc).__name__ != "ProtocolError":
                raise

    return min(timeit.repeat(once, number=number, repeat=3)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another schema.py to compare with")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    other = _load(args.against) if args.against else None
    print("| frame | this | " + ("other | this/other |" if other else ""))
    print("|---|---|" + ("---|---|" if other else ""))
    for name, text in FRAMES.items():
        mine, theirs = [], []
        for _ in range(args.rounds):
            mine.append(_time(schema.parse, text))
            if other:
                theirs.append(_time(other.parse, text))
        row = f"| {name} | {statistics.median(mine) * 1e9:.0f} ns |"
        if other:
            ratio = statistics.median(mine) / statistics.median(theirs)
            row += f" {statistics.median(theirs) * 1e9:.0f} ns | {ratio:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
