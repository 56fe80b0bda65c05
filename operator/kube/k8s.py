"""Kubernetes API access shared by the operator's modules (not by storage/).

One ApiClient per process, configured in-cluster when running in a pod (or by
the sandbox's pod runner), else from KUBECONFIG.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import urllib.parse
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


def request(method: str, path: str, body: dict[str, Any] | None = None, *,
            content_type: str = "application/json") -> dict[str, Any]:
    """One API request, JSON in and JSON out, for the calls every action makes (status writes, Events, PVC
    reads and lock writes): the generated API classes validate every argument and build a model of every
    answer, which the operator then turns back into a dict -- most of its CPU per action.  Errors raise
    ``ApiException`` as the generated calls do (``is_not_found``, ``is_conflict``)."""
    api = api_client()
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    serialized = api.param_serialize(method=method, resource_path=path, header_params=headers, body=body,
                                     auth_settings=["BearerToken"])
    response = api.call_api(*serialized)
    response.read()
    if not 200 <= response.status <= 299:
        raise client.ApiException.from_response(http_resp=response, body=response.data.decode("utf-8", "replace"),
                                                data=None)
    return json.loads(response.data) if response.data else {}


def path(plural: str, name: str = "", *, namespace: str | None = None, group: str = GROUP,
         version: str = VERSION) -> str:
    """The API path of an object (or of its collection without ``name``); ``group=""`` for the core API.  Names
    and namespaces are quoted: they can come from annotations anybody may write."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        base += f"/namespaces/{_quoted(namespace)}"
    return f"{base}/{plural}" + (f"/{_quoted(name)}" if name else "")


def _quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


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
