"""The Grafana dashboard (manifests/grafana/savepoint-dashboard.json) and the operator's metrics agree.

Every series a panel queries is one the operator exports (taken from the
prometheus_client collectors in operator/metrics.py, with the suffixes the
exposition format adds: ``_total`` for counters, ``_bucket``/``_sum``/``_count``
for histograms), every label a query selects or groups by is one of that
metric's labels, every metric is shown somewhere, and every ``$variable`` is
defined. The result label values the queries match are the ones the flows use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from savepoint import metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "manifests" / "grafana" / "savepoint-dashboard.json").read_text())


def exported() -> dict[str, set[str]]:
    """Series name -> label names, for every collector in operator/metrics.py."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        value = getattr(value, "metric", value)  # metrics.Namespaced wraps one
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind, labels = value._name, value._type, set(value._labelnames)
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[name] = labels
    assert series, "operator/metrics.py defines no metrics?"
    return series


def panels() -> Iterator[dict[str, Any]]:
    for panel in DASHBOARD["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def test_every_queried_series_exists_with_its_labels() -> None:
    series = exported()
    assert queries()
    for title, expr in queries():
        names = set(re.findall(r"\bsavepoint_[a-z0-9_]+\b", expr))
        assert names, f"{title}: queries no savepoint_* metric: {expr}"
        for name in names:
            assert name in series, f"{title}: {name} is not exported by operator/metrics.py"
        allowed = set().union(*(series[n] for n in names))
        for selector in re.findall(r"savepoint_[a-z0-9_]+\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
                assert label in allowed, f"{title}: label {label} is not on {names}"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in [g.strip() for g in group.split(",")]:
                assert label in allowed, f"{title}: groups by {label}, which {names} do not have"
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_every_metric_is_on_the_dashboard() -> None:
    used = set(re.findall(r"\bsavepoint_[a-z0-9_]+\b", " ".join(e for _, e in queries())))
    families = {re.sub(r"_(total|bucket|sum|count)$", "", s) for s in exported()}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", s) for s in used}
    assert families - shown == set(), f"not on the dashboard: {families - shown}"


def test_result_values_are_the_ones_the_operator_records() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "operator").rglob("*.py"))
    recorded = set(re.findall(r'OPERATIONS\.labels\([^,]+,\s*"([a-z_]+)"[,)]', sources))
    recorded |= set(re.findall(r'self\._observe\("([a-z_]+)"\)', sources))
    for _, expr in queries():
        for values in re.findall(r'result=~?"([^"]+)"', expr):
            for value in values.split("|"):
                assert value in recorded, f"result {value!r} is never recorded (recorded: {sorted(recorded)})"


def test_variables_are_defined_and_panels_do_not_overlap() -> None:
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]}
    text = json.dumps(DASHBOARD["panels"])
    used = set(re.findall(r"\$\{?([a-z_]+)\}?", text)) - {"__range", "__rate_interval", "__all"}
    assert used <= defined, used - defined
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels():
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    assert DASHBOARD["uid"] == "savepoint-operator"


def test_per_action_metrics_are_labelled_by_namespace() -> None:
    """Teams alert on their own namespace: every per-action series has the label, and the
    dashboard's $namespace variable selects on it wherever it exists."""
    series = exported()
    per_action = {n for n in series if not n.startswith(("savepoint_movers_running", "savepoint_locks_held",
                                                         "savepoint_fallbacks"))}
    assert {n for n in per_action if "namespace" not in series[n]} == set()
    for title, expr in queries():
        for name, selector in re.findall(r"(savepoint_[a-z0-9_]+)\{([^}]*)\}", expr):
            if "namespace" in series[name]:
                assert 'namespace=~"$namespace"' in selector, f"{title}: {name} ignores $namespace"


def test_namespaced_metrics_record_the_namespace() -> None:
    from prometheus_client import REGISTRY

    metrics.OPERATIONS.labels("VolumeRevert", "succeeded", namespace="team-a").inc()
    metrics.BYTES_MOVED.labels("ShareBackup").inc(5)  # a call site that passes none yet
    assert REGISTRY.get_sample_value("savepoint_operations_total",
                                     {"kind": "VolumeRevert", "result": "succeeded", "namespace": "team-a"}) >= 1
    assert REGISTRY.get_sample_value("savepoint_bytes_moved_total", {"kind": "ShareBackup", "namespace": ""}) >= 5
    metrics.ACTION_STARTED.labels("ShareBackup", "b1", namespace="team-a").set(1.0)
    metrics.ACTION_STARTED.remove("ShareBackup", "b1", namespace="team-a")
    metrics.ACTION_STARTED.remove("ShareBackup", "b1", namespace="team-a")  # twice: no error
    assert REGISTRY.get_sample_value("savepoint_action_start_timestamp_seconds",
                                     {"kind": "ShareBackup", "name": "b1", "namespace": "team-a"}) is None
