"""Crash points: where tests kill the operator to prove every step survives it.

``crash_point("revert:locked")`` does nothing unless the environment variable
``SAVEPOINT_CRASH_AT`` names that point; then the process dies on the spot with
``os._exit`` (no cleanup, no finally blocks: what SIGKILL or a node loss does).
``SAVEPOINT_CRASH_AT=name@0.05`` dies 0.05 s *after* the point, from another
thread, so a long Ceph call is cut off midway.  Never set in production.
"""

from __future__ import annotations

import os
import threading

ENV = "SAVEPOINT_CRASH_AT"
EXIT_CODE = 137  # what a SIGKILLed process reports


def crash_point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, delay = wanted.partition("@")
    if point != name:
        return
    if not delay:
        os._exit(EXIT_CODE)
    timer = threading.Timer(float(delay), os._exit, args=(EXIT_CODE,))
    timer.daemon = True
    timer.start()
