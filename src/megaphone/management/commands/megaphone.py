"""``manage.py megaphone``: publish, tail and inspect topics from a terminal.

    manage.py megaphone publish <topic> <data> [--json] [--msg-id ID]   prints the offset
    manage.py megaphone tail <topic> [--count N] [--timeout S] [--since N] [--format text|json]
                                     [--url ws://HOST/ws/connect/ [--token T | --session S]]
    manage.py megaphone history <topic> [--since N] [--limit N] [--format text|json]
    manage.py megaphone presence <topic>
    manage.py megaphone topics
    manage.py megaphone disconnect <user-pk> [--code 4410]
    manage.py megaphone unsubscribe <user-pk> <topic> [--reason server_unsubscribed]
    manage.py megaphone recheck <user-pk>

``disconnect``, ``unsubscribe`` and ``recheck`` give an order to every connection of the user of
that primary key, in every worker (:mod:`megaphone.server.control`).

``history --limit N`` prints the latest N messages after ``--since``. A command that finds
nothing says so on stderr; one that cannot answer (a topic without presence, a backend that
cannot list topics, the in-memory backend from the command line) exits with status 1.
``topics`` asks Redis which topics some worker listens to, on every process and machine.

The command is a process of its own: it reaches the server's clients only through a backend
shared between processes (Redis). Run from the command line with the in-memory backend, it stops
with an error saying so. Through ``call_command()`` it runs in the caller's process and uses that
process's backend, whatever it is. ``tail --url`` instead connects to a server, local or remote,
as a client of its protocol endpoint (:mod:`megaphone.client`), whatever the backend.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from megaphone import client
from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config, topic_options
from megaphone.core.closecodes import CloseCode
from megaphone.core.decoding import InvalidText, decode_json
from megaphone.core.message import Message
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.node import Node, start_node
from megaphone.engine.publishing import Pending, PublishError, publish
from megaphone.protocol.schema import MAX_HISTORY_LIMIT, message_json
from megaphone.server.control import (
    RECHECK,
    SERVER_UNSUBSCRIBED,
    disconnect_order,
    send_order,
    unsubscribe_order,
)

MEMORY_BACKEND_ERROR = (
    "The in-memory backend does not cross processes: this command runs in a process of its own, "
    "so it would {what} this process's memory, which no server and no client shares. "
    "Use the Redis backend, in the server and here: set REDIS_URL=redis://127.0.0.1:6379/0 "
    "(or the PostgreSQL one, MEGAPHONE_BACKEND=postgres://user@host:5432/db, or "
    "MEGAPHONE['BACKEND']). From code running in the server's process, call "
    "megaphone.publish() (or call_command('megaphone', ...)) instead."
)
WHAT = {
    "publish": "publish into",
    "tail": "listen to",
    "history": "read the history of",
    "presence": "read the presence in",
    "topics": "list the topics of",
    "disconnect": "give orders to the connections of",
    "unsubscribe": "give orders to the connections of",
    "recheck": "give orders to the connections of",
}


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Tail:
    """A hub subscriber queueing what it is handed, for the tail loop."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def deliver(self, message: Message) -> None:
        self.queue.put_nowait(message)


