# Stubs of the part of Channels (4.x) that Megaphone uses, for `mypy --strict` on src/
# (pyproject.toml [tool.mypy] mypy_path). Channels ships no types, and channels-stubs pins
# django<6 and django-stubs<6, outside Megaphone's range. A name missing here fails the check:
# add it, typed after Channels' source.
__version__: str
