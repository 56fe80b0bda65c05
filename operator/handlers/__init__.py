"""kopf handlers, one module per kind; importing this package registers them all."""

from savepoint.handlers import runtime, volumerevert  # noqa: F401
