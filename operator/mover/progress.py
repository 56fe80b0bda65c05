"""Progress from a mover, throttled, into a ConfigMap the operator relays to the CR.

Movers have no write access to any Savepoint resource or its status: the
operator creates one ConfigMap per mover Job (in its own namespace, beside the
Job) and the mover patches only that.  The operator reads it, bounds-checks it
and copies it into the CR's ``status.progress`` (see ``savepoint.engine.movers``).

One PATCH every few seconds does not need the Kubernetes client, whose import
alone takes longer than a mover's whole start-up should: inside a pod the
patch is a plain HTTPS request with the pod's ServiceAccount token and CA
(what ``load_incluster_config`` reads).  Outside a pod (a developer running a
mover by hand with a KUBECONFIG) the Kubernetes client is used, imported on
the first report only.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger("savepoint.mover")

PROGRESS_KEY = "progress"  # the ConfigMap's data key: JSON {"percent", "bytesDone", "bytesTotal", "files"?}
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PATCH_TIMEOUT = 10.0  # seconds: a slow API server delays a report, never the copy for long


class InClusterConfigMaps:
    """Merge-patches ConfigMaps through the API server the pod's environment names, as its ServiceAccount."""

    def __init__(self, host: str, port: int, token_file: Path, ca_file: Path) -> None:
        self.host, self.port = host, port
        self.token_file = token_file
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self._conn: http.client.HTTPSConnection | None = None

    @classmethod
    def from_env(cls, root: Path = SERVICE_ACCOUNT) -> "InClusterConfigMaps | None":
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not (host and port and (root / "token").is_file() and (root / "ca.crt").is_file()):
            return None
        return cls(host, int(port), root / "token", root / "ca.crt")

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        token = self.token_file.read_text().strip()  # re-read: the kubelet refreshes it
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps/{quote(name, safe='')}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json",
                   "Accept": "application/json"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more on a new one
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                         timeout=PATCH_TIMEOUT)
            try:
                self._conn.request("PATCH", path, body=json.dumps(body), headers=headers)
                response = self._conn.getresponse()
                text = response.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            if response.status >= 300:
                raise RuntimeError(f"PATCH configmap {namespace}/{name}: HTTP {response.status} "
                                   f"{text[:200].decode(errors='replace')}")
            return


class _ClientConfigMaps:
    """The same patch through the Kubernetes client (KUBECONFIG), for movers run outside a pod."""

    def __init__(self) -> None:
        from savepoint.kube import k8s

        self.api = k8s.core()

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_config_map(name, namespace, body)


class ConfigMapProgress:
    """Patches ``data.progress`` of one ConfigMap at most every ``interval`` seconds.

    Reporting is best effort: a failed patch is logged and the copy goes on.
    """

    def __init__(self, namespace: str, name: str, interval: float = 2.0) -> None:
        self.namespace = namespace
        self.name = name
        self.interval = interval
        self._last = 0.0
        self._api: InClusterConfigMaps | _ClientConfigMaps | None = None

    @classmethod
    def from_env(cls) -> "ConfigMapProgress | None":
        ref = os.environ.get("SAVEPOINT_PROGRESS_CONFIGMAP", "")
        namespace, _, name = ref.partition("/")
        if not (namespace and name):
            return None
        return cls(namespace, name, float(os.environ.get("SAVEPOINT_PROGRESS_INTERVAL", "2")))

    def __call__(self, done: int, total: int, *, files: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval and not (total and done >= total):
            return  # throttled; the report of the end always goes
        self._last = now
        percent = int(done * 100 / total) if total else 100
        progress: dict[str, int] = {"percent": min(percent, 100), "bytesDone": done, "bytesTotal": total}
        if files is not None:
            progress["files"] = files
        try:
            if self._api is None:
                self._api = InClusterConfigMaps.from_env() or _ClientConfigMaps()
            self._api.patch(self.namespace, self.name, {"data": {PROGRESS_KEY: json.dumps(progress)}})
        except Exception as exc:  # noqa: BLE001 - progress must never fail the copy
            log.warning("could not report progress: %s", exc)
