"""The operator process itself: health and metrics endpoints, JSON logs,
graceful shutdown, and adoption of unfinished CRs after a restart."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
import uuid
from typing import Any

from helpers.kube import phase_in, wait_custom

GROUP, VERSION = "savepoint.dev", "v1alpha1"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def test_health_and_metrics(operator: Any, namespace: str, api: Any) -> None:
    _get(f"http://127.0.0.1:{operator.health_port}/healthz")
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "volumereverts", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "nothing-there"},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "s"}}})
    wait_custom(api, namespace, "volumereverts", "nothing-there", phase_in("Failed"))
    metrics = _get(f"http://127.0.0.1:{operator.env['SAVEPOINT_METRICS_PORT']}/metrics")
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for family in text_string_to_metric_families(metrics) for s in family.samples]
    failed = [s.value for s in samples if s.name == "savepoint_operations_total"
              and s.labels == {"kind": "VolumeRevert", "result": "failed", "namespace": namespace}]
    assert failed == [1.0], metrics[:2000]  # this namespace's one failure, labelled with it
    assert not [s for s in samples if s.name == "savepoint_action_start_timestamp_seconds"
                and s.labels.get("name") == "nothing-there"]  # finished: no longer an unfinished action
    for name in ("savepoint_operation_duration_seconds_bucket", "savepoint_movers_running",
                 "savepoint_waits_total", "savepoint_leftovers_cleaned_total"):
        assert name in metrics or f"# HELP {name.removesuffix('_bucket')}" in metrics, name


def test_json_logs_and_graceful_shutdown(crash_harness: Any) -> None:
    proc = crash_harness.start(log_format="json")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.proc.wait(30) == 0, f"no clean exit on SIGTERM; see {proc.log}"
    assert time.monotonic() - started < 30
    lines = [line for line in proc.log_text().splitlines() if line.startswith("{")]
    assert lines, proc.log_text()[:2000]
    records = [json.loads(line) for line in lines]
    assert all("message" in r and "timestamp" in r for r in records), records[:3]
    assert any("configured" in r["message"] for r in records)


def test_unfinished_crs_are_adopted_after_a_restart(kube: Any, crash_harness: Any) -> None:
    """Created while no operator runs, the CR is picked up when one starts."""
    api, ns = crash_harness.api, crash_harness.namespace
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "volumereverts", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "while-down"},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "s"}}})
    crash_harness.start()
    obj = wait_custom(api, ns, "volumereverts", "while-down", phase_in("Failed"))
    assert obj["status"]["conditions"][0]["reason"] in ("PvcNotFound",), obj["status"]
    assert json.dumps(obj["status"])  # status is plain JSON, no stack traces
    assert "Traceback" not in obj["status"]["message"]


def test_namespaces_created_while_the_operator_starts_are_all_served(kube: Any, chart: dict[str, str]) -> None:
    """kopf lists the namespaces matching ``watchNamespaces``, then lists them again to start its watch and
    ignored that second listing: a namespace made between the two was never served (savepoint/kube/
    kopf_namespaces.py). Namespaces are made one after another while a fresh operator starts; a CR in each
    must get its status. (As admin: this is about what the operator watches, not about who may create.)"""
    from kubernetes import client

    from helpers.operator_proc import OperatorProcess, free_port
    from helpers.operator_sa import operator_kubeconfig
    from helpers.tenant import delete_namespaces

    prefix = f"spburst-{uuid.uuid4().hex[:6]}-"  # no other operator serves these
    env = dict(chart, SAVEPOINT_WATCH_NAMESPACES=f"{prefix}*", SAVEPOINT_METRICS_PORT=str(free_port()))
    proc = OperatorProcess(kube.venv, operator_kubeconfig(kube), kube.logs / f"operator-{prefix}burst.log", env,
                           free_port())
    core, api = client.CoreV1Api(), client.CustomObjectsApi()
    made: list[str] = []
    healthy = threading.Event()

    def make_namespaces() -> None:
        # from before the process starts until 1.5 s after it is healthy: kopf's two listings fall in between
        until = float("inf")
        while time.monotonic() < until:
            name = f"{prefix}{len(made)}"
            core.create_namespace({"metadata": {"name": name}})
            made.append(name)
            if healthy.is_set() and until == float("inf"):
                until = time.monotonic() + 1.5
            time.sleep(0.03)

    maker = threading.Thread(target=make_namespaces, daemon=True)
    maker.start()
    try:
        proc.start()
        healthy.set()
        maker.join(60)
        assert not maker.is_alive()
        for ns in made:
            api.create_namespaced_custom_object(GROUP, VERSION, ns, "volumereverts", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeRevert", "metadata": {"name": "probe"},
                "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "s"}}})
        deadline = time.monotonic() + 60
        unserved = list(made)
        while unserved and time.monotonic() < deadline:
            unserved = [ns for ns in unserved
                        if not api.get_namespaced_custom_object(GROUP, VERSION, ns, "volumereverts", "probe").get("status")]
            time.sleep(0.5)
        assert not unserved, f"{len(unserved)} of {len(made)} namespaces never served: {unserved}"
    finally:
        delete_namespaces(made, plurals=("volumereverts",))  # while the operator runs to remove its finalizer
        proc.stop()
