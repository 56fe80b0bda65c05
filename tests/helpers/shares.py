"""NFS file shares as a cluster would have them, for e2e tests: a directory of a real nfs-ganesha export,
a static NFS PersistentVolume pointing at it (server 127.0.0.1) and a claim bound to it by the real
controller manager. The pod runner mounts such claims as the export's directory, and nfs-ganesha serves
the same directory, so what a mover writes is read back over NFS (``nfs-cat``/``nfs-ls``)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from sandboxlib import nfs as sandbox_nfs

EXPORT = "savepoint-e2e-shares"


@dataclass
class Share:
    namespace: str
    pvc: str
    pv: str
    dir: Path  # the local directory behind the export path
    path: str  # NFS path: /EXPORT/<namespace>/<name>
    export: sandbox_nfs.Export

    def url(self, rel: str = "") -> str:
        sub = self.path[len(self.export.path):].strip("/")
        return sandbox_nfs.client_url(self.export, f"{sub}/{rel}".strip("/"))


def export(cfg: Any) -> sandbox_nfs.Export:
    return sandbox_nfs.add_export(cfg, EXPORT)


def nfs_dir(cfg: Any, namespace: str, name: str) -> tuple[Path, str]:
    exp = export(cfg)
    d = exp.dir / namespace / name
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o777)
    return d, f"{exp.path}/{namespace}/{name}"


def static_pv(name: str, path: str, size: str, *, claim: tuple[str, str] | None = None,
              storage_class: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                            "nfs": {"server": "127.0.0.1", "path": path}}
    if claim:
        spec["claimRef"] = {"namespace": claim[0], "name": claim[1]}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}


def wait_bound(namespace: str, name: str, timeout: int = 60) -> None:
    core = client.CoreV1Api()
    if (core.read_namespaced_persistent_volume_claim(name, namespace).status.phase or "") == "Bound":
        return
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_persistent_volume_claim, namespace,
                          field_selector=f"metadata.name={name}", timeout_seconds=timeout):
        if event["object"].status.phase == "Bound":
            w.stop()
            return
    raise AssertionError(f"PVC {namespace}/{name} not Bound after {timeout}s")


def make_share(cfg: Any, namespace: str, name: str, size: str = "1Gi",
               claims: client.CoreV1Api | None = None) -> Share:
    """A claim ``name`` bound to a static NFS PV of ``size`` on a fresh export directory. The PV is the
    administrator's; the claim is created with ``claims`` (the namespace's tenant), else as admin."""
    d, path = nfs_dir(cfg, namespace, name)
    pv = f"{namespace}-{name}"[:253]
    core = client.CoreV1Api()
    core.create_persistent_volume(static_pv(pv, path, size, claim=(namespace, name)))
    (claims or core).create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": size}}}})
    wait_bound(namespace, name)
    return Share(namespace, name, pv, d, path, export(cfg))


def offer_volume(cfg: Any, namespace: str, name: str, storage_class: str, size: str = "1Gi") -> Share:
    """A static NFS PV of ``storage_class`` that a new claim of that class (a ShareRestore's newClaim) binds to:
    how a claim gets a volume without a provisioner."""
    d, path = nfs_dir(cfg, namespace, name)
    pv = f"{namespace}-{name}"[:253]
    client.CoreV1Api().create_persistent_volume(static_pv(pv, path, size, storage_class=storage_class))
    return Share(namespace, name, pv, d, path, export(cfg))


def delete(share: Share) -> None:
    try:
        client.CoreV1Api().delete_persistent_volume(share.pv)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    shutil.rmtree(share.dir, ignore_errors=True)


def nfs_cat(share: Share, rel: str) -> bytes:
    out = subprocess.run(["nfs-cat", share.url(rel)], capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, f"nfs-cat {share.url(rel)}: {out.stderr!r}"
    return out.stdout


def nfs_ls(share: Share, rel: str = "") -> list[str]:
    out = subprocess.run(["nfs-ls", share.url(rel)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, f"nfs-ls {share.url(rel)}: {out.stderr}"
    return [line.split(None, 5)[5] for line in out.stdout.splitlines() if line.strip()]
