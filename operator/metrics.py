"""Prometheus metrics (``savepoint_*``), served on ``/metrics`` by the operator.

Every per-action metric carries the CR's ``namespace``, so a team can alert on
its own actions (``savepoint_operations_total{namespace="team-a"}``). The
chart's PrometheusRule (values ``metrics.prometheusRule``) and docs/install.md
("Alerts") use them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server


class Namespaced:
    """A metric whose last label is ``namespace``: ``.labels(kind, result, namespace=ns)``.

    A call that gives no namespace records ``namespace=""`` (an operator-wide
    step), so every call site keeps working while it learns to pass one.
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    def labels(self, *values: str, namespace: str = "") -> Any:
        return self.metric.labels(*values, namespace)

    def remove(self, *values: str, namespace: str = "") -> None:
        try:
            self.metric.remove(*values, namespace)
        except KeyError:
            pass


OPERATIONS = Namespaced(Counter("savepoint_operations_total",
                                "Finished Savepoint actions by kind, result and namespace.",
                                ["kind", "result", "namespace"]))
DURATION = Namespaced(Histogram("savepoint_operation_duration_seconds",
                                "Wall time of finished actions, by kind, result and namespace.",
                                ["kind", "result", "namespace"],
                                buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)))
BYTES_MOVED = Namespaced(Counter("savepoint_bytes_moved_total", "Bytes copied by movers, by kind and namespace.",
                                 ["kind", "namespace"]))
MOVERS_RUNNING = Gauge("savepoint_movers_running", "Mover Jobs currently running.")
LOCKS_HELD = Gauge("savepoint_locks_held", "PVC locks currently held by this operator's actions.")
LEFTOVERS = Namespaced(Counter(
    "savepoint_leftovers_cleaned_total",
    "Temporary objects found and removed after a restart or failure, by kind, object type and namespace.",
    ["kind", "object", "namespace"]))
FALLBACKS = Counter("savepoint_fallbacks_total", "ImageSnapshot fallbacks to a full copy, by reason.", ["reason"])
WAITS = Namespaced(Counter("savepoint_waits_total", "Times an action had to wait, by kind, reason and namespace.",
                           ["kind", "reason", "namespace"]))
LAST_SUCCESS = Namespaced(Gauge(
    "savepoint_last_success_timestamp_seconds",
    "Unix time of the last action of this kind that succeeded in the namespace (since the operator started).",
    ["kind", "namespace"]))
ACTION_STARTED = Namespaced(Gauge(
    "savepoint_action_start_timestamp_seconds",
    "Unix time each unfinished action started; removed when it ends. Old values are stuck actions.",
    ["kind", "name", "namespace"]))


def serve(port: int) -> None:
    if port:
        start_http_server(port)

# SavepointSchedule metrics live beside their controller; listed here so /metrics and the dashboard see one module.
from savepoint.metrics_schedules import LAST_SUCCESS as SCHEDULE_LAST_SUCCESS  # noqa: E402,F401
from savepoint.metrics_schedules import MISSED, PERIOD, PRUNED, RUNS, STARTED  # noqa: E402,F401
