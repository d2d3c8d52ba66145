"""The HTTP API (``docs/http-api.md``): publish, batch, topics, history, presence, OpenAPI.

Owns: :mod:`~.errors` (the error codes and their HTTP statuses), :mod:`~.schemas` (every
request and response body, declared once), :mod:`~.keys` (API keys and their rate limit),
:mod:`~.openapi` (the document served at ``/api/openapi.json``, generated from the schemas) and
:mod:`~.views` (the endpoints). Each imports only those before it in this list.

May import: every layer below it (``core``, ``conf``, ``protocol``, ``backends``, ``engine``,
``server``).
"""
