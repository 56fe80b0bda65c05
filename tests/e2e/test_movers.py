"""The mover framework end to end: a real Job run by the pod runner in the
operator's namespace, with a real NFS volume, progress relayed into the
owner's status, the result from the termination message, the concurrency
limit (which no tenant can forge) and cleanup."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client

from helpers.kube import wait_gone
from helpers.movers import live_mover_objects
from sandboxlib import nfs as sandbox_nfs
from savepoint.engine import movers
from savepoint.kube import k8s
from savepoint.mover.checksum import manifest_lines
from savepoint.mover.request import MoverRequest, MoverVolume, NfsSource
from savepoint.settings import Settings


@pytest.fixture
def owner(kube: Any, chart: dict[str, str]) -> Iterator[k8s.Owner]:
    """A namespace no test operator serves, and a CR in it to own the Jobs."""
    ns = f"spm-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": ns}})
    body = client.CustomObjectsApi().create_namespaced_custom_object(
        "savepoint.dev", "v1alpha1", ns, "sharebackups",
        {"apiVersion": "savepoint.dev/v1alpha1", "kind": "ShareBackup", "metadata": {"name": "owner"},
         "spec": {"source": {"persistentVolumeClaim": {"name": "share"}},
                  "repository": {"persistentVolumeClaim": {"name": "repo"}}}})
    yield k8s.Owner.of(body)
    client.CoreV1Api().delete_namespace(ns)


def test_checksum_mover_runs_reports_progress_and_cleans_up(kube: Any, owner: k8s.Owner) -> None:
    export = sandbox_nfs.add_export(kube, "mover-test")
    root = Path(export.dir) / uuid.uuid4().hex[:6]
    (root / "sub").mkdir(parents=True)
    for i in range(20):
        (root / "sub" / f"f{i}").write_bytes(bytes([i]) * (1000 * i + 1))
    expected = hashlib.sha256(b"".join(line.encode() + b"\n" for line in manifest_lines(root))).hexdigest()
    request = MoverRequest(action="checksum-tree", params={"path": "/share"}, volumes=[
        MoverVolume(name="share", mount_path="/share", read_only=True,
                    nfs=NfsSource(server=export.server, path=f"{export.path}/{root.name}"))])
    settings = Settings(mover_image="savepoint:dev", mover_progress_interval=0.1)

    state = movers.ensure_mover(owner, "checksum", request, settings, deadline_seconds=120, wait=60)
    assert state.phase == "Succeeded", state
    assert state.result is not None and state.result.data == {"files": 20, "bytes": sum(1000 * i + 1 for i in range(20)),
                                                              "digest": expected}
    assert movers.ensure_mover(owner, "checksum", request, settings, deadline_seconds=120).phase == "Succeeded"

    status = client.CustomObjectsApi().get_namespaced_custom_object(
        "savepoint.dev", "v1alpha1", owner.namespace, "sharebackups", owner.name).get("status", {})
    assert status["progress"]["percent"] == 100 and status["progress"]["files"] == 20, status

    # The Job runs in the operator's namespace, never the CR's; no owner reference can cross namespaces.
    assert not client.BatchV1Api().list_namespaced_job(owner.namespace).items
    job = client.BatchV1Api().read_namespaced_job(state.job_name, settings.namespace)
    spec = job.spec.template.spec
    assert not job.metadata.owner_references
    assert job.metadata.labels[movers.OWNER_UID_LABEL] == owner.uid
    assert job.metadata.labels[movers.OWNER_NAMESPACE_LABEL] == owner.namespace
    assert spec.service_account_name == "savepoint-mover"
    assert spec.containers[0].security_context.run_as_non_root is True
    assert spec.containers[0].security_context.capabilities.drop == ["ALL"]

    movers.cleanup_mover(owner, "checksum", settings)
    wait_gone(lambda: client.BatchV1Api().read_namespaced_job(state.job_name, settings.namespace))
    assert not live_mover_objects(owner.namespace), "the progress ConfigMap goes with the Job"


def test_a_failing_mover_reports_its_reason(kube: Any, owner: k8s.Owner) -> None:
    export = sandbox_nfs.add_export(kube, "mover-test")
    request = MoverRequest(action="checksum-tree", params={"path": "/share/does-not-exist"}, volumes=[
        MoverVolume(name="share", mount_path="/share", nfs=NfsSource(server=export.server, path=export.path))])
    state = movers.ensure_mover(owner, "bad", request, Settings(), deadline_seconds=120, wait=60)
    assert state.phase == "Failed" and state.reason == "SourceUnreachable", state
    assert "/share/does-not-exist" in state.message
    movers.cleanup_mover(owner, "bad", Settings())


def test_the_concurrency_limit_counts_only_the_operators_jobs(kube: Any, owner: k8s.Owner) -> None:
    settings = Settings(mover_concurrency=1)
    never_runs = {"template": {"spec": {"schedulerName": "not-running", "restartPolicy": "Never",
                                        "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}
    request = MoverRequest(action="checksum-tree", params={"path": "/"})
    # A tenant's Job posing as a mover (in its own namespace) takes no slot.
    client.BatchV1Api().create_namespaced_job(owner.namespace, {
        "metadata": {"name": "poser", "labels": {movers.MOVER_LABEL: "true",
                                                 movers.OWNER_NAMESPACE_LABEL: owner.namespace}},
        "spec": never_runs})
    assert movers.running_by_namespace(settings)[owner.namespace] == 0
    # A mover of the operator's own that never gets a node does.
    client.BatchV1Api().create_namespaced_job(settings.namespace, {
        "metadata": {"name": f"occupant-{owner.namespace}", "labels": {
            movers.MOVER_LABEL: "true", movers.OWNER_NAMESPACE_LABEL: owner.namespace}},
        "spec": never_runs})
    try:
        assert movers.running_by_namespace(settings)[owner.namespace] == 1, "the occupant Job is not counted"
        state = movers.ensure_mover(owner, "waits", request, settings, deadline_seconds=60)
        assert state.phase == "Waiting" and state.reason == "MoverSlotsFull", state
        assert "number 1 of" in state.message and owner.namespace in state.message, state.message
        assert movers.mover_state(owner, "waits", settings) is None, "no Job may be created over the limit"
    finally:
        client.BatchV1Api().delete_namespaced_job(f"occupant-{owner.namespace}", settings.namespace,
                                                  propagation_policy="Background")
        movers.cleanup_mover(owner, "waits", settings)


def test_privileged_movers_are_refused_unless_allowed(kube: Any, owner: k8s.Owner) -> None:
    request = MoverRequest(action="checksum-tree", params={"path": "/"}, privileged=True)
    with pytest.raises(movers.MoverRefused) as refused:
        movers.ensure_mover(owner, "priv", request, Settings(), deadline_seconds=60)
    assert refused.value.reason == "PrivilegedMoverNotAllowed"
