"""Where a namespace's mover Jobs are: in the operator's namespace, labelled with the CR's namespace."""

from __future__ import annotations

from kubernetes import client

from savepoint.engine import movers

OPERATOR_NAMESPACE = "savepoint-system"  # where the chart is installed in the sandbox


def live_mover_objects(namespace: str) -> list[str]:
    """Mover Jobs, Ceph Secrets and progress ConfigMaps still there for CRs of ``namespace``."""
    selector = f"{movers.MOVER_LABEL}=true,{movers.OWNER_NAMESPACE_LABEL}={namespace}"
    core, batch = client.CoreV1Api(), client.BatchV1Api()
    found = []
    for kind, lister in (("job", batch.list_namespaced_job), ("secret", core.list_namespaced_secret),
                         ("configmap", core.list_namespaced_config_map)):
        for obj in lister(OPERATOR_NAMESPACE, label_selector=selector).items:
            if not obj.metadata.deletion_timestamp:
                found.append(f"{kind}/{obj.metadata.name}")
    return found


def live_jobs(namespace: str) -> list[str]:
    return [name for name in live_mover_objects(namespace) if name.startswith("job/")]



def occupy_mover_slot(name: str) -> str:
    """A mover Job of another namespace that never gets a node: with mover concurrency 1, every other mover
    waits in the queue (MoverLimit) until ``free_mover_slot``."""
    client.BatchV1Api().create_namespaced_job(OPERATOR_NAMESPACE, {
        "metadata": {"name": name, "labels": {movers.MOVER_LABEL: "true", movers.OWNER_NAMESPACE_LABEL: "other"}},
        "spec": {"template": {"spec": {"schedulerName": "not-running", "restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}})
    return name


def free_mover_slot(name: str) -> None:
    client.BatchV1Api().delete_namespaced_job(name, OPERATOR_NAMESPACE, propagation_policy="Background")
