"""Kubernetes Events for CRs and the objects they act on (PVCs, VolumeSnapshots).

Events are the seeds' notifications: every start, end and error posts one, with
a stable CamelCase reason that docs/events.md lists.  Posting is best effort:
an Event that cannot be written is logged, never fails the action.

``post_all`` posts one Event on several objects at once (the CR and its PVC), and
with ``wait=False`` leaves them to a small pool so that Events along the way are
not on an action's critical path; final ones are waited for, so whoever sees the
final phase finds its Event.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import uuid
from typing import Any, Iterable, Literal

from savepoint.kube import k8s

log = logging.getLogger("savepoint.kube.events")

COMPONENT = "savepoint-operator"
EventType = Literal["Normal", "Warning"]


def object_ref(obj: dict[str, Any] | Any) -> dict[str, str]:
    """An involvedObject for a body dict or a kubernetes-client model."""
    if not isinstance(obj, dict):
        obj = k8s.api_client().sanitize_for_serialization(obj)
    meta = obj["metadata"]
    ref = {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj["kind"], "name": meta["name"],
           "namespace": meta.get("namespace", ""), "uid": meta.get("uid", "")}
    if meta.get("resourceVersion"):
        ref["resourceVersion"] = meta["resourceVersion"]
    return ref


def owner_ref(owner: k8s.Owner) -> dict[str, str]:
    return {"apiVersion": k8s.API_VERSION, "kind": owner.kind, "name": owner.name,
            "namespace": owner.namespace, "uid": owner.uid}


def pvc_ref(namespace: str, name: str, uid: str = "") -> dict[str, str]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": name, "namespace": namespace, "uid": uid}


def post(involved: dict[str, str], type_: EventType, reason: str, message: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    body = {
        "metadata": {"name": f"{involved['name'][:200]}.{uuid.uuid4().hex[:12]}", "namespace": involved["namespace"]},
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now.isoformat(),
        "lastTimestamp": now.isoformat(),
        "count": 1,
    }
    try:
        k8s.request("POST", k8s.path("events", namespace=involved["namespace"], group="", version="v1"), body)
    except Exception as exc:  # noqa: BLE001 - an Event is never worth failing the action
        log.warning("could not post event %s on %s/%s: %s", reason, involved["kind"], involved["name"], exc)


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="savepoint-events")


def post_all(posts: Iterable[tuple[dict[str, str], str]], type_: EventType, reason: str, *,
             wait: bool = True) -> None:
    """``post`` each (object, message) in parallel; with ``wait`` (the default) return once all are written."""
    futures = [_pool.submit(post, ref, type_, reason, message) for ref, message in posts]
    if wait:
        concurrent.futures.wait(futures)
