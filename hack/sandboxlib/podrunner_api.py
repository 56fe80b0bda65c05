"""A small JSON client for the Kubernetes API, for the pod runner.

The pod runner works on plain dicts (the API's own camelCase JSON, as a kubelet
sees it) and needs exact control over patch types and watches, so it talks
HTTP itself; credentials come from the kubeconfig via the kubernetes client's
loader.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Iterator, Mapping
from urllib.parse import urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger("podrunner")

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Api:
    def __init__(self, kubeconfig: str) -> None:
        conf = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
        self.base = conf.host.rstrip("/")
        self.headers = {"Accept": "application/json", "User-Agent": "savepoint-sandbox-podrunner"}
        token = conf.get_api_key_with_prefix("authorization") or conf.get_api_key_with_prefix("BearerToken")
        if token:
            self.headers["Authorization"] = token
        self.pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if conf.verify_ssl else "CERT_NONE",
            ca_certs=conf.ssl_ca_cert,
            cert_file=conf.cert_file,
            key_file=conf.key_file,
        )

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json", timeout: float = 30) -> Obj:
        url = self.base + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self.pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        payload = json.loads(resp.data) if resp.data else {}
        if resp.status >= 400:
            message = payload.get("message") or resp.data.decode(errors="replace")
            raise ApiError(resp.status, payload.get("reason", ""), message)
        return payload

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Obj, content_type: str = MERGE_PATCH) -> Obj:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[Obj]:
        """Yield watch events ({type, object}) until the server ends the watch."""
        params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        url = f"{self.base}{path}?{urlencode(params)}"
        resp = self.pool.request("GET", url, headers=self.headers, preload_content=False, retries=False,
                                 timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30))
        try:
            if resp.status >= 400:
                payload = json.loads(resp.read() or b"{}")
                raise ApiError(resp.status, payload.get("reason", ""), payload.get("message", ""))
            buf = b""
            for chunk in resp.stream(64 * 1024):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.close()  # a watch is never read to its end; don't pool its connection


def now() -> str:
    """A metav1.Time (second precision, UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A metav1.MicroTime, as leases want."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_path(namespace: str, name: str, sub: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}" + (f"/{sub}" if sub else "")
