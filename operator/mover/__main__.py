"""``python -m savepoint.mover``: run the request in ``SAVEPOINT_MOVER_REQUEST``.

The result goes to the termination message (``/dev/termination-log``, or
``SAVEPOINT_TERMINATION_LOG``) as JSON; the exit code is 0 only on success.

Start-up is kept short (``bench/bench_mover_start.py``): the standard library
reads the request and writes the result (``savepoint.mover.wire``), only the
requested action's module is imported, progress needs no Kubernetes client,
and an action connects to Ceph itself, only if it uses Ceph.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from savepoint.mover import registry, wire
from savepoint.mover.progress import ConfigMapProgress


def _write_result(result: wire.Result) -> None:
    path = os.environ.get("SAVEPOINT_TERMINATION_LOG", "/dev/termination-log")
    try:
        with open(path, "w") as f:
            f.write(wire.termination_message(result.as_dict()))
    except OSError as exc:
        print(f"savepoint-mover: cannot write termination message to {path}: {exc}", file=sys.stderr)
    print(result.to_json(), flush=True)


def _ceph_from_env() -> dict[str, str] | None:
    monitors = os.environ.get("SAVEPOINT_CEPH_MONITORS")
    if not monitors:
        return None
    return {"monitors": monitors, "user_id": os.environ.get("SAVEPOINT_CEPH_USER_ID", ""),
            "key": os.environ.get("SAVEPOINT_CEPH_KEY", "")}


def _count(data: dict[str, Any], *keys: str) -> int | None:
    """The sum of the counts an action reported under ``keys`` (None: it reported none of them)."""
    values = [data.get(key) for key in keys]
    counted = [v for v in values if type(v) is int and v >= 0]
    return sum(counted) if counted else None


def _moved(data: dict[str, Any]) -> dict[str, int | None]:
    """What the action read and wrote, from its own counts: ``bytesRead`` (plus ``bytesReadRepository``,
    parent chunks an incremental re-read) and ``bytesWritten`` (else ``bytesStored``)."""
    return {"bytes_read": _count(data, "bytesRead", "bytesReadRepository"),
            "bytes_written": _count(data, "bytesWritten") if "bytesWritten" in data else _count(data, "bytesStored")}


def run(request: wire.Request, progress: ConfigMapProgress | None) -> wire.Result:
    fn = registry.get(request.action)
    if fn is None:
        return wire.Result(ok=False, reason="UnknownMoverAction",
                           message=f"mover action {request.action!r} is not one of {', '.join(registry.names())}")

    def report(done: int, total: int, *, files: int | None = None) -> None:
        if progress is not None:
            progress(done, total, files=files)

    ctx = registry.ActionContext(progress=report, ceph=_ceph_from_env())
    try:
        data = fn(dict(request.params), ctx)
    except registry.ActionFailed as exc:
        return wire.Result(ok=False, reason=exc.reason, message=exc.message, data=exc.data, **_moved(exc.data))
    except Exception as exc:  # noqa: BLE001 - a crash still gets a readable verdict
        traceback.print_exc()
        return wire.Result(ok=False, reason="MoverError", message=f"{type(exc).__name__}: {exc}")
    if progress is not None:
        total = int(data.get("bytes", 0) or 0)
        progress(total, total, files=data.get("files"), force=True)
    return wire.Result(ok=True, data=data, **_moved(data))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw = os.environ.get("SAVEPOINT_MOVER_REQUEST")
    if not raw:
        _write_result(wire.Result(ok=False, reason="BadMoverRequest", message="SAVEPOINT_MOVER_REQUEST is not set"))
        return 2
    try:
        request = wire.parse_request(raw)
    except wire.BadRequest as exc:
        _write_result(wire.Result(ok=False, reason="BadMoverRequest", message=str(exc).splitlines()[0]))
        return 2
    result = run(request, ConfigMapProgress.from_env())
    _write_result(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
