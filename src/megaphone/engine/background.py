"""The background event loop of a process, for sync code: :func:`megaphone.publish` runs on it.

One daemon thread per process runs one event loop with one node (one backend), started on first
use and reused by every caller, so the number of backend connections does not grow with the
number of threads or calls; restarted after a ``fork``; stopped at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from concurrent.futures import Future
from typing import Any

from megaphone.conf import get_config
from megaphone.engine.node import Node, start_node


class BackgroundNode:
    """The process's background event loop for sync callers, and its one node (one backend).

    :meth:`submit` runs a coroutine on the loop from any thread; :meth:`node` (on the loop) is
    the one node, started on first use and rebuilt when ``MEGAPHONE['BACKEND']`` changes (tests
    override settings). After a ``fork`` the child starts afresh on its next :meth:`submit`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Touched only on the background loop:
        self._node: asyncio.Task[Node] | None = None
        self._node_url = ""
        #: How many loops and nodes this process has started (tests check they stay bounded).
        self.loops_started = 0
        self.nodes_started = 0

    def current_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop if self._pid == os.getpid() else None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            thread = self._thread
            if (
                self._loop is None
                or self._pid != os.getpid()
                or thread is None
                or not thread.is_alive()
            ):
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run, args=(loop,), name="megaphone-publisher", daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self._node, self._node_url = None, ""
                self.loops_started += 1
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._ensure_loop())

    async def node(self) -> Node:
        url = get_config().BACKEND
        starting = self._node
        if starting is not None and self._node_url != url:
            self._node = None
            if starting.done() and not starting.cancelled() and not starting.exception():
                await starting.result().stop()
            starting = None
        if starting is None or (starting.done() and (starting.cancelled() or starting.exception())):
            starting = self._node = asyncio.get_running_loop().create_task(self._start_node())
            self._node_url = url
        return await asyncio.shield(starting)

    async def _start_node(self) -> Node:
        node = await start_node(dashboard=False)
        self.nodes_started += 1
        return node

    async def _stop_node(self) -> None:
        starting, self._node = self._node, None
        if starting is None or not starting.done() or starting.cancelled():
            return
        if starting.exception() is None:
            await starting.result().stop()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the node (closing its backend connections) and the background loop, if any.

        Registered with :mod:`atexit`; the next :func:`publish` starts them again.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            self._loop = self._thread = None
        if thread.is_alive():
            with contextlib.suppress(Exception):  # best effort, at exit
                asyncio.run_coroutine_threadsafe(self._stop_node(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def _after_fork(self) -> None:
        # The child has no background thread: forget the parent's loop (its fds are shared with
        # the parent, so it is not closed here) and start afresh on the next publish().
        self._lock = threading.Lock()
        self._loop = self._thread = None
        self._node, self._node_url = None, ""


#: The one background loop and node of this process.
background = BackgroundNode()
atexit.register(background.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=background._after_fork)
