"""Progress from a mover into its CR's ``status.progress``, throttled."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("savepoint.mover")


class StatusProgress:
    """Patches ``status.progress`` of the owner CR at most every ``interval`` seconds.

    Reporting is best effort: a failed patch is logged and the copy goes on.
    """

    def __init__(self, kind_plural: str, namespace: str, name: str, interval: float = 2.0) -> None:
        self.plural = kind_plural
        self.namespace = namespace
        self.name = name
        self.interval = interval
        self._last = 0.0
        self._api = None

    @classmethod
    def from_env(cls) -> "StatusProgress | None":
        plural = os.environ.get("SAVEPOINT_OWNER_PLURAL")
        ns = os.environ.get("SAVEPOINT_OWNER_NAMESPACE")
        name = os.environ.get("SAVEPOINT_OWNER_NAME")
        if not (plural and ns and name):
            return None
        return cls(plural, ns, name, float(os.environ.get("SAVEPOINT_PROGRESS_INTERVAL", "2")))

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
                from savepoint import k8s

                self._api = k8s.custom()
            self._api.patch_namespaced_custom_object_status(
                "savepoint.dev", "v1alpha1", self.namespace, self.plural, self.name,
                {"status": {"progress": progress}},
            )
        except Exception as exc:  # noqa: BLE001 - progress must never fail the copy
            log.warning("could not report progress: %s", exc)
