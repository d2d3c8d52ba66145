"""The engine: one :class:`~.node.Node` per process, between the backend and the local hub.

Owns: :mod:`~.node` (publish -> backend -> hub, history, presence), :mod:`~.publishing` (the
public ``publish()``/``apublish()`` from any thread or process), :mod:`~.background` (the
background event loop sync callers publish through), :mod:`~.joinleave` (presence
join/leave events, coalesced) and :mod:`~.stats` (each worker's figures for the dashboard).

May import: :mod:`megaphone.core`, :mod:`megaphone.conf`, :mod:`megaphone.protocol`,
:mod:`megaphone.backends`.
"""
