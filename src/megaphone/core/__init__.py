"""The pure core: what a message is and how it reaches the local sockets, with no I/O and no Django.

Owns: :mod:`~.message` (a published message and its one-time encodings), :mod:`~.hub` (topic ->
local subscribers), :mod:`~.outbox` (one bounded queue per connection), :mod:`~.frames`
(WebSocket frames written once per message), :mod:`~.topics` (topic names), :mod:`~.ratelimit`
(the token bucket), :mod:`~.closecodes`, :mod:`~.decoding` (the strict decoding boundary),
:mod:`~.logs` (escaped, redacted log records) and :mod:`~.metrics` (Prometheus counters).

May import: nothing of Megaphone's outside ``core``. Everything else builds on it.
"""
