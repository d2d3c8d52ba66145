"""Serving clients: sockets, handshakes, sessions and the policy that decides who may do what.

Owns: :mod:`~.consumers` (the ASGI WebSocket endpoints), :mod:`~.sse` (the Server-Sent Events
endpoints), :mod:`~.connection` (a socket's outbox
and writer), :mod:`~.session` (the JSON protocol over one connection), :mod:`~.uvicorn`,
:mod:`~.uvicorn_contract` and :mod:`~.uvicorn_options` (``manage.py serve``'s server), the
handshake guards (:mod:`~.guards`, :mod:`~.origins`, :mod:`~.auth`, :mod:`~.tokens`),
:mod:`~.permissions` (the topic policy) and :mod:`~.bodylimit` (HTTP request bodies).

May import: :mod:`megaphone.core`, :mod:`megaphone.conf`, :mod:`megaphone.protocol`,
:mod:`megaphone.backends`, :mod:`megaphone.engine`.
"""
