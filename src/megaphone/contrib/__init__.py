"""Optional parts built on the rest: nothing below imports them.

Owns: :mod:`~.dashboard` (the staff page), :mod:`~.health` (``/healthz``, ``/readyz``,
``/metrics``) and :mod:`~.model_broadcast` (``broadcast_model``: model changes as messages).

May import: every layer below it.
"""
