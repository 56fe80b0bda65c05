"""Kubernetes API access shared by the operator's modules (not by storage/).

One ApiClient per process, configured in-cluster when running in a pod (or by
the sandbox's pod runner), else from KUBECONFIG.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import kubernetes
from kubernetes import client

GROUP = "savepoint.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

PLURALS = {
    "VolumeRevert": "volumereverts",
    "ShareBackup": "sharebackups",
    "ShareRestore": "sharerestores",
    "ImageSnapshot": "imagesnapshots",
    "SavepointSchedule": "savepointschedules",
}


@functools.cache
def api_client() -> client.ApiClient:
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        # KUBECONFIG read now, not when the kubernetes package was imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    configuration = client.Configuration.get_default_copy()
    # kopf's handler threads and the schedule controller's share one client: enough pooled connections
    # that none is discarded and re-handshaken under load (the default is 5 per CPU).
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 32)
    return client.ApiClient(configuration)


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def storage() -> client.StorageV1Api:
    return client.StorageV1Api(api_client())


def rbac() -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client())


@dataclasses.dataclass(frozen=True)
class Owner:
    """The Savepoint CR on whose behalf something is done (lock holder, Job owner)."""

    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def plural(self) -> str:
        return PLURALS[self.kind]

    def owner_reference(self, controller: bool = True) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": controller, "blockOwnerDeletion": True}

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, body: dict[str, Any]) -> "Owner":
        meta = body["metadata"]
        return cls(kind=body["kind"], namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, kubernetes.client.ApiException) and exc.status == 404


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, kubernetes.client.ApiException) and exc.status == 409
