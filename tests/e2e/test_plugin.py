"""``kubectl savepoint`` against the real API server and operator, run as a user would: as a process,
on a Python without the Ceph bindings (``tests/unit/test_cli.py`` makes it), through kubectl itself
for completion.

- reset-state is answered by the operator (the plugin has no librados), also refusing a live lock;
- list / status with -n and -A, -o name, --dry-run=server, delete waiting for the finalizer;
- version reads the operator's Deployment;
- logs on a mover pod in a cluster without the kubelet log API (the sandbox): the termination message;
- ``kubectl savepoint <TAB>`` through kubectl's plugin completion;
- a real revert through the plugin leaves no librados noise in the operator's log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client

from helpers import volumes
from helpers.kube import phase_in, wait_custom
from helpers.movers import OPERATOR_NAMESPACE
from savepoint.kube import resetrequest
from savepoint.storage import rbd

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_cli import no_rados_python  # noqa: E402

G, V = "savepoint.dev", "v1alpha1"
LIBRADOS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+\d{4} [0-9a-f]+ -1 ", re.MULTILINE)


@pytest.fixture(scope="module")
def laptop_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return no_rados_python(tmp_path_factory.mktemp("laptop"))


@pytest.fixture
def plugin(kube: Any, laptop_python: Path) -> Any:
    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KUBECONFIG")}
        return subprocess.run([str(laptop_python), "-m", "savepoint.cli", *args, "--kubeconfig", str(kube.kubeconfig)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    return run


def _pvc(namespace: str, name: str = "data", annotations: dict[str, str] | None = None) -> None:
    client.CoreV1Api().create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "resources": {"requests": {"storage": "1Gi"}}}})


def _annotations(namespace: str, name: str = "data") -> dict[str, str]:
    return client.CoreV1Api().read_namespaced_persistent_volume_claim(name, namespace).metadata.annotations or {}


def test_reset_state_is_done_by_the_operator(kube: Any, operator: Any, namespace: str, plugin: Any) -> None:
    _pvc(namespace, annotations={"savepoint.dev/state": "backup-restoring-error"})
    out = plugin("reset-state", "pvc/data", "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pvc/data: savepoint state reset (was 'backup-restoring-error')"
    # The plugin read the operator's answer and removed it: no Savepoint annotation is left.
    assert not {k for k in _annotations(namespace) if k.startswith("savepoint.dev/")}
    events = client.CoreV1Api().list_namespaced_event(namespace, field_selector="involvedObject.name=data").items
    assert [e.reason for e in events if e.reason.startswith("StateReset")] == ["StateReset"]
    # Nothing to reset: said so, exit 0.
    again = plugin("reset-state", "pvc/data", "-n", namespace)
    assert again.returncode == 0 and again.stdout.strip() == "pvc/data: nothing to reset", again.stderr


def test_reset_state_refuses_a_live_lock_unless_forced(kube: Any, operator: Any, namespace: str, plugin: Any) -> None:
    holder = client.CustomObjectsApi().create_namespaced_custom_object(G, V, namespace, "volumereverts", {
        "apiVersion": f"{G}/{V}", "kind": "VolumeRevert", "metadata": {"name": "holder"},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "elsewhere"}}, "snapshot": {"rbdSnapshot": "s"}}})
    _pvc(namespace, annotations={"savepoint.dev/lock": "VolumeRevert/holder",
                                 "savepoint.dev/lock-uid": holder["metadata"]["uid"],
                                 "savepoint.dev/state": "reverting"})
    refused = plugin("reset-state", "pvc/data", "-n", namespace)
    assert refused.returncode == 1 and "locked by VolumeRevert/holder" in refused.stderr, refused.stderr
    assert "--force" in refused.stderr and _annotations(namespace)["savepoint.dev/state"] == "reverting"
    forced = plugin("reset-state", "pvc/data", "-n", namespace, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "was 'reverting'" in forced.stdout and "still running (forced)" in forced.stdout
    assert not {k for k in _annotations(namespace) if k in ("savepoint.dev/lock", "savepoint.dev/state")}


def test_reset_state_without_an_operator_says_so(kube: Any, namespace: str, plugin: Any) -> None:
    # A namespace no operator serves (the session's operator serves only its own prefix).
    other = f"unserved-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": other}})
    try:
        _pvc(other, annotations={"savepoint.dev/state": "error"})
        out = plugin("reset-state", "pvc/data", "-n", other, "--timeout", "3")
        assert out.returncode == 1 and "did not answer within 3s" in out.stderr, out.stderr
        assert _annotations(other)["savepoint.dev/state"] == "error"  # nothing else touched it
        assert resetrequest.REQUEST in _annotations(other)
    finally:
        client.CoreV1Api().delete_namespace(other)


def test_list_status_dry_run_and_delete(kube: Any, operator: Any, namespace: str, plugin: Any) -> None:
    dry = plugin("revert", "missing", "--to", "snap", "--name", "r0", "-n", namespace, "--dry-run=server", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    validated = json.loads(dry.stdout)
    assert validated["spec"]["safetySnapshot"] is True and validated["metadata"]["uid"]  # the server filled it in
    assert plugin("list", "-n", namespace).stderr.startswith("No Savepoint resources found")
    made = plugin("revert", "missing", "--to", "snap", "--name", "r1", "-n", namespace)
    assert made.returncode == 0 and made.stdout == "volumerevert.savepoint.dev/r1 created\n", made.stderr
    wait_custom(client.CustomObjectsApi(), namespace, "volumereverts", "r1", phase_in("Failed"), 60)
    table = plugin("list", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "PROGRESS", "SOURCE", "AGE"]
    assert table[1].split()[:3] == ["volumerevert/r1", "Failed", "PvcNotFound"]
    everywhere = plugin("list", "vrev", "-A").stdout.splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE" and any(line.split()[:2] == [namespace, "volumerevert/r1"]
                                                            for line in everywhere)
    assert plugin("status", "vrev", "-n", namespace, "-o", "name").stdout == "volumerevert.savepoint.dev/r1\n"
    everyone = plugin("status", "vrev", "-A")
    assert f"{namespace}/VolumeRevert/r1  phase=Failed" in everyone.stdout, everyone.stderr
    shown = plugin("status", "vrev/r1", "-n", namespace)
    assert "reason:  PvcNotFound" in shown.stdout and "RevertFailed" in shown.stdout
    gone = plugin("delete", "vrev", "r1", "-n", namespace)
    assert gone.returncode == 0 and gone.stdout == 'volumerevert.savepoint.dev "r1" deleted\n', gone.stderr
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi().get_namespaced_custom_object(G, V, namespace, "volumereverts", "r1")
    assert err.value.status == 404  # delete waited for the operator's finalizer
    assert plugin("delete", "vrev/r1", "-n", namespace, "--ignore-not-found").returncode == 0
    assert plugin("delete", "vrev/r1", "-n", namespace).returncode == 1


def test_version_shows_the_operator_from_the_cluster(kube: Any, chart: dict[str, str], plugin: Any) -> None:
    out = plugin("version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Plugin version: 0.1.0\n")
    assert "Operator version: 0.1.0 (deployment savepoint-system/savepoint-operator, image " \
           "ghcr.io/savepoint-dev/savepoint:0.1.0, replicas 0)" in out.stdout
    doc = json.loads(plugin("version", "-o", "json").stdout)
    assert doc["plugin"] == {"version": "0.1.0"}
    assert {"namespace": "savepoint-system", "name": "savepoint-operator"}.items() <= next(
        d for d in doc["operators"] if d["namespace"] == "savepoint-system").items()


def test_logs_shows_what_the_cluster_keeps(kube: Any, operator: Any, namespace: str, plugin: Any) -> None:
    """A failed mover-like Job owned by the CR: the sandbox serves no pod logs (no kubelet), so logs shows
    the container's state and termination message (the log tail, FallbackToLogsOnError), and says why."""
    cr = client.CustomObjectsApi().create_namespaced_custom_object(G, V, namespace, "volumereverts", {
        "apiVersion": f"{G}/{V}", "kind": "VolumeRevert", "metadata": {"name": "r2"},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "s"}}})
    # Movers run in the operator's namespace, labelled with their CR's uid (an admin reads them there).
    labels = {"savepoint.dev/owner-uid": cr["metadata"]["uid"]}
    job = f"r2-copy-{namespace}"[:52]
    client.BatchV1Api().create_namespaced_job(OPERATOR_NAMESPACE, {
        "metadata": {"name": job, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": {
            "restartPolicy": "Never", "containers": [{
                "name": "mover", "image": "ignored", "terminationMessagePolicy": "FallbackToLogsOnError",
                "command": ["/bin/sh", "-c", "echo copying block 1; echo 'read error at block 7' >&2; exit 3"]}]}}}})
    try:
        _wait_terminated(OPERATOR_NAMESPACE, job)
        out = plugin("logs", "vrev", "r2", "-n", namespace)
    finally:
        client.BatchV1Api().delete_namespaced_job(job, OPERATOR_NAMESPACE, propagation_policy="Background")
    assert out.returncode == 0, out.stderr
    assert "container mover: terminated (Error, exit code 3)" in out.stdout
    assert "log not readable through the API server" in out.stdout
    assert "| read error at block 7" in out.stdout and "| copying block 1" in out.stdout


