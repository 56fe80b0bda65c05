"""Publishes the sandbox's Ceph into the cluster the way ceph-csi users have it.

- namespace ``ceph-csi`` with ConfigMap ``ceph-csi-config`` (key ``config.json``:
  the clusterID → monitors list ceph-csi reads) and Secret ``csi-rbd-secret``
  (``userID``/``userKey``), so Savepoint can reuse an existing ceph-csi install's
  configuration unchanged;
- StorageClass ``csi-rbd-sc`` and VolumeSnapshotClass ``csi-rbdplugin-snapclass``
  naming driver ``rbd.csi.ceph.com`` (no CSI driver runs here: tests create
  static PVs and VolumeSnapshotContents that look exactly like its own).
"""

from __future__ import annotations

import json

from sandboxlib import ceph, kube
from sandboxlib.config import Config
from sandboxlib.proc import SandboxError

NAMESPACE = "ceph-csi"
CONFIGMAP = "ceph-csi-config"
SECRET = "csi-rbd-secret"
STORAGE_CLASS = "csi-rbd-sc"
SNAPSHOT_CLASS = "csi-rbdplugin-snapclass"


def manifests(cfg: Config) -> list[dict]:
    fsid = ceph.fsid(cfg)
    user_id, user_key = ceph.csi_credentials(cfg)
    csi_config = [{"clusterID": fsid, "monitors": ceph.monitors(cfg)}]
    secret_ref = {"csi.storage.k8s.io/provisioner-secret-name": SECRET,
                  "csi.storage.k8s.io/provisioner-secret-namespace": NAMESPACE,
                  "csi.storage.k8s.io/node-stage-secret-name": SECRET,
                  "csi.storage.k8s.io/node-stage-secret-namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
         "data": {"config.json": json.dumps(csi_config, indent=2)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE},
         "stringData": {"userID": user_id, "userKey": user_key}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": STORAGE_CLASS},
         "provisioner": "rbd.csi.ceph.com", "reclaimPolicy": "Delete", "allowVolumeExpansion": True,
         "parameters": {"clusterID": fsid, "pool": "rbd", "imageFeatures": "layering,exclusive-lock,object-map,fast-diff,deep-flatten",
                        **secret_ref}},
        {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
         "metadata": {"name": SNAPSHOT_CLASS}, "driver": "rbd.csi.ceph.com", "deletionPolicy": "Delete",
         "parameters": {"clusterID": fsid,
                        "csi.storage.k8s.io/snapshotter-secret-name": SECRET,
                        "csi.storage.k8s.io/snapshotter-secret-namespace": NAMESPACE}},
    ]


def up(cfg: Config) -> None:
    docs = "\n---\n".join(json.dumps(m) for m in manifests(cfg))
    try:
        kube.kubectl(cfg, "apply", "--server-side", "--force-conflicts", "-f", "-", input=docs)
    except SandboxError as exc:
        if "immutable" not in str(exc):
            raise
        # Ceph was rebuilt with a new fsid: the classes' parameters cannot be
        # changed in place, so replace them.
        kube.kubectl(cfg, "delete", "--ignore-not-found", f"storageclass/{STORAGE_CLASS}",
                     f"volumesnapshotclass.snapshot.storage.k8s.io/{SNAPSHOT_CLASS}")
        kube.kubectl(cfg, "apply", "--server-side", "--force-conflicts", "-f", "-", input=docs)


def down(cfg: Config) -> None:
    """Nothing to stop: the objects go with the cluster's etcd."""


def status(cfg: Config) -> list[str]:
    return [f"ceph-csi config: ConfigMap {NAMESPACE}/{CONFIGMAP}, Secret {NAMESPACE}/{SECRET}, "
            f"StorageClass {STORAGE_CLASS}, VolumeSnapshotClass {SNAPSHOT_CLASS}"]