class Command(BaseCommand):
    help = "Publish to, tail and inspect Megaphone topics (needs Redis outside the server)."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="subcommand")

        p = commands.add_parser("publish", help="publish a message; prints its offset")
        p.add_argument("topic")
        p.add_argument("data", help="the text to send (with --json: a JSON value)")
        p.add_argument("--json", action="store_true", help="data is JSON: publish the value")
        p.add_argument("--msg-id", help="idempotency key: a retry does not publish twice")

        t = commands.add_parser("tail", help="print the topic's messages as they come")
        t.add_argument("topic")
        t.add_argument("--count", type=int, help="stop after this many messages")
        t.add_argument("--timeout", type=float, help="stop after this many seconds")
        t.add_argument("--since", type=int, help="first print the history after this offset")
        t.add_argument("--format", choices=("text", "json"), default="text")
        t.add_argument("--url", help="tail this server's /ws/connect/ as a client, not the backend")
        t.add_argument("--token", help="with --url: a connection token")
        t.add_argument("--session", help="with --url: a Django session key (sessionid cookie)")

        h = commands.add_parser("history", help="print the topic's history")
        h.add_argument("topic")
        h.add_argument("--since", type=int, default=0)
        h.add_argument("--limit", type=int, default=100, help="the latest N messages")
        h.add_argument("--format", choices=("text", "json"), default="text")

        s = commands.add_parser("presence", help="print the clients subscribed to the topic")
        s.add_argument("topic")

        commands.add_parser(
            "topics", help="print the topics some worker listens to, and how many workers"
        )

        d = commands.add_parser("disconnect", help="close every socket of a user, everywhere")
        d.add_argument("user", help="the user's primary key")
        d.add_argument("--code", type=int, default=int(CloseCode.DISCONNECTED))
        u = commands.add_parser("unsubscribe", help="end a user's subscriptions to a topic")
        u.add_argument("user", help="the user's primary key")
        u.add_argument("topic")
        u.add_argument("--reason", default=SERVER_UNSUBSCRIBED, help="the unsubscribed code")
        r = commands.add_parser("recheck", help="re-check a user's subscriptions (the policy)")
        r.add_argument("user", help="the user's primary key")

    def handle(self, *args: Any, **options: Any) -> None:
        subcommand = options["subcommand"]
        backend = get_config().BACKEND
        remote = subcommand == "tail" and options["url"] is not None
        from_command_line = getattr(self, "_called_from_command_line", False)
        if from_command_line and backend.startswith("memory:") and not remote:
            raise CommandError(MEMORY_BACKEND_ERROR.format(what=WHAT[subcommand]))
        if "topic" in options:
            try:
                validate_topic(options["topic"])
            except InvalidTopic as exc:
                raise CommandError(str(exc)) from None
        if subcommand == "publish":
            self.publish(options)
            return
        if subcommand in ("disconnect", "unsubscribe", "recheck"):
            self.order(subcommand, options)
            return
        try:
            asyncio.run(self.tail_remote(options) if remote else getattr(self, subcommand)(options))
        except KeyboardInterrupt:
            pass
        except (BackendUnavailable, OSError) as exc:
            raise CommandError(f"the backend is unavailable: {exc}") from None
        except client.ClientError as exc:
            raise CommandError(f"{options['url']}: {exc.message} ({exc.code})") from None

    # publish ---------------------------------------------------------------------------------

    def publish(self, options: dict[str, Any]) -> None:
        data: Any = options["data"]
        if options["json"]:
            try:
                data = decode_json(data)
            except InvalidText as exc:
                raise CommandError(f"--json: the data is not JSON ({exc})") from None
        try:
            message = publish(options["topic"], data, msg_id=options["msg_id"])
        except PublishError as exc:
            raise CommandError(str(exc)) from None
        if isinstance(message, Pending):  # called inside a transaction: no offset yet
            self.stderr.write(
                f"pending: published on {message.topic} once the transaction commits"
                f" (msg_id {message.msg_id})"
            )
            return
        self.stdout.write(str(message.offset))
        if options["verbosity"] > 1:
            self.stderr.write(f"published on {message.topic} in epoch {message.epoch}")

    # orders to a user's connections --------------------------------------------------------

    def order(self, subcommand: str, options: dict[str, Any]) -> None:
        try:
            if subcommand == "disconnect":
                order = disconnect_order(options["code"])
            elif subcommand == "unsubscribe":
                order = unsubscribe_order(options["topic"], options["reason"])
            else:
                order = RECHECK
            send_order(options["user"], order)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except PublishError as exc:
            raise CommandError(str(exc)) from None
        if options["verbosity"] > 1:
            self.stderr.write(f"{subcommand}: sent to the connections of user {options['user']}")

    # the others run on an event loop with a node of their own --------------------------------

    async def _node(self) -> Node:
        try:
            return await start_node(dashboard=False)
        except (BackendUnavailable, OSError) as exc:
            raise CommandError(f"the backend is unavailable: {exc}") from None

    async def tail(self, options: dict[str, Any]) -> None:
        topic, count, seconds = options["topic"], options["count"], options["timeout"]
        deadline = None if seconds is None else time.monotonic() + seconds
        node = await self._node()
        tail = _Tail()
        printed = 0
        last = 0
        try:
            await node.subscribe(topic, tail)
            if options["since"] is not None:
                page = await node.history(topic, options["since"], MAX_HISTORY_LIMIT)
                if not page.complete:
                    self.stderr.write("some messages after --since are no longer in history")
                for message in page.messages:
                    self._print(message, options["format"])
                    printed, last = printed + 1, message.offset
                    if count is not None and printed >= count:
                        return
            while count is None or printed < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(tail.queue.get(), remaining)
                except TimeoutError:
                    break
                if message.offset <= last and options["since"] is not None:
                    continue  # already printed from history
                self._print(message, options["format"])
                printed += 1
        finally:
            await node.unsubscribe(topic, tail)
            await node.stop()
        if count is not None and printed < count:
            raise CommandError(f"{printed} of {count} messages within {seconds} s")

    async def tail_remote(self, options: dict[str, Any]) -> None:
        """``tail --url``: the same output, through a server's protocol endpoint. The client
        reconnects and recovers by itself; a gap it cannot fill is said on stderr."""
        topic, count, seconds = options["topic"], options["count"], options["timeout"]
        printed = 0
        connection = client.Client(
            options["url"], token=options["token"], session_cookie=options["session"]
        )
        await connection.connect()
        try:
            since = None
            if options["since"] is not None:
                page = await connection.history(topic, since=options["since"], limit=0)
                since = client.Position(topic, options["since"], page.epoch)
            subscription = await connection.subscribe(topic, since=since)
            async with asyncio.timeout(seconds):
                while count is None or printed < count:
                    try:
                        item = await anext(subscription)
                    except client.RecoveryFailed:
                        self.stderr.write("some messages were lost and cannot be recovered")
                        continue
                    if isinstance(item, client.Message):
                        frame = item.to_frame()
                        text = _compact(frame) if options["format"] == "json" else None
                        self._print_payload(item.offset, item.data, item.binary, text)
                        printed += 1
        except TimeoutError:
            pass
        finally:
            await connection.close()
        if count is not None and printed < count:
            raise CommandError(f"{printed} of {count} messages within {seconds} s")

    async def history(self, options: dict[str, Any]) -> None:
        since, limit = options["since"], options["limit"]
        if since < 0 or not 0 <= limit <= MAX_HISTORY_LIMIT:
            raise CommandError(f"--since must be >= 0 and --limit from 0 to {MAX_HISTORY_LIMIT}")
        node = await self._node()
        try:
            page = await node.history(options["topic"], since, MAX_HISTORY_LIMIT)
        finally:
            await node.stop()
        for message in page.messages[len(page.messages) - limit :] if limit else ():
            self._print(message, options["format"])
        if not page.messages:
            self.stderr.write(f"no message in the history of {options['topic']} after #{since}")
        if options["verbosity"] > 1 or not page.complete:
            note = "" if page.complete else "; some messages after --since were trimmed"
            self.stderr.write(f"topic offset {page.offset}, epoch {page.epoch}{note}")

    async def presence(self, options: dict[str, Any]) -> None:
        node = await self._node()
        try:
            if node.backend.presence_store is None:
                raise CommandError(f"the {node.backend.name} keeps no presence")
            if not topic_options(options["topic"]).presence:
                raise CommandError(
                    f"topic {options['topic']} keeps no presence: turn it on with "
                    "MEGAPHONE['TOPICS'] = {pattern: {'presence': True}} (docs/settings.md)"
                )
            entries = await node.presence(options["topic"])
        finally:
            await node.stop()
        if not entries:
            self.stderr.write(f"nobody is present on {options['topic']}")
        for entry in sorted(entries.values(), key=lambda e: str(e.get("client"))):
            self.stdout.write(json.dumps(entry, ensure_ascii=False, sort_keys=True))

    async def topics(self, options: dict[str, Any]) -> None:
        node = await self._node()
        try:
            cluster = node.backend.cluster_topics
            if cluster is None:
                raise CommandError(
                    f"the {node.backend.name} cannot list the topics of the server's "
                    "processes: only the Redis backend can (GET /api/topics on a server lists "
                    "those of the worker answering)"
                )
            topics = await cluster.listened_topics()
        finally:
            await node.stop()
        listed = sorted((name, n) for name, n in topics.items() if not name.startswith("$"))
        if not listed:
            self.stderr.write("no topic has a subscriber on any worker")
        for name, workers in listed:
            self.stdout.write(f"{name}\t{workers}")

    def _print(self, message: Message, format: str) -> None:
        json_text = message.encoded(message_json) if format == "json" else None
        binary = isinstance(message.payload, bytes)
        self._print_payload(message.offset, message.payload, binary, json_text)

    def _print_payload(
        self, offset: int, payload: Any, binary: bool, json_text: str | None
    ) -> None:
        """One message: its frame's JSON (``json_text``, for --format json), else ``#offset``
        and its text (a JSON value as compact JSON, bytes as base64)."""
        if json_text is not None:
            self.stdout.write(json_text)
        elif binary:
            encoded = base64.b64encode(payload).decode("ascii")
            self.stdout.write(f"#{offset} (binary, base64) {encoded}")
        elif isinstance(payload, str):
            self.stdout.write(f"#{offset} {payload}")
        else:
            self.stdout.write(f"#{offset} {_compact(payload)}")
        self.stdout.flush()
