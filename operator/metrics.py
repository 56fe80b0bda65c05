"""Prometheus metrics (``savepoint_*``), served on ``/metrics`` by the operator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

OPERATIONS = Counter("savepoint_operations_total", "Finished Savepoint actions by kind and result.",
                     ["kind", "result"])
DURATION = Histogram("savepoint_operation_duration_seconds", "Wall time of finished actions, by kind and result.",
                     ["kind", "result"], buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
BYTES_MOVED = Counter("savepoint_bytes_moved_total", "Bytes copied by movers, by kind.", ["kind"])
MOVERS_RUNNING = Gauge("savepoint_movers_running", "Mover Jobs currently running.")
LOCKS_HELD = Gauge("savepoint_locks_held", "PVC locks currently held by this operator's actions.")
LEFTOVERS = Counter("savepoint_leftovers_cleaned_total",
                    "Temporary objects found and removed after a restart or failure, by kind and object type.",
                    ["kind", "object"])
FALLBACKS = Counter("savepoint_fallbacks_total", "ImageSnapshot fallbacks to a full copy, by reason.", ["reason"])
WAITS = Counter("savepoint_waits_total", "Times an action had to wait, by kind and reason.", ["kind", "reason"])


def serve(port: int) -> None:
    if port:
        start_http_server(port)
