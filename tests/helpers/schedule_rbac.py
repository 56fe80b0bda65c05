"""The chart's SavepointSchedule RBAC for the operator, applied once more outside the Helm release.

The sandbox's chart release is shared by every test session; one installed from a checkout whose chart
has no rbac-schedules.yaml removes it mid-run. A copy under a name of its own (the same rules, rendered
from this checkout's chart) keeps schedule tests and benchmarks about schedules, not about who installed
last. Harmless once every checkout's chart has the template.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import yaml

from helpers import chart


@contextlib.contextmanager
def schedule_rbac(cfg: Any) -> Iterator[None]:
    rendered = chart.run(cfg.bin / "helm", "template", chart.RELEASE, chart.ROOT / "charts" / "savepoint",
                         "--namespace", chart.OPERATOR_NAMESPACE, "--set", "replicas=0",
                         "--show-only", "templates/rbac-schedules.yaml")
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("ClusterRole", "ClusterRoleBinding")
            and d["metadata"]["name"].endswith("-schedules")]
    assert len(docs) == 2, docs
    suffix = f"-copy-{uuid.uuid4().hex[:4]}"
    for doc in docs:
        doc["metadata"]["name"] += suffix
        doc["metadata"]["labels"] = {"savepoint.dev/test": "schedules"}
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += suffix
    kubectl = (cfg.bin / "kubectl", "--kubeconfig", cfg.kubeconfig)
    chart.run(*kubectl, "apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs))
    try:
        yield
    finally:
        for doc in docs:
            chart.run(*kubectl, "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found")
