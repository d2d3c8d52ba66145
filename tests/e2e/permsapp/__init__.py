"""A Django app of the permission tests: object permissions through django-rules."""
