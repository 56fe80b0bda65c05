"""The operator *from the image* serves a namespace of the sandbox's API server.

tests/sandbox/test_image.py proves the image's root filesystem (built from the
Dockerfile by ``hack/image/rootfs``) runs the entry points. Here the operator
installed in that tree — with the dependency versions pip resolved when the
image was built, not the development venv's — runs as the image's user with
the chart Deployment's command, the chart's settings and the chart
ServiceAccount's token, and reconciles a VolumeRevert: status, conditions and
an Event written through the real API server and RBAC.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.kube import wait_custom  # noqa: E402
from helpers.operator_proc import free_port  # noqa: E402
from helpers.operator_sa import operator_kubeconfig  # noqa: E402
from helpers.tenant import forget, make_namespace, tenant_of  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="building the root filesystem needs root (chroot, mount)")]


def _rootfs() -> Any:
    import importlib.machinery
    import importlib.util

    path = ROOT / "hack" / "image" / "rootfs"
    loader = importlib.machinery.SourceFileLoader("savepoint_rootfs", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


@pytest.fixture
def own_namespace(kube: Any, chart: dict[str, str]) -> Iterator[str]:
    """A namespace no other test session's operator serves (they serve sp-<session>-*), with its tenant."""
    from kubernetes import client, config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"spimg-{uuid.uuid4().hex[:6]}"
    make_namespace(kube, name)
    yield name
    forget(name)
    client.CoreV1Api().delete_namespace(name)


def test_operator_from_the_image_reconciles(kube: Any, chart: dict[str, str], own_namespace: str) -> None:
    from kubernetes import client, config

    rootfs = _rootfs()
    built = subprocess.run([str(ROOT / "hack" / "image" / "rootfs"), "build"], capture_output=True, text=True,
                           timeout=1800, check=False)
    assert built.returncode == 0, built.stderr[-4000:]
    image = rootfs.image_config()
    tree = Path(image["tree"])

    # The chart's Deployment: its command and args, as a kubelet would run them in the image.
    manifest = subprocess.run([str(kube.bin / "helm"), "get", "manifest", "savepoint", "-n", "savepoint-system",
                               "--kubeconfig", str(kube.kubeconfig)], capture_output=True, text=True, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    argv = [*container["command"], *container.get("args", [])]
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"{uid}:{uid}" == image["user"], "the chart's runAsUser is the image's USER"

    # The ServiceAccount token and CA, where a pod would find them (here: a directory in the tree).
    work = f"/tmp/savepoint-operator-{uuid.uuid4().hex[:8]}"
    inside = Path(str(tree) + work)
    inside.mkdir()
    kubeconfig = yaml.safe_load(operator_kubeconfig(kube).read_text())
    shutil.copy(kubeconfig["clusters"][0]["cluster"]["certificate-authority"], inside / "ca.crt")
    kubeconfig["clusters"][0]["cluster"]["certificate-authority"] = f"{work}/ca.crt"
    (inside / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    for p in (inside, inside / "ca.crt", inside / "kubeconfig"):
        os.chown(p, uid, uid)
    os.chmod(inside / "kubeconfig", 0o600)

    health = free_port()
    env = dict(image["env"], HOME="/nonexistent", KUBECONFIG=f"{work}/kubeconfig", **chart)
    env.update(SAVEPOINT_WATCH_NAMESPACES=own_namespace, SAVEPOINT_HEALTH_PORT=str(health),
               SAVEPOINT_METRICS_PORT=str(free_port()), POD_ID=f"image-test-{uuid.uuid4().hex[:6]}")
    log = kube.logs / f"operator-image-{own_namespace}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(rootfs.chroot_argv(tree, argv, image["user"], image["workdir"]), env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    config.load_kube_config(str(kube.kubeconfig))
    custom = tenant_of(own_namespace).custom  # the namespace's user creates the CR
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the image's operator exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy in 60s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

        vrev = {"apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": "probe"},
                "spec": {"volume": {"persistentVolumeClaim": {"name": "missing"}}, "snapshot": {"rbdSnapshot": "s"}}}
        custom.create_namespaced_custom_object("savepoint.dev", "v1alpha1", own_namespace, "volumereverts", vrev)
        obj = wait_custom(custom, own_namespace, "volumereverts", "probe",
                          lambda o: (o.get("status") or {}).get("phase") == "Failed", timeout=90)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "PvcNotFound", obj["status"]
        events = client.CoreV1Api().list_namespaced_event(own_namespace, field_selector="involvedObject.name=probe")
        assert any(e.reason == "RevertFailed" for e in events.items), [e.reason for e in events.items]
        # Its finalizer goes while it still runs.
        custom.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", own_namespace, "volumereverts", "probe")
        deadline = time.monotonic() + 60
        while custom.list_namespaced_custom_object("savepoint.dev", "v1alpha1", own_namespace, "volumereverts")["items"]:
            assert time.monotonic() < deadline, "the VolumeRevert was not finalized"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(inside, ignore_errors=True)
