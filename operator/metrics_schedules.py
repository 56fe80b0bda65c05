"""Prometheus metrics of SavepointSchedules (served on the operator's ``/metrics`` with the others)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LAST_SUCCESS = Gauge("savepoint_schedule_last_success_timestamp_seconds",
                     "When the newest successful run of a schedule ended (Unix time), by namespace, schedule and source.",
                     ["namespace", "schedule", "source"])
RUNS = Counter("savepoint_schedule_runs_total", "Finished schedule runs, by namespace, schedule and result.",
               ["namespace", "schedule", "result"])
STARTED = Counter("savepoint_schedule_runs_started_total", "Schedule runs whose child was created.",
                  ["namespace", "schedule"])
MISSED = Counter("savepoint_schedule_missed_runs_total",
                 "Slots skipped (operator down, previous run still running, startingDeadlineSeconds).",
                 ["namespace", "schedule"])
PRUNED = Counter("savepoint_schedule_pruned_total", "Children pruned by retention.", ["namespace", "schedule"])
PERIOD = Gauge("savepoint_schedule_period_seconds", "The gap between a schedule's next two slots (for alerts).",
               ["namespace", "schedule"])
