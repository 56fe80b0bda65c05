"""Progress from a mover, throttled, into a ConfigMap the operator relays to the CR.

Movers have no write access to any Savepoint resource or its status: the
operator creates one ConfigMap per mover Job (in its own namespace, beside the
Job) and the mover patches only that.  The operator reads it, bounds-checks it
and copies it into the CR's ``status.progress`` (see ``savepoint.engine.movers``).
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("savepoint.mover")

PROGRESS_KEY = "progress"  # the ConfigMap's data key: JSON {"percent", "bytesDone", "bytesTotal", "files"?}


class ConfigMapProgress:
    """Patches ``data.progress`` of one ConfigMap at most every ``interval`` seconds.

    Reporting is best effort: a failed patch is logged and the copy goes on.
    """

    def __init__(self, namespace: str, name: str, interval: float = 2.0) -> None:
        self.namespace = namespace
        self.name = name
        self.interval = interval
        self._last = 0.0
        self._api = None

    @classmethod
    def from_env(cls) -> "ConfigMapProgress | None":
        ref = os.environ.get("SAVEPOINT_PROGRESS_CONFIGMAP", "")
        namespace, _, name = ref.partition("/")
        if not (namespace and name):
            return None
        return cls(namespace, name, float(os.environ.get("SAVEPOINT_PROGRESS_INTERVAL", "2")))

    def __call__(self, done: int, total: int, *, files: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        percent = int(done * 100 / total) if total else 100
        progress: dict[str, int] = {"percent": min(percent, 100), "bytesDone": done, "bytesTotal": total}
        if files is not None:
            progress["files"] = files
        try:
            if self._api is None:
                from savepoint.kube import k8s

                self._api = k8s.core()
            self._api.patch_namespaced_config_map(self.name, self.namespace,
                                                  {"data": {PROGRESS_KEY: json.dumps(progress)}})
        except Exception as exc:  # noqa: BLE001 - progress must never fail the copy
            log.warning("could not report progress: %s", exc)
