"""docs/install.md "First steps", run as written: every ``sh`` block of the section, taken from the doc
itself, in order, with bash -e, in namespace ``demo``, with an operator from this checkout serving it.

What the doc assumes, and what the sandbox cannot do, is done by stand-ins, each named here:

- ceph-csi's provisioner: ``app-data`` is a static PV with ceph-csi's attributes for an RBD image the test
  creates (tests/helpers/volumes.py), holding "version 1";
- the application: Deployment ``app`` runs ``sleep`` and does not mount ``app-data`` (the pod runner cannot
  mount RBD); between the snapshot and the revert the test writes "version 2" into the image, as the
  application would;
- the snapshot controller and ceph-csi's snapshotter: when the doc's VolumeSnapshot appears, the test
  makes ceph-csi's ``csi-snap-*`` image and binds a ready VolumeSnapshotContent to it;
- ``shared-files`` and ``backup-repo``: NFS exports of the sandbox's nfs-ganesha, bound through static NFS PVs.

Each block's exit status is checked, then what it should have done (the data reverted, the backup in the
repository, the image made).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from helpers import volumes
from helpers.kube import phase_in, wait_custom
from helpers.operator_proc import OperatorProcess
from helpers.operator_sa import operator_kubeconfig
from sandboxlib import nfs

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
NS = "demo"
G, V = "savepoint.dev", "v1alpha1"
PLURALS = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots")


def first_steps_blocks() -> list[str]:
    text = DOC.read_text()
    start = text.index("\n## First steps\n")
    end = text.index("\n## ", start + 5)
    return re.findall(r"^```sh\n(.*?)^```", text[start:end], re.MULTILINE | re.DOTALL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clear_namespace(timeout: float = 120) -> None:
    """Our CRs first (their finalizers need the operator), then the namespace."""
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    try:
        core.read_namespace(NS)
    except client.ApiException:
        return
    for plural in PLURALS:
        api.delete_collection_namespaced_custom_object(G, V, NS, plural)
    deadline = time.monotonic() + timeout
    while any(api.list_namespaced_custom_object(G, V, NS, p)["items"] for p in PLURALS):
        assert time.monotonic() < deadline, "Savepoint CRs in demo were not finalized"
        time.sleep(0.5)
    core.delete_namespace(NS)
    while True:
        try:
            core.read_namespace(NS)
        except client.ApiException:
            return
        assert time.monotonic() < deadline, "namespace demo did not go"
        time.sleep(0.5)


@pytest.fixture
def demo(kube: Any, chart: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Namespace demo with what the doc assumes, and an operator serving it."""
    env = dict(chart, SAVEPOINT_WATCH_NAMESPACES=NS, SAVEPOINT_METRICS_PORT=str(_free_port()))
    proc = OperatorProcess(kube.venv, operator_kubeconfig(kube), kube.logs / "operator-walkthrough.log", env,
                           _free_port())
    proc.start()
    made: dict[str, Any] = {}
    try:
        _clear_namespace()  # an earlier run's, finalized by this operator
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": NS}})
        made["app"] = volumes.rbd_pvc(kube, NS, "app-data", size=16 << 20, data={0: b"version 1\n"})
        client.AppsV1Api().create_namespaced_deployment(NS, {
            "metadata": {"name": "app"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app"}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "app", "image": "ignored", "command": ["sleep", "3600"]}]}}}})
        share, repo = nfs.add_export(kube, "walkthrough-shared"), nfs.add_export(kube, "walkthrough-repo")
        (Path(share.dir) / "report.txt").write_text("quarterly report\n")
        (Path(share.dir) / "notes").mkdir(exist_ok=True)
        (Path(share.dir) / "notes" / "todo.md").write_text("- back up\n")
        made["pvs"] = []
        for claim, export, size in (("shared-files", share, "1Gi"), ("backup-repo", repo, "4Gi")):
            pv = f"walkthrough-{claim}-{uuid.uuid4().hex[:6]}"
            made["pvs"].append(pv)
            core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
                "capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "nfs": {"server": export.server, "path": export.path}, "claimRef": {"namespace": NS, "name": claim}}})
            core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": claim}, "spec": {
                "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                "resources": {"requests": {"storage": size}}}})
        made.update(share=share, repo=repo, operator=proc)
        yield made
    finally:
        try:
            _clear_namespace()
        finally:
            proc.stop()
            for snap in made.get("snapshots", []):
                volumes.delete_csi_snapshot(kube, snap)
            if "app" in made:
                volumes.delete_rbd_volume(kube, made["app"])
            for pv in made.get("pvs", []):
                client.CoreV1Api().delete_persistent_volume(pv)


def _bash(kube: Any, script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    path = f"{kube.bin}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    full = dict(os.environ, PATH=path, KUBECONFIG=str(kube.kubeconfig), **env)
    return subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full)


def _finish(proc: subprocess.Popen[str], what: str, operator: OperatorProcess, timeout: float = 300) -> str:
    """The block's output once it exited 0; fails at once, with the operator's last words, if it died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, _ = proc.communicate(timeout=1)
            break
        except subprocess.TimeoutExpired:
            died = operator.death()
            if died is None and time.monotonic() < deadline:
                continue
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"{what} did not end: " + (f"the operator {died}" if died else f"{timeout}s passed")
                                 + f"\nthe block printed:\n{out}") from None
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{out}"
    return out


def test_first_steps_as_written(kube: Any, demo: dict[str, Any]) -> None:
    blocks = first_steps_blocks()
    assert len(blocks) == 5, "the walkthrough's sh blocks changed: update this test's stand-ins"
    snapshot_block, revert_block, backup_block, image_block, look_block = blocks
    env: dict[str, str] = {}
    api = client.CustomObjectsApi()

    # 1. The VolumeSnapshot. Stand-in for the snapshot controller and ceph-csi: bind it when it appears.
    running = _bash(kube, snapshot_block, env)
    wait_custom(api, NS, "volumesnapshots", "app-data-before", lambda obj: True, 60,
                group="snapshot.storage.k8s.io", version="v1")
    demo.setdefault("snapshots", []).append(volumes.csi_snapshot(kube, demo["app"], "app-data-before", exists=True))
    _finish(running, "the snapshot block", demo["operator"])

    # Stand-in for the application: it writes after the snapshot.
    with volumes.cluster(kube) as c:
        volumes.write(c, demo["app"].ref, {0: b"version 2: broken\n"})

    # 2. Scale down, revert, scale up.
    out = _finish(_bash(kube, revert_block, env), "the revert block", demo["operator"])
    assert "phase=Succeeded" in out, out
    with volumes.cluster(kube) as c:
        assert volumes.read(c, demo["app"].ref, 0, 10) == b"version 1\n"
    reverts = api.list_namespaced_custom_object(G, V, NS, "volumereverts")["items"]
    assert [r["status"]["phase"] for r in reverts] == ["Succeeded"]
    deployment = client.AppsV1Api().read_namespaced_deployment("app", NS)
    assert deployment.spec.replicas == 1

    # 3. Back up the share, list, restore.
    out = _finish(_bash(kube, backup_block, env), "the backup block", demo["operator"])
    backup = api.get_namespaced_custom_object(G, V, NS, "sharebackups", "shared-files-monday")
    assert backup["status"]["phase"] == "Available", backup["status"]
    stored = Path(demo["repo"].dir) / backup["status"]["repositoryPath"]
    assert (stored / "backup.json").exists() and "shared-files-monday" in out
    restores = api.list_namespaced_custom_object(G, V, NS, "sharerestores")["items"]
    assert [r["status"]["phase"] for r in restores] == ["Succeeded"], [r.get("status") for r in restores]
    assert (Path(demo["share"].dir) / "notes" / "todo.md").read_text() == "- back up\n"

    # 4. The image.
    out = _finish(_bash(kube, image_block, env), "the image block", demo["operator"])
    image = api.get_namespaced_custom_object(G, V, NS, "imagesnapshots", "app-data-image")
    assert image["status"]["phase"] == "Succeeded" and image["status"]["location"].startswith("rbd://")
    assert "app-data-image" in out and image["status"]["method"] in out

    # 5. Looking around.
    out = _finish(_bash(kube, look_block, env), "the last block", demo["operator"])
    assert "volumerevert/" in out and "sharebackup/shared-files-monday" in out and "imagesnapshot/app-data-image" in out
    assert f"volumerevert.savepoint.dev/{reverts[0]['metadata']['name']}" in out
    assert "ImageSnapshot/app-data-image  phase=Succeeded" in out

