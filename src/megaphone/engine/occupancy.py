"""Topic occupancy across the deployment: a topic is *occupied* while some worker has a
subscriber on it, *vacated* when the last one leaves; each change is announced once, by one worker.

A worker takes part only while someone listens (:func:`watch` was called, and its ``wanted()``
says yes: the project connected a receiver to the signals). When its own subscribers of a topic go
from none to some (or back), the worker records that in the backend's presence store, under the
topic's *ledger* (``_megaphone.occupancy:<topic>``, client: the worker), at once; then, after
``OCCUPANCY_DEBOUNCE`` seconds without another change of its own, it *settles* the topic:

1. the topic is occupied if the ledger's presence has any entry (any worker's);
2. the ledger's history says the last state announced (its latest message; none: vacated);
3. if they differ, the worker publishes the new state on the ledger with ``msg_id``
   ``<epoch>:<next offset>``. The backend accepts one message per ``msg_id``: of the workers that
   saw the same change at once, exactly one wins (the message returned is its own), and only it
   announces the change; the others read again, and stop once the ledger agrees.

So each change of the deployment's state is announced once, by one worker, about
``OCCUPANCY_DEBOUNCE`` seconds after it, and a subscribe/unsubscribe flap shorter than that
announces nothing. Limits: a worker that dies leaves its presence entry to expire
(``PRESENCE_TTL``) and announces nothing, so a topic vacated by a worker's death is announced at
the next change on it; a topic whose ledger was lost (its epoch changed: Redis lost its keys)
starts again from *vacated*, so an occupied topic may be announced occupied a second time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from megaphone.backends import BackendUnavailable
from megaphone.core.logs import get_logger
from megaphone.core.topics import is_internal

if TYPE_CHECKING:
    from megaphone.engine.node import Node

logger = get_logger(__name__)

#: The prefix of a topic's ledger (internal: ``_megaphone.``).
LEDGER_PREFIX = "_megaphone.occupancy:"
#: A ledger's history: a few states, kept long (the last one must outlive an occupation).
LEDGER_HISTORY = (8, 30 * 86400.0)
#: Seconds a worker waits after its last change of a topic before settling it.
OCCUPANCY_DEBOUNCE = 0.5

#: Announces a change: ``(topic, occupied)``.
Notify = Callable[[str, bool], Awaitable[None]]
_watcher: tuple[Callable[[], bool], Notify] | None = None


def watch(wanted: Callable[[], bool], notify: Notify) -> None:
    """Take part in occupancy while ``wanted()``; ``notify`` announces each change (once across
    the deployment)."""
    global _watcher
    _watcher = (wanted, notify)


def ledger(topic: str) -> str:
    return LEDGER_PREFIX + topic


class Occupancy:
    """One node's part in occupancy; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.worker = secrets.token_hex(8)
        self._local: dict[str, bool] = {}  # topic -> whether this worker has subscribers
        self._recorded: dict[str, bool] = {}  # what the presence store holds for this worker
        self._settling: dict[str, asyncio.Task[None]] = {}

    def changed(self, topic: str, occupied: bool) -> None:
        """This worker's subscribers of ``topic`` went from none to some (``occupied``) or back."""
        if _watcher is None or is_internal(topic) or not _watcher[0]():
            return
        self._local[topic] = occupied
        task = self._settling.get(topic)
        if task is None or task.done():
            self._settling[topic] = asyncio.ensure_future(self._settle(topic))

    async def _settle(self, topic: str) -> None:
        try:
            while True:
                state = self._local[topic]
                await self._record(topic, state)
                await asyncio.sleep(OCCUPANCY_DEBOUNCE)  # the debounce: wait for quiet
                if self._local[topic] == state:
                    await self._decide(topic)
                    if self._local[topic] == state:
                        break
        except BackendUnavailable as exc:
            logger.error("occupancy of %s not settled: %s", topic, exc)
        finally:
            if self._settling.get(topic) is asyncio.current_task():
                del self._settling[topic]
                if not self._local.get(topic, True):
                    self._local.pop(topic, None)
                    self._recorded.pop(topic, None)

    async def _record(self, topic: str, occupied: bool) -> None:
        if self._recorded.get(topic) == occupied:
            return
        if occupied:
            await self.node.presence_add(ledger(topic), self.worker, {"worker": self.worker})
        else:
            await self.node.presence_remove(ledger(topic), self.worker)
        self._recorded[topic] = occupied

    async def _decide(self, topic: str) -> None:
        """Publish, and announce, the topic's state until the ledger agrees with presence."""
        assert _watcher is not None
        name = ledger(topic)
        while True:
            occupied = bool(await self.node.presence(name))
            page = await self.node.history(name, 0, 0)
            announced = False
            if page.offset > 0:
                last = await self.node.history(name, page.offset - 1, 1)
                if last.messages and last.epoch == page.epoch:
                    announced = json.loads(last.messages[0].payload)["occupied"]
            if announced == occupied:
                return
            mine = json.dumps({"occupied": occupied, "by": secrets.token_hex(8)})
            message = await self.node.publish(
                name, mine, json=True, msg_id=f"{page.epoch}:{page.offset + 1}"
            )
            if message.payload == mine:  # this worker's message was the one accepted
                try:
                    await _watcher[1](topic, occupied)
                except Exception:
                    logger.exception("an occupancy receiver of %s failed", topic)
                return

    def stop(self) -> None:
        for task in self._settling.values():
            task.cancel()
        self._settling.clear()
