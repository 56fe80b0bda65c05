"""Reset requests (``savepoint.dev/reset-requested``, see savepoint.kube.resetrequest): the operator's side of
``kubectl savepoint reset-state``.

Event handlers, not create/update ones: nothing here needs kopf's progress
storage or finalizers on other people's objects. An answer is one conditional
write (state cleared, request removed, result written), so a request is
answered exactly once however often kopf shows the object.
"""

from __future__ import annotations

from typing import Any

import kopf

from savepoint.kube import events, k8s, locks, resetrequest
from savepoint.api import GROUP, VERSION
from savepoint.flows.backup import BACKUP_RESOURCE
from savepoint.kube.references import SNAPSHOT_GROUP, SNAPSHOT_VERSION, RefusedError

PRESENT = {resetrequest.REQUEST: kopf.PRESENT}
PVCS = "persistentvolumeclaims"


@kopf.on.event("v1", PVCS, annotations=PRESENT)
def pvc_reset_requested(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: object) -> None:
    if type != "DELETED":
        answer(locks.PVC, body, logger)


@kopf.on.event(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", annotations=PRESENT)
def volumesnapshot_reset_requested(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: object) -> None:
    if type != "DELETED":
        answer(locks.VOLUME_SNAPSHOT, body, logger)


@kopf.on.event(GROUP, VERSION, "sharebackups", annotations=PRESENT)
def sharebackup_reset_requested(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: object) -> None:
    if type != "DELETED":
        answer(BACKUP_RESOURCE, body, logger)


def answer(resource: locks.Resource, body: kopf.Body, logger: Any) -> resetrequest.Result | None:
    """Reset the object's state as requested; None when the request was already answered (or it is gone)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for _ in range(locks.MAX_ATTEMPTS):
        try:
            obj = resource.read(namespace, name)
        except Exception as exc:
            if k8s.is_not_found(exc):
                return None
            raise
        annotations = locks.annotations_of(obj)
        raw = annotations.get(resetrequest.REQUEST)
        if raw is None:
            return None
        result, changes, holder_gone = _decide(resource, namespace, name, annotations, raw)
        changes[resetrequest.REQUEST] = None
        changes[resetrequest.RESULT] = result.to_annotation()
        if locks.write_if_unchanged(resource, namespace, name, obj, changes):
            break
    else:
        logger.warning("reset request on %s/%s: the object kept changing; retried later", resource.cli_name, name)
        raise kopf.TemporaryError("object kept changing", delay=2)
    if result.ok and resource is BACKUP_RESOURCE and holder_gone and (obj.get("status") or {}).get("phase") == "Restoring":
        # The restore that read this backup is gone: the backup is readable again.
        k8s.custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, resource.plural, name,
            {"status": {"phase": "Available", "message": "state reset on request; no restore reads this backup"}})
    events.post(events.object_ref(obj), "Normal" if result.ok else "Warning",
                "StateReset" if result.ok else "StateResetRefused", result.message)
    logger.info("reset request on %s/%s: %s", resource.cli_name, name, result.message)
    return result


def _decide(resource: locks.Resource, namespace: str, name: str, annotations: dict[str, str],
            raw: str) -> tuple[resetrequest.Result, dict[str, str | None], bool]:
    """(answer, annotation changes, whether no live action holds the object any more)."""
    what = f"{resource.cli_name}/{name}"
    try:
        request = resetrequest.parse_request(raw)
    except resetrequest.BadRequest as bad:
        return resetrequest.Result("invalid", False, str(bad)), {}, False
    holder = locks.holder_from(annotations)
    alive = holder is not None and locks.holder_alive(namespace, holder)
    try:
        changes = locks.plan_reset(annotations, lambda h: alive, force=request.force, resource=resource, name=name)
    except RefusedError as refused:  # Busy: a live action holds it and no --force
        return resetrequest.Result(request.id, False, f"{refused.message} (use --force to clear it anyway)"), {}, False
    if not changes:
        return resetrequest.Result(request.id, True, f"{what}: nothing to reset"), {}, not alive
    cleared = annotations.get(locks.STATE, locks.AVAILABLE)
    message = f"{what}: savepoint state reset" + (f" (was {cleared!r})" if cleared else "")
    if holder is not None:
        message += f"; lock of {holder} removed" + (" although it is still running (forced)" if alive else "")
    return resetrequest.Result(request.id, True, message, cleared), dict(changes), not alive
