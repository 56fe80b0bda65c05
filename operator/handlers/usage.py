"""Who uses which claim, kept by kopf from the operator's watches (kopf indexes).

"Is the volume idle?" is asked before every revert and block backup; listing the namespace's pods and
every VolumeAttachment for each one was two of an action's heaviest requests.  The indexes hold only
names, so their memory follows the number of pods using claims, not the pods' size.  A pod created a
moment before the action may not be in them yet, as it may not be in a list made a moment earlier:
the storage layer's RBD watcher check under the image's exclusive lock is what guards the data.
"""

from __future__ import annotations

from typing import Any

import kopf

from savepoint.kube import references


@kopf.index("pods")
def claim_users(name: str, namespace: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], str] | None:
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    return {(namespace, claim): f"Pod/{name}" for claim in references.pod_claims(body)} or None


@kopf.index("storage.k8s.io", "v1", "volumeattachments")
def pv_attachments(name: str, spec: kopf.Spec, **_: Any) -> dict[str, str] | None:
    pv = (spec.get("source") or {}).get("persistentVolumeName")
    return {pv: f"VolumeAttachment/{name}"} if pv else None


def of(claim_users: kopf.Index[Any, Any], pv_attachments: kopf.Index[Any, Any]) -> references.Usage:
    return references.Usage(pods=claim_users, attachments=pv_attachments)