def _wait_terminated(namespace: str, job: str, timeout: int = 120) -> None:
    """Watch the Job's pods until a container has terminated (the pod runner wrote its status)."""
    from kubernetes import watch

    w = watch.Watch()
    for event in w.stream(client.CoreV1Api().list_namespaced_pod, namespace,
                          label_selector=f"batch.kubernetes.io/job-name={job}", timeout_seconds=timeout):
        statuses = event["object"].status.container_statuses or []
        if any(cs.state and cs.state.terminated for cs in statuses):
            w.stop()
            return
    raise AssertionError(f"no pod of Job {job} terminated within {timeout}s")


def test_kubectl_completes_the_plugin(kube: Any, operator: Any, namespace: str) -> None:
    client.CustomObjectsApi().create_namespaced_custom_object(G, V, namespace, "sharebackups", {
        "apiVersion": f"{G}/{V}", "kind": "ShareBackup", "metadata": {"name": "monday"},
        "spec": {"source": {"persistentVolumeClaim": {"name": "missing"}}}})
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", KUBECONFIG=str(kube.kubeconfig))

    def complete(*words: str) -> list[str]:
        out = subprocess.run([str(kube.bin / "kubectl"), "__complete", "savepoint", *words], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert {"status", "backup", "reset-state"} <= set(complete(""))
    assert "sbak/monday" in complete("status", "-n", namespace, "sbak/")
    assert "sharebackup/monday" in complete("reset-state", "-n", namespace, "sharebackup/")


@pytest.fixture
def rbd_volume(kube: Any, namespace: str) -> Iterator[volumes.RbdVolume]:
    vol = volumes.rbd_pvc(kube, namespace, "disk", size=16 << 20, data={0: b"before" * 100})
    yield vol
    volumes.delete_rbd_volume(kube, vol)


def test_revert_through_the_plugin_leaves_no_librados_noise(kube: Any, operator: Any, namespace: str, plugin: Any,
                                                            rbd_volume: volumes.RbdVolume) -> None:
    with volumes.cluster(kube) as c:
        with rbd.open_ref(c, rbd_volume.ref) as image:
            rbd.create_snapshot(image, "good")
        volumes.write(c, rbd_volume.ref, {0: b"after!" * 100})
    # The published ceph-csi config as this checkout writes it (a sandbox brought up from an older
    # checkout may have written the plain form); the operator reads it for every action.
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "publish"], check=True, capture_output=True)
    start = len(operator.log_text())
    out = plugin("revert", "disk", "--to", "good", "-n", namespace, "--wait", "--timeout", "120")
    assert out.returncode == 0 and "phase=Succeeded" in out.stdout, out.stdout + out.stderr
    with volumes.cluster(kube) as c:
        assert volumes.read(c, rbd_volume.ref, 0, 600) == b"before" * 100
    log = operator.log_text()[start:]
    assert "volumerevert" in log.lower()  # the operator did log this revert...
    assert not LIBRADOS_LINE.search(log) and "msgr V1" not in log, LIBRADOS_LINE.findall(log)  # ...and nothing else
