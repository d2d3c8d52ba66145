"""The HTTP API (``docs/http-api.md``): publish, batch, topics, history, presence, OpenAPI.

Owns: :mod:`~.views` (the endpoints, API keys, request validation) and :mod:`~.openapi` (the
document served at ``/api/openapi.json``).

May import: every layer below it (``core``, ``conf``, ``protocol``, ``backends``, ``engine``,
``server``).
"""
