"""The JSON protocol's wire format (``docs/protocol.md``): its frames, ops, error codes and limits.

Owns: :mod:`~.schema`, how a client's frame is read and how the server's frames are written.
Pure: no I/O, no Django. The session that runs the protocol over a connection lives in
:mod:`megaphone.server.session`.

May import: :mod:`megaphone.core`.
"""
