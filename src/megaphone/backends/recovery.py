"""What a process missed while its bus connection was down, shared by the backends that
reconnect (Redis pub/sub, PostgreSQL LISTEN): the decision, not the I/O.

May import: :mod:`megaphone.backends.base` and :mod:`megaphone.core`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from megaphone.backends.base import HistoryPage
from megaphone.core.logs import get_logger

logger = get_logger(__name__)

#: ``history(topic, since)`` of the backend.
ReadHistory = Callable[[str, int], Awaitable[HistoryPage]]
#: ``renew(topic, epoch, offset)``: drop ``topic``'s state if it is still in ``epoch`` below
#: ``offset``, so that its next use starts a new epoch.
Renew = Callable[[str, str, int], Awaitable[None]]


def advance(positions: dict[str, tuple[str, int]], topic: str, epoch: str, offset: int) -> None:
    """Record that ``topic`` was delivered up to ``(epoch, offset)``: a later offset, or any
    offset of another epoch, replaces what ``positions`` held."""
    position = positions.get(topic)
    if position is None or position[0] != epoch or position[1] < offset:
        positions[topic] = (epoch, offset)


async def missed(
    topic: str, position: tuple[str, int], history: ReadHistory, renew: Renew, *, store: str
) -> HistoryPage:
    """The messages of ``topic`` after ``position`` (the last one delivered), to hand over
    before any live one.

    * Same epoch: those after the offset (a trimmed part shows as a gap in offsets).
    * Same epoch but the offset went back (the ``store`` lost acknowledged writes: an older
      snapshot or backup, a lagging replica): offsets would be reused, so the topic is renewed
      (a new epoch) and its messages in the new epoch are returned.
    * Another epoch: the new epoch's messages, which tell the sessions that history was lost.
    """
    epoch, offset = position
    page = await history(topic, offset)
    if page.epoch == epoch and page.offset < offset:
        logger.error("%s lost messages of %r up to offset %d: new epoch", store, topic, offset)
        await renew(topic, epoch, offset)
        page = await history(topic, offset)
    if page.epoch != epoch:
        page = await history(topic, 0)
    return page
