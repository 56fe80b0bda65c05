"""kopf handlers, one module per kind; importing this package registers them all."""

from savepoint.handlers import imagesnapshot, reset, runtime, schedule, sharebackup, sharerestore, usage, volumerevert  # noqa: F401
