"""The mover framework, operator side: one data-moving step = one Job.

A flow calls ``ensure_mover`` with a typed ``MoverRequest`` every time it is
reconciled; the call is idempotent and answers where the step stands
(Waiting for a slot, Running, Succeeded with the mover's result, Failed with
its reason).  ``cleanup_mover`` removes the Job and its credentials.  Flows
never build Jobs themselves, and movers never know about flows.

Every mover runs in the operator's own namespace (the trust model in
docs/security.md): its Ceph Secret, environment and volumes are out of every
tenant's reach, only the operator can create Jobs there (so mover slots
cannot be forged), and it mounts a shared repository only at the CR
namespace's own subdirectory.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import json
import threading
import time
from typing import Any, Callable, Literal

from kubernetes import client

from savepoint import metrics
from savepoint.kube import k8s
from savepoint.engine.faults import crash_point
from savepoint.mover.progress import PROGRESS_KEY
from savepoint.mover.request import MoverRequest, MoverResult
from savepoint.settings import Settings
from savepoint.storage.ceph import CephCredentials

MOVER_LABEL = "savepoint.dev/mover"
OWNER_UID_LABEL = "savepoint.dev/owner-uid"
OWNER_NAMESPACE_LABEL = "savepoint.dev/owner-namespace"
STEP_LABEL = "savepoint.dev/step"
OWNER_ANNOTATION = "savepoint.dev/owner"  # "<Kind> <namespace>/<name> <uid>": what the orphan sweep checks

# One operator process creates Jobs; this lock makes "count running movers,
# then create one" atomic so the concurrency limit holds under parallel handlers.
_slots = threading.Lock()
RECHECK_SECONDS = 3  # how often a waiting flow re-reads its Job between pod events
QUEUE_FORGET_SECONDS = 120  # a waiter that has not asked again for this long has gone (deleted, finished)


@dataclasses.dataclass(frozen=True)
class MoverState:
    phase: Literal["Waiting", "Running", "Succeeded", "Failed"]
    job_name: str
    result: MoverResult | None = None
    reason: str | None = None  # Running: why the pod has not started yet (MoverUnschedulable, ...)
    message: str = ""
    started: bool = True  # False: the mover never ran, so it wrote nothing

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


class MoverRefused(Exception):
    """The request cannot run under these settings (e.g. privileged not allowed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def job_name(owner: k8s.Owner, step: str) -> str:
    """``<cr>-<step>-<hash>``: unique in the operator's namespace, where every namespace's movers run
    (the hash of the CR's uid tells apart equal names in two namespaces); at most 52 characters, so
    the Job controller's pod names and job-name labels fit."""
    digest = hashlib.sha256(f"{owner.uid}/{step}".encode()).hexdigest()[:8]
    return f"{owner.name[:30].rstrip('-.')}-{step[:12].rstrip('-')}-{digest}"


def _ceph_secret_name(name: str) -> str:
    return f"{name}-ceph"


def _progress_name(name: str) -> str:
    return f"{name}-progress"


def _owner_labels(owner: k8s.Owner, step: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "savepoint-mover",
        "app.kubernetes.io/managed-by": "savepoint",
        MOVER_LABEL: "true",
        OWNER_UID_LABEL: owner.uid,
        OWNER_NAMESPACE_LABEL: owner.namespace,
        STEP_LABEL: step[:63],
    }


def _owner_annotation(owner: k8s.Owner) -> str:
    return f"{owner.kind} {owner.namespace}/{owner.name} {owner.uid}"


def build_job(owner: k8s.Owner, step: str, request: MoverRequest, settings: Settings,
              deadline_seconds: int, ceph_secret: str | None) -> dict[str, Any]:
    """The Job for one mover step (pure: easy to test and to read).

    It runs in the operator's namespace, never in the CR's: no tenant can read
    its environment, its Ceph Secret or its volumes, exec into it, or forge one
    that takes a slot.  No owner reference (they cannot cross namespaces): the
    flows remove their Jobs, and the operator sweeps orphans at start-up.
    """
    if request.privileged and not settings.mover_privileged_allowed:
        raise MoverRefused("PrivilegedMoverNotAllowed",
                           "this step needs a privileged mover; set mover.privileged.allowed=true in the chart to permit it")
    name = job_name(owner, step)
    env: list[dict[str, Any]] = [
        {"name": "SAVEPOINT_MOVER_REQUEST", "value": request.to_env()},
        {"name": "SAVEPOINT_PROGRESS_CONFIGMAP", "value": f"{settings.namespace}/{_progress_name(name)}"},
        {"name": "SAVEPOINT_PROGRESS_INTERVAL", "value": str(settings.mover_progress_interval)},
    ]
    if ceph_secret:
        for var, key in (("SAVEPOINT_CEPH_MONITORS", "monitors"), ("SAVEPOINT_CEPH_USER_ID", "userID"),
                         ("SAVEPOINT_CEPH_KEY", "userKey")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ceph_secret, "key": key}}})
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for vol in request.volumes:
        volumes.append({"name": vol.name, "nfs": {"server": vol.nfs.server, "path": vol.nfs.path,
                                                  "readOnly": vol.read_only}})
        mount: dict[str, Any] = {"name": vol.name, "mountPath": vol.mount_path, "readOnly": vol.read_only}
        if vol.sub_path:
            mount["subPath"] = vol.sub_path
        mounts.append(mount)
    overrides = settings.mover_pod
    security = {**_security_context(request), **(overrides.get("securityContext") or {})}
    labels = _owner_labels(owner, step)
    container: dict[str, Any] = {
        "name": "mover",
        "image": settings.mover_image,
        "command": ["python", "-m", "savepoint.mover"],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if overrides.get("resources"):
        container["resources"] = overrides["resources"]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.mover_service_account,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if overrides.get(key):
            pod[key] = overrides[key]
    if overrides.get("imagePullSecrets"):
        pod["imagePullSecrets"] = [s if isinstance(s, dict) else {"name": s} for s in overrides["imagePullSecrets"]]
    if overrides.get("podSecurityContext"):
        pod["securityContext"] = overrides["podSecurityContext"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels,
                     "annotations": {OWNER_ANNOTATION: _owner_annotation(owner)}},
        "spec": {
            "backoffLimit": settings.mover_backoff_limit,
            "activeDeadlineSeconds": deadline_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


# Capabilities a root mover keeps: enough to read any file and recreate
# owners, modes, ACLs and xattrs exactly; nothing else, and nothing outside
# Pod Security "baseline" (DAC_OVERRIDE already lets root read and search
# everything, so DAC_READ_SEARCH is not needed).
FILE_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP", "MKNOD"]
NON_ROOT_UID = 65532


def _security_context(request: MoverRequest) -> dict[str, Any]:
    """Least privilege that still lets the step work; Pod Security "restricted" for plain movers."""
    if request.privileged:
        return {"privileged": True, "allowPrivilegeEscalation": True}
    context: dict[str, Any] = {"privileged": False, "allowPrivilegeEscalation": False,
                               "seccompProfile": {"type": "RuntimeDefault"}}
    if request.run_as_root:
        context |= {"runAsUser": 0, "runAsNonRoot": False,
                    "capabilities": {"drop": ["ALL"], "add": FILE_CAPABILITIES}}
    else:
        context |= {"runAsUser": NON_ROOT_UID, "runAsGroup": NON_ROOT_UID, "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]}}
    return context


def _create(create: Any, *args: Any) -> None:
    """Create an object; one left by an earlier attempt (409) is fine."""
    try:
        create(*args)
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def _ensure_ceph_secret(owner: k8s.Owner, step: str, settings: Settings, name: str, creds: CephCredentials) -> None:
    _create(k8s.core().create_namespaced_secret, settings.namespace, {
        "metadata": {"name": name, "labels": _owner_labels(owner, step),
                     "annotations": {OWNER_ANNOTATION: _owner_annotation(owner)}},
        "type": "Opaque",
        "stringData": {"monitors": ",".join(creds.monitors), "userID": creds.user_id, "userKey": creds.key},
    })


def _ensure_progress(owner: k8s.Owner, step: str, settings: Settings, name: str) -> None:
    _create(k8s.core().create_namespaced_config_map, settings.namespace, {
        "metadata": {"name": name, "labels": _owner_labels(owner, step),
                     "annotations": {OWNER_ANNOTATION: _owner_annotation(owner)}},
        "data": {},
    })


# ---- slots: a cluster-wide limit, shared fairly between namespaces ----------------------------


@dataclasses.dataclass
class _Waiter:
    namespace: str
    since: float  # first asked (monotonic): the queue is first come, first served
    seen: float  # last asked


_queue: dict[str, _Waiter] = {}  # owner uid -> waiter


def namespace_share(settings: Settings) -> int:
    """Slots one namespace may hold while another namespace waits."""
    return settings.mover_namespace_share or max(1, settings.mover_concurrency // 2)


def running_by_namespace(settings: Settings) -> collections.Counter[str]:
    """Unfinished mover Jobs per owner namespace.  Only the operator's own namespace is
    counted: every mover runs there and no tenant can create a Job there."""
    jobs = k8s.batch().list_namespaced_job(settings.namespace, label_selector=f"{MOVER_LABEL}=true")
    return collections.Counter((job.metadata.labels or {}).get(OWNER_NAMESPACE_LABEL, "")
                               for job in jobs.items if not _finished(job))


def admit(waiters: dict[str, _Waiter], running: collections.Counter[str], uid: str, *, limit: int,
          share: int) -> tuple[bool, int]:
    """Does waiter ``uid`` get a slot now?  Returns (admitted, 1-based queue position).

    Pure: first come, first served among the waiters whose namespace is under its
    share; a namespace at its share is passed over while any other namespace under
    its share waits (work-conserving: alone, a namespace may use every slot)."""
    order = sorted(waiters, key=lambda u: (waiters[u].since, u))
    position = order.index(uid) + 1
    free = limit - sum(running.values())
    if free <= 0:
        return False, position
    hungry = {w.namespace for w in waiters.values() if running[w.namespace] < share}
    eligible = [u for u in order if running[waiters[u].namespace] < share or not hungry - {waiters[u].namespace}]
    return uid in eligible[:free], position


def _take_slot(owner: k8s.Owner, settings: Settings) -> str | None:
    """Under ``_slots``: None when this owner may start its mover now, else why it waits."""
    now = time.monotonic()
    for uid in [u for u, w in _queue.items() if now - w.seen > QUEUE_FORGET_SECONDS]:
        del _queue[uid]
    waiter = _queue.setdefault(owner.uid, _Waiter(owner.namespace, now, now))
    waiter.seen = now
    running = running_by_namespace(settings)
    metrics.MOVERS_RUNNING.set(sum(running.values()))
    share = namespace_share(settings)
    admitted, position = admit(_queue, running, owner.uid, limit=settings.mover_concurrency, share=share)
    if admitted:
        return None
    busy = sum(running.values())
    return (f"waiting for a mover slot: number {position} of {len(_queue)} in the queue; {busy} of "
            f"{settings.mover_concurrency} movers running, {running[owner.namespace]} of them for namespace "
            f"{owner.namespace} (a namespace holds at most {share} while others wait)")


def _forget(owner: k8s.Owner) -> None:
    with _slots:
        _queue.pop(owner.uid, None)


def _finished(job: client.V1Job) -> bool:
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.type in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") and cond.status == "True":
            return True
    return False


def _job_outcome(job: client.V1Job) -> Literal["Running", "Succeeded", "Failed"]:
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.status != "True":
            continue
        if cond.type in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if cond.type in ("Failed", "FailureTarget"):
            return "Failed"
    return "Running"


def _pods(settings: Settings, name: str) -> list[Any]:
    return list(k8s.core().list_namespaced_pod(settings.namespace,
                                               label_selector=f"batch.kubernetes.io/job-name={name}").items)


def _pod_result(pods: list[Any]) -> tuple[MoverResult | None, str]:
    """The newest terminated mover container's result (and raw message)."""
    newest: tuple[Any, str] | None = None
    for pod in pods:
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            term = cs.state.terminated if cs.state else None
            if term is None:
                continue
            stamp = term.finished_at or pod.metadata.creation_timestamp
            if newest is None or (stamp and newest[0] and stamp > newest[0]):
                newest = (stamp, term.message or "")
    if newest is None:
        return None, ""
    return MoverResult.parse(newest[1]), newest[1]


def mover_state(owner: k8s.Owner, step: str, settings: Settings) -> MoverState | None:
    """Where the step's Job stands; None when there is none."""
    name = job_name(owner, step)
    try:
        job = k8s.batch().read_namespaced_job(name, settings.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    if (job.metadata.labels or {}).get(OWNER_UID_LABEL) != owner.uid:
        # Not made for this CR (a name clash is all but impossible: the name hashes the uid).
        return MoverState("Failed", name, None, "MoverNotOurs", f"Job {settings.namespace}/{name} was not made for "
                          f"{owner}; it is left alone")
    outcome = _job_outcome(job)
    pods = _pods(settings, name)
    result, raw = _pod_result(pods)
    if outcome == "Running":
        # A mover that exited 0 with its verdict is done, whether or not the Job
        # controller has marked the Job Complete yet (it batches pod updates).
        if result is not None and result.ok:
            return MoverState("Succeeded", name, result)
        trouble = start_trouble(pods, _failed_create(settings, name) if not pods else None)
        if trouble is not None:
            reason, message = trouble
            age = (dt.datetime.now(dt.timezone.utc) - job.metadata.creation_timestamp).total_seconds()
            if age > settings.mover_start_timeout:
                return MoverState("Failed", name, None, reason,
                                  f"the mover pod did not start in {settings.mover_start_timeout:.0f}s: {message}",
                                  started=False)
            return MoverState("Running", name, None, reason, f"the mover pod cannot start yet: {message}")
        return MoverState("Running", name)
    if outcome == "Succeeded":
        if result is None or not result.ok:
            return MoverState("Failed", name, result, "MoverResultMissing",
                              "the mover Job completed but left no readable result")
        return MoverState("Succeeded", name, result)
    job_reason = next((c.reason for c in job.status.conditions or [] if c.type in ("Failed", "FailureTarget")), None)
    if result is not None and not result.ok:
        return MoverState("Failed", name, result, result.reason, result.message or "")
    if job_reason == "DeadlineExceeded":
        return MoverState("Failed", name, result, "DeadlineExceeded", "the mover Job ran past the CR's deadline")
    tail = raw.strip().splitlines()[-1] if raw.strip() else "no termination message"
    return MoverState("Failed", name, result, "MoverFailed", f"mover Job {name} failed ({job_reason}): {tail}")


# ---- pods that cannot start: say why at once, fail after mover_start_timeout ---------------------

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def start_trouble(pods: list[Any], failed_create: str | None) -> tuple[str, str] | None:
    """Why the mover's pod is not running (pure, on the pods' status and the Job's FailedCreate Event)."""
    if not pods:
        if failed_create is None:
            return None
        if "exceeded quota" in failed_create or "must specify" in failed_create:
            return "MoverQuotaExceeded", failed_create
        return "MoverPodRefused", failed_create
    for pod in pods:
        status = pod.status
        for cond in (status.conditions or []) if status else []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                return "MoverUnschedulable", cond.message or "no node fits the mover's pod"
        for cs in (status.container_statuses or []) if status else []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in IMAGE_PULL_REASONS:
                return "MoverImagePullFailed", f"{waiting.reason}: {waiting.message or cs.image}"
    return None


def _failed_create(settings: Settings, name: str) -> str | None:
    """The newest FailedCreate Event the Job controller posted on the Job (admission, quota)."""
    try:
        events = k8s.core().list_namespaced_event(
            settings.namespace,
            field_selector=f"involvedObject.kind=Job,involvedObject.name={name},reason=FailedCreate")
    except client.ApiException:
        return None  # not allowed to look (an older chart's RBAC): the start timeout still ends the wait
    newest = max(events.items, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp,
                 default=None)
    return (newest.message or "the Job controller could not create the pod")[:1000] if newest else None


# ---- progress: the mover writes its ConfigMap, the operator relays it ----------------------------

PROGRESS_FIELDS = ("percent", "bytesDone", "bytesTotal", "files")
PROGRESS_MAX = 1 << 62  # bytes and file counts beyond this are nonsense, not progress


def parse_progress(raw: str | None) -> dict[str, int] | None:
    """The mover's progress JSON, bounds-checked (it is input like any other); None when unusable."""
    if not raw or len(raw) > 1024:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    out: dict[str, int] = {}
    for key in PROGRESS_FIELDS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= PROGRESS_MAX:
            return None
        out[key] = value
    if "percent" not in out or out["percent"] > 100:
        return None
    return out


_relayed: dict[str, dict[str, int]] = {}  # job name -> progress last written to its CR


def relay_progress(owner: k8s.Owner, step: str, settings: Settings) -> None:
    """Copy the mover's progress into the CR's ``status.progress`` when it changed (best effort)."""
    name = job_name(owner, step)
    try:
        cm = k8s.core().read_namespaced_config_map(_progress_name(name), settings.namespace)
        progress = parse_progress((cm.data or {}).get(PROGRESS_KEY))
        if progress is None or _relayed.get(name) == progress:
            return
        k8s.custom().patch_namespaced_custom_object_status(
            k8s.GROUP, k8s.VERSION, owner.namespace, owner.plural, owner.name, {"status": {"progress": progress}})
        _relayed[name] = progress
    except client.ApiException:
        return


def wait_for_job(owner: k8s.Owner, step: str, settings: Settings, timeout: float) -> None:
    """Wait until the mover is done or ``timeout`` passes, woken by its pods'
    events (a watch, not a sleep): a flow reacts the moment its mover exits
    rather than at its next retry.  Between events the mover's progress is
    relayed into the CR.  A failed attempt the Job will retry, or a Job
    failing without a pod event, is noticed at the next re-check."""
    from kubernetes import watch

    name = job_name(owner, step)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = mover_state(owner, step, settings)
        if state is not None:
            relay_progress(owner, step, settings)
        if state is None or state.done:
            return
        w = watch.Watch()
        window = max(1, int(min(RECHECK_SECONDS, deadline - time.monotonic())))
        for event in w.stream(k8s.core().list_namespaced_pod, settings.namespace,
                              label_selector=f"batch.kubernetes.io/job-name={name}", timeout_seconds=window):
            pod = event["object"]
            statuses = (pod.status.container_statuses or []) if pod.status else []
            if any(cs.state and cs.state.terminated for cs in statuses):
                w.stop()


def ensure_mover(owner: k8s.Owner, step: str, request: MoverRequest, settings: Settings, *,
                 deadline_seconds: int, ceph: CephCredentials | None = None, wait: float = 0) -> MoverState:
    """Create the step's Job if it does not exist yet (when a fair share of the
    concurrency limit lets it) and report where it stands; with ``wait``, watch
    a running Job up to that many seconds first.  Safe to call again at any time."""
    name = job_name(owner, step)
    state = mover_state(owner, step, settings)
    if state is not None:
        if state.phase == "Running" and wait > 0:
            wait_for_job(owner, step, settings, wait)
            state = mover_state(owner, step, settings) or state
        return state
    if request.needs_ceph and ceph is None:
        raise ValueError("a mover that needs Ceph needs credentials")
    job = build_job(owner, step, request, settings, deadline_seconds,
                    _ceph_secret_name(name) if request.needs_ceph else None)
    with _slots:
        waiting = _take_slot(owner, settings)
        if waiting is not None:
            return MoverState("Waiting", name, reason="MoverSlotsFull", message=waiting)
        _ensure_progress(owner, step, settings, _progress_name(name))
        if ceph is not None and request.needs_ceph:
            _ensure_ceph_secret(owner, step, settings, _ceph_secret_name(name), ceph)
        _create(k8s.batch().create_namespaced_job, settings.namespace, job)
        _queue.pop(owner.uid, None)
    crash_point("mover-created")
    if wait > 0:
        wait_for_job(owner, step, settings, wait)
        return mover_state(owner, step, settings) or MoverState("Running", name)
    return MoverState("Running", name)


def cleanup_mover(owner: k8s.Owner, step: str, settings: Settings) -> None:
    """Remove the step's Job (and its pods), its credentials and progress; missing is fine."""
    name = job_name(owner, step)
    _forget(owner)
    _relayed.pop(name, None)
    _delete_mover_objects(settings.namespace, name)


def _delete_mover_objects(namespace: str, name: str) -> None:
    for delete in (
        lambda: k8s.batch().delete_namespaced_job(name, namespace, propagation_policy="Background"),
        lambda: k8s.core().delete_namespaced_secret(_ceph_secret_name(name), namespace),
        lambda: k8s.core().delete_namespaced_config_map(_progress_name(name), namespace),
    ):
        try:
            delete()
        except client.ApiException as exc:
            if exc.status != 404:
                raise


def mover_stopped(owner: k8s.Owner, step: str, settings: Settings) -> bool:
    """Are all of the step's pods gone (nothing can still write)?"""
    return not _pods(settings, job_name(owner, step))


def parse_owner_annotation(value: str | None) -> k8s.Owner | None:
    """``"<Kind> <namespace>/<name> <uid>"`` back into an Owner (None when malformed)."""
    parts = (value or "").split(" ")
    if len(parts) != 3 or "/" not in parts[1] or parts[0] not in k8s.PLURALS:
        return None
    namespace, _, name = parts[1].partition("/")
    return k8s.Owner(kind=parts[0], namespace=namespace, name=name, uid=parts[2])


def sweep_orphans(settings: Settings, serves: Callable[[str], bool]) -> list[str]:
    """Remove mover Jobs, Secrets and ConfigMaps whose CR is gone (deleted while no operator ran,
    or its finalizer removed by hand): nothing made for a CR outlives it.  Only for namespaces
    this operator serves.  Returns the names removed."""
    core, batch = k8s.core(), k8s.batch()
    selector = f"{MOVER_LABEL}=true"
    found: dict[str, str | None] = {}
    for kind_list in (batch.list_namespaced_job, core.list_namespaced_secret, core.list_namespaced_config_map):
        for obj in kind_list(settings.namespace, label_selector=selector).items:
            name = obj.metadata.name
            for suffix in ("-ceph", "-progress"):
                if kind_list is not batch.list_namespaced_job and name.endswith(suffix):
                    name = name[: -len(suffix)]
            found.setdefault(name, (obj.metadata.annotations or {}).get(OWNER_ANNOTATION))
    removed = []
    for name, annotation in found.items():
        owner = parse_owner_annotation(annotation)
        if owner is None or not serves(owner.namespace):
            continue
        try:
            live = k8s.custom().get_namespaced_custom_object(k8s.GROUP, k8s.VERSION, owner.namespace, owner.plural,
                                                             owner.name)
            if live["metadata"]["uid"] == owner.uid:
                continue
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        _delete_mover_objects(settings.namespace, name)
        removed.append(name)
    return removed
