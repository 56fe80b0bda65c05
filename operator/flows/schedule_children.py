"""What a SavepointSchedule's runs create, one adapter per template: create a child, list the
schedule's children, tell their state, what protects them, and delete one.

Every child carries the metadata the operator wrote when it made it, and is checked against it
right before it is deleted or orphaned: its name is ``<schedule>-<slot>`` (names are immutable),
labels ``savepoint.dev/schedule`` and ``savepoint.dev/schedule-uid``, annotation
``savepoint.dev/created-by: SavepointSchedule/<name> <uid>``, and an ownerReference to the
schedule's uid. Safe points are RBD snapshots, not API objects: their owner is recorded in the
image's metadata (``savepoint.dev/safepoint.<snapshot>``), and only snapshots whose metadata names
this schedule's uid are ever removed. Nothing is looked up outside the schedule's namespace.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Protocol

from savepoint import cron
from savepoint.kube import cephconfig, k8s, locks, references
from savepoint.api import Reason
from savepoint.api.schedule import ScheduleTemplate
from savepoint.retention import Item, State
from savepoint.settings import Settings
from savepoint.storage import ceph, rbd
from savepoint.storage.errors import NotFound, StorageError

LABEL_SCHEDULE = "savepoint.dev/schedule"
LABEL_SCHEDULE_UID = "savepoint.dev/schedule-uid"
ANN_CREATED_BY = "savepoint.dev/created-by"
ANN_SLOT = "savepoint.dev/slot"
ANN_RETAINED = "savepoint.dev/retained-from"
SAFEPOINT_KEY = "savepoint.dev/safepoint."  # + snapshot name: image metadata naming the owning schedule
SAFEPOINT_LOCK_STATE = "safe-point-snapshotting"
KIND = "SavepointSchedule"
SNAPSHOT_GROUP, SNAPSHOT_VERSION = "snapshot.storage.k8s.io", "v1"


@dataclasses.dataclass(frozen=True)
class Sched:
    """The schedule as its children see it."""

    namespace: str
    name: str
    uid: str

    @property
    def owner(self) -> k8s.Owner:
        return k8s.Owner(KIND, self.namespace, self.name, self.uid)

    @property
    def created_by(self) -> str:
        return f"{KIND}/{self.name} {self.uid}"

    def child_meta(self, name: str, slot: dt.datetime) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace,
                "labels": {LABEL_SCHEDULE: self.name, LABEL_SCHEDULE_UID: self.uid},
                "annotations": {ANN_CREATED_BY: self.created_by, ANN_SLOT: cron.rfc3339(slot)},
                "ownerReferences": [{"apiVersion": k8s.API_VERSION, "kind": KIND, "name": self.name,
                                     "uid": self.uid, "controller": True, "blockOwnerDeletion": True}]}

    def owns(self, obj: dict[str, Any]) -> bool:
        """Did this schedule make ``obj``? Every mark the operator wrote must be there and agree."""
        meta = obj.get("metadata") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        return (meta.get("namespace") == self.namespace
                and cron.slot_of_child(self.name, str(meta.get("name") or "")) is not None
                and labels.get(LABEL_SCHEDULE_UID) == self.uid
                and annotations.get(ANN_CREATED_BY) == self.created_by
                and any(r.get("uid") == self.uid for r in meta.get("ownerReferences") or []))


@dataclasses.dataclass(frozen=True)
class Child:
    """One child: its name, slot, state, when it ended, and the facts retention needs."""

    name: str
    slot: dt.datetime
    state: State | None  # None: being deleted
    finished: dt.datetime | None = None
    reason: str | None = None  # why it failed
    requires: frozenset[str] = frozenset()
    busy: str | None = None
    source: str | None = None
    obj: dict[str, Any] | None = None

    def item(self) -> Item:
        assert self.state is not None
        return Item(self.name, self.slot, self.state, self.requires, self.busy)


class Refused(Exception):
    """The run cannot create its child: ``wait`` says whether retrying may help."""

    def __init__(self, reason: str, message: str, wait: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.wait = reason, message, wait


class Adapter(Protocol):
    kind: str

    def create(self, s: Sched, name: str, slot: dt.datetime, incremental: bool | None) -> None: ...
    def children(self, s: Sched) -> list[Child]: ...
    def child(self, s: Sched, name: str) -> Child | None: ...
    def protect(self, s: Sched, children: list[Child]) -> list[Child]: ...
    def delete(self, s: Sched, child: Child) -> None: ...
    def orphan(self, s: Sched, child: Child) -> None: ...


def _ready_reason(obj: dict[str, Any]) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("reason")
    return None


def _time(obj: dict[str, Any], key: str = "completionTime") -> dt.datetime | None:
    return cron.parse_time((obj.get("status") or {}).get(key))


class CustomChild:
    """Children that are API objects (ShareBackup, ImageSnapshot, VolumeSnapshot)."""

    kind = ""
    plural = ""
    group = k8s.GROUP
    version = k8s.VERSION
    succeeded: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset({"Failed"})
    deleting: frozenset[str] = frozenset({"Deleting", "ErrorDeleting"})

    def __init__(self, template: Any, settings: Settings) -> None:
        self.template = template
        self.settings = settings

    def spec(self, incremental: bool | None) -> dict[str, Any]:
        raise NotImplementedError

    def create(self, s: Sched, name: str, slot: dt.datetime, incremental: bool | None) -> None:
        body = {"apiVersion": f"{self.group}/{self.version}", "kind": self.kind,
                "metadata": s.child_meta(name, slot), "spec": self.spec(incremental)}
        try:
            k8s.custom().create_namespaced_custom_object(self.group, self.version, s.namespace, self.plural, body)
        except Exception as exc:
            if k8s.is_conflict(exc):  # AlreadyExists: ours from before a restart, or someone else's
                existing = self._get(s, name)
                if existing is not None and s.owns(existing):
                    return
                raise Refused(Reason.CHILD_NAME_TAKEN, f"a {self.kind} named {name} exists and was not made by this "
                              "schedule; it is left alone") from None
            status = getattr(exc, "status", None)
            if status in (400, 403, 422):
                raise Refused(Reason.INVALID_SPEC, f"the API server refused the {self.kind}: "
                              f"{k8s_message(exc)}") from None
            raise

    def _get(self, s: Sched, name: str) -> dict[str, Any] | None:
        try:
            return dict(k8s.custom().get_namespaced_custom_object(self.group, self.version, s.namespace,
                                                                  self.plural, name))
        except Exception as exc:
            if k8s.is_not_found(exc):
                return None
            raise

    def to_child(self, s: Sched, obj: dict[str, Any]) -> Child | None:
        meta = obj.get("metadata") or {}
        slot = cron.slot_of_child(s.name, str(meta.get("name")))
        if slot is None or not s.owns(obj):
            return None
        status = obj.get("status") or {}
        phase = status.get("phase")
        if meta.get("deletionTimestamp") or phase in self.deleting:
            state = None
        elif phase in self.succeeded:
            state = State.SUCCEEDED
        elif phase in self.failed:
            state = State.FAILED
        else:
            state = State.RUNNING
        return Child(name=meta["name"], slot=slot, state=state, finished=_time(obj) or slot,
                     reason=_ready_reason(obj) if state == State.FAILED else None,
                     source=status.get("source"), obj=obj)

    def children(self, s: Sched) -> list[Child]:
        listed = k8s.custom().list_namespaced_custom_object(self.group, self.version, s.namespace, self.plural,
                                                            label_selector=f"{LABEL_SCHEDULE_UID}={s.uid}")
        found = [self.to_child(s, obj) for obj in listed.get("items") or []]
        return [c for c in found if c is not None]

    def child(self, s: Sched, name: str) -> Child | None:
        obj = self._get(s, name)
        return self.to_child(s, obj) if obj is not None else None

    def protect(self, s: Sched, children: list[Child]) -> list[Child]:
        out = []
        for child in children:
            holder = locks.holder(child.obj or {})
            busy = None
            if holder is not None and locks.holder_alive(s.namespace, holder):
                busy = f"{holder} holds it"
            out.append(dataclasses.replace(child, busy=busy) if busy else child)
        return out

    def delete(self, s: Sched, child: Child) -> None:
        """Delete ``child`` if it still is the one we made (uid precondition): its own finalizer does the rest."""
        current = self._get(s, child.name)
        if current is None or not s.owns(current):
            return
        uid = current["metadata"]["uid"]
        try:
            k8s.custom().delete_namespaced_custom_object(self.group, self.version, s.namespace, self.plural,
                                                         child.name, body={"preconditions": {"uid": uid}})
        except Exception as exc:
            if not (k8s.is_not_found(exc) or k8s.is_conflict(exc)):
                raise

    def orphan(self, s: Sched, child: Child) -> None:
        """Keep ``child`` after the schedule goes: drop our ownerReference (so no garbage collection), keep labels."""
        current = self._get(s, child.name)
        if current is None or not s.owns(current):
            return
        meta = current["metadata"]
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != s.uid]
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "ownerReferences": refs or None,
                              "annotations": {ANN_RETAINED: s.created_by}}}
        k8s.custom().patch_namespaced_custom_object(self.group, self.version, s.namespace, self.plural,
                                                    child.name, patch)


class ShareBackupChildren(CustomChild):
    kind, plural = "ShareBackup", "sharebackups"
    succeeded = frozenset({"Available", "Restoring"})

    def spec(self, incremental: bool | None) -> dict[str, Any]:
        t = self.template
        spec = t.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"full_every"})
        if incremental is not None:
            spec["incremental"] = incremental
        return spec

    def to_child(self, s: Sched, obj: dict[str, Any]) -> Child | None:
        child = super().to_child(s, obj)
        if child is None:
            return None
        parent = (obj.get("status") or {}).get("parentBackup")
        # A backup being made reads its parent (map and base snapshot): the parent must stay until it ends.
        # A finished one restores on its own (block maps are complete, file trees are hard links).
        if parent and child.state == State.RUNNING:
            child = dataclasses.replace(child, requires=frozenset({parent}))
        return child

    def protect(self, s: Sched, children: list[Child]) -> list[Child]:
        out = []
        for child in super().protect(s, children):
            if child.busy is None and ((child.obj or {}).get("status") or {}).get("phase") == "Restoring":
                child = dataclasses.replace(child, busy="a ShareRestore is reading it")
            out.append(child)
        return out


class ImageSnapshotChildren(CustomChild):
    kind, plural = "ImageSnapshot", "imagesnapshots"
    succeeded = frozenset({"Succeeded"})

    def spec(self, incremental: bool | None) -> dict[str, Any]:
        t = self.template
        spec: dict[str, Any] = {"source": t.source.model_dump(mode="json", by_alias=True, exclude_none=True),
                                "method": str(t.method or "Auto"), "deletionPolicy": "Delete"}
        destination = t.destination()
        if destination is not None:
            spec["destination"] = destination.model_dump(mode="json", by_alias=True, exclude_none=True)
        if t.deadline_seconds:
            spec["deadlineSeconds"] = t.deadline_seconds
        return spec

    def protect(self, s: Sched, children: list[Child]) -> list[Child]:
        """An image whose snapshot has clones cannot go: its clones would lose their parent."""
        out = []
        for child in super().protect(s, children):
            status = (child.obj or {}).get("status") or {}
            image, cluster_id = status.get("image") or {}, status.get("clusterID")
            if child.busy is None and child.state == State.SUCCEEDED and image.get("name") and cluster_id:
                clones = image_clones(cluster_id, image.get("pool"), image.get("name"), self.settings)
                if clones:
                    child = dataclasses.replace(child, busy=f"clones depend on its image: {', '.join(clones)}")
            out.append(child)
        return out


def image_clones(cluster_id: str, pool: str, name: str, settings: Settings) -> list[str]:
    try:
        creds = cephconfig.credentials(cluster_id, settings)
        with ceph.connect(creds) as cluster, rbd.open_ref(cluster, rbd.ImageRef(pool, name), read_only=True) as image:
            if not image.snap_exists("snap"):
                return []
            return [str(c) for c in rbd.children(image, "snap")]
    except NotFound:
        return []
    except (StorageError, references.RefusedError) as exc:
        return [f"(could not check: {exc})"]


class VolumeSnapshotChildren(CustomChild):
    kind, plural = "VolumeSnapshot", "volumesnapshots"
    group, version = SNAPSHOT_GROUP, SNAPSHOT_VERSION

    def spec(self, incremental: bool | None) -> dict[str, Any]:
        t = self.template
        spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": t.persistent_volume_claim.name}}
        if t.volume_snapshot_class_name:
            spec["volumeSnapshotClassName"] = t.volume_snapshot_class_name
        return spec

    def to_child(self, s: Sched, obj: dict[str, Any]) -> Child | None:
        meta = obj.get("metadata") or {}
        slot = cron.slot_of_child(s.name, str(meta.get("name")))
        if slot is None or not s.owns(obj):
            return None
        status = obj.get("status") or {}
        if meta.get("deletionTimestamp"):
            state = None
        elif status.get("readyToUse"):
            state = State.SUCCEEDED
        elif (status.get("error") or {}).get("message") and not status.get("boundVolumeSnapshotContentName"):
            state = State.FAILED
        else:
            state = State.RUNNING
        return Child(name=meta["name"], slot=slot, state=state,
                     finished=cron.parse_time(status.get("creationTime")) or slot,
                     reason="SnapshotFailed" if state == State.FAILED else None,
                     source=f"pvc/{(obj.get('spec') or {}).get('source', {}).get('persistentVolumeClaimName')}",
                     obj=obj)


class SafePoints:
    """RBD snapshots on the PVC's own image, named like the run: ordinary snapshots to VolumeRevert."""

    kind = "SafePoint"

    def __init__(self, template: Any, settings: Settings) -> None:
        self.template = template
        self.settings = settings
        self.pvc = template.persistent_volume_claim.name

    def _target(self, s: Sched) -> tuple[references.ResolvedVolume, references.RbdTarget]:
        try:
            volume = references.resolve_pvc(s.namespace, self.pvc, self.settings)
        except references.RefusedError as exc:
            raise Refused(exc.reason, exc.message, wait=not exc.final) from None
        if not isinstance(volume.target, references.RbdTarget):
            raise Refused(Reason.UNSUPPORTED_VOLUME, f"safe points need an RBD volume; pvc/{self.pvc} is not one")
        return volume, volume.target

    def _connect(self, target: references.RbdTarget) -> Any:
        try:
            return ceph.connect(cephconfig.credentials(target.cluster_id, self.settings))
        except references.RefusedError as exc:
            raise Refused(exc.reason, exc.message, wait=not exc.final) from None

    def create(self, s: Sched, name: str, slot: dt.datetime, incremental: bool | None) -> None:
        """Snapshot the image under a brief PVC lock (a snapshot while a revert rewrites it would be half)."""
        volume, target = self._target(s)
        try:
            locks.acquire(s.owner, s.namespace, self.pvc, SAFEPOINT_LOCK_STATE)
        except locks.Busy as busy:
            raise Refused(Reason.VOLUME_BUSY, str(busy), wait=True) from None
        except locks.InErrorState as err:
            raise Refused(Reason.VOLUME_IN_ERROR_STATE, str(err), wait=True) from None
        except references.RefusedError as exc:
            raise Refused(exc.reason, exc.message, wait=not exc.final) from None
        try:
            with self._connect(target) as cluster, rbd.open_ref(cluster, target.image_ref()) as image:
                key = SAFEPOINT_KEY + name
                owner = _metadata(image, key)
                if owner is None:
                    if image.snap_exists(name):
                        raise Refused(Reason.CHILD_NAME_TAKEN, f"{target} already has a snapshot {name} that this "
                                      "schedule did not take; it is left alone")
                    image.metadata_set(key, s.created_by)  # the mark first: a restart finds the snapshot ours
                elif owner != s.created_by:
                    raise Refused(Reason.CHILD_NAME_TAKEN, f"snapshot {name} of {target} belongs to {owner}")
                rbd.create_snapshot(image, name, exist_ok=True)
        except StorageError as exc:
            raise Refused(Reason.CEPH_ERROR, f"taking safe point {name} of {target}: {exc}", wait=True) from None
        finally:
            locks.release(s.owner, s.namespace, self.pvc)

    def _list(self, s: Sched) -> tuple[references.RbdTarget, list[Child]]:
        volume, target = self._target(s)
        out = []
        try:
            with self._connect(target) as cluster, rbd.open_ref(cluster, target.image_ref(), read_only=True) as image:
                marks = {k[len(SAFEPOINT_KEY):]: v for k, v in image.metadata_list() if k.startswith(SAFEPOINT_KEY)}
                for snap in rbd.list_snapshots(image):
                    slot = cron.slot_of_child(s.name, snap.name)
                    if slot is None or marks.get(snap.name) != s.created_by:
                        continue
                    busy = "protected (clones may depend on it)" if snap.protected else None
                    out.append(Child(name=snap.name, slot=slot, state=State.SUCCEEDED, finished=snap.timestamp,
                                     busy=busy, source=f"pvc/{self.pvc}"))
        except NotFound:
            return target, []
        except StorageError as exc:
            raise Refused(Reason.CEPH_ERROR, f"listing safe points of {target}: {exc}", wait=True) from None
        return target, out

    def children(self, s: Sched) -> list[Child]:
        try:
            return self._list(s)[1]
        except Refused as exc:
            if exc.reason == Reason.PVC_NOT_FOUND:
                return []
            raise

    def child(self, s: Sched, name: str) -> Child | None:
        return next((c for c in self.children(s) if c.name == name), None)

    def protect(self, s: Sched, children: list[Child]) -> list[Child]:
        """While any other Savepoint action holds the PVC (a revert rolling back to a safe point), none goes."""
        try:
            pvc = k8s.core().read_namespaced_persistent_volume_claim(self.pvc, s.namespace)
        except Exception as exc:
            if k8s.is_not_found(exc):
                return children
            raise
        holder = locks.holder_from(pvc.metadata.annotations or {})
        if holder is None or holder.uid == s.uid or not locks.holder_alive(s.namespace, holder):
            return children
        return [dataclasses.replace(c, busy=c.busy or f"{holder} holds the volume") for c in children]

    def delete(self, s: Sched, child: Child) -> None:
        volume, target = self._target(s)
        try:
            with self._connect(target) as cluster, rbd.open_ref(cluster, target.image_ref()) as image:
                key = SAFEPOINT_KEY + child.name
                if _metadata(image, key) != s.created_by:
                    return  # not ours (any more): never removed
                rbd.remove_snapshot(image, child.name)
                image.metadata_remove(key)
        except NotFound:
            return

    def orphan(self, s: Sched, child: Child) -> None:
        """A retained safe point stays an ordinary snapshot; its mark stays too (no later schedule's uid matches)."""


def _metadata(image: Any, key: str) -> str | None:
    try:
        return str(image.metadata_get(key))
    except KeyError:
        return None


def adapter(template: ScheduleTemplate, settings: Settings) -> Adapter:
    kind, value = template.chosen()
    return {"shareBackup": ShareBackupChildren, "imageSnapshot": ImageSnapshotChildren,
            "volumeSnapshot": VolumeSnapshotChildren, "safePoint": SafePoints}[kind](value, settings)


def k8s_message(exc: BaseException) -> str:
    import json

    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body).get("message"))[:500] if body else str(exc)[:500]
    except (ValueError, AttributeError):
        return str(exc)[:500]
