"""The example project's settings as the end-to-end tiers run it: the same, plus an explicit
``PERMISSIONS`` that lets clients publish on every public topic.

The suite's clients publish on topics of their own (``news``, ``room.1``, ...), which the default
policy keeps closed to clients (only ``broadcast`` and ``broadcast.*`` are open:
``tests/unit/test_default_permissions.py`` and ``tests/e2e/test_readme.py`` test the default).
"""

from example.settings import *  # noqa: F403
from example.settings import MEGAPHONE

#: The policy Megaphone applied by default before clients were kept off server-fed topics.
OPEN_PERMISSIONS = [
    {"topics": "user:*", "default": "owner"},
    {"topics": "_megaphone.*", "default": "staff"},
    {"topics": "*", "default": "anyone"},
]

MEGAPHONE = {**MEGAPHONE, "PERMISSIONS": OPEN_PERMISSIONS}
