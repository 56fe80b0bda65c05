"""The mover framework, operator side: one data-moving step = one Job.

A flow calls ``ensure_mover`` with a typed ``MoverRequest`` every time it is
reconciled; the call is idempotent and answers where the step stands
(Waiting for a slot, Running, Succeeded with the mover's result, Failed with
its reason).  ``cleanup_mover`` removes the Job and its credentials.  Flows
never build Jobs themselves, and movers never know about flows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from typing import Any, Literal

from kubernetes import client

from savepoint import k8s
from savepoint.faults import crash_point
from savepoint.mover.request import MoverRequest, MoverResult
from savepoint.settings import Settings
from savepoint.storage.ceph import CephCredentials

MOVER_LABEL = "savepoint.dev/mover"
OWNER_UID_LABEL = "savepoint.dev/owner-uid"
STEP_LABEL = "savepoint.dev/step"

# One operator process creates Jobs; this lock makes "count running movers,
# then create one" atomic so the concurrency limit holds under parallel handlers.
_slots = threading.Lock()
RECHECK_SECONDS = 3  # how often a waiting flow re-reads its Job between pod events


@dataclasses.dataclass(frozen=True)
class MoverState:
    phase: Literal["Waiting", "Running", "Succeeded", "Failed"]
    job_name: str
    result: MoverResult | None = None
    reason: str | None = None
    message: str = ""

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
    """``<cr>-<step>``, shortened with a hash to fit the 63 characters Job names allow."""
    base = f"{owner.name}-{step}"
    if len(base) <= 52:
        return base
    digest = hashlib.sha256(f"{owner.uid}/{step}".encode()).hexdigest()[:8]
    return f"{base[:43].rstrip('-')}-{digest}"


def _ceph_secret_name(name: str) -> str:
    return f"{name}-ceph"


def build_job(owner: k8s.Owner, step: str, request: MoverRequest, settings: Settings,
              deadline_seconds: int, ceph_secret: str | None) -> dict[str, Any]:
    """The Job for one mover step (pure: easy to test and to read)."""
    if request.privileged and not settings.mover_privileged_allowed:
        raise MoverRefused("PrivilegedMoverNotAllowed",
                           "this step needs a privileged mover; set mover.privileged.allowed=true in the chart to permit it")
    name = job_name(owner, step)
    env: list[dict[str, Any]] = [
        {"name": "SAVEPOINT_MOVER_REQUEST", "value": request.to_env()},
        {"name": "SAVEPOINT_OWNER_PLURAL", "value": owner.plural},
        {"name": "SAVEPOINT_OWNER_NAMESPACE", "value": owner.namespace},
        {"name": "SAVEPOINT_OWNER_NAME", "value": owner.name},
        {"name": "SAVEPOINT_PROGRESS_INTERVAL", "value": str(settings.mover_progress_interval)},
    ]
    if ceph_secret:
        for var, key in (("SAVEPOINT_CEPH_MONITORS", "monitors"), ("SAVEPOINT_CEPH_USER_ID", "userID"),
                         ("SAVEPOINT_CEPH_KEY", "userKey")):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ceph_secret, "key": key}}})
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for vol in request.volumes:
        if vol.claim_name:
            volumes.append({"name": vol.name, "persistentVolumeClaim": {"claimName": vol.claim_name,
                                                                        "readOnly": vol.read_only}})
        else:
            assert vol.nfs is not None
            volumes.append({"name": vol.name, "nfs": {"server": vol.nfs.server, "path": vol.nfs.path,
                                                      "readOnly": vol.read_only}})
        mounts.append({"name": vol.name, "mountPath": vol.mount_path, "readOnly": vol.read_only})
    security = _security_context(request)
    labels = {
        "app.kubernetes.io/name": "savepoint-mover",
        "app.kubernetes.io/managed-by": "savepoint",
        MOVER_LABEL: "true",
        OWNER_UID_LABEL: owner.uid,
        STEP_LABEL: step[:63],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": owner.namespace, "labels": labels,
                     "annotations": {"savepoint.dev/owner": str(owner)},
                     "ownerReferences": [owner.owner_reference()]},
        "spec": {
            "backoffLimit": settings.mover_backoff_limit,
            "activeDeadlineSeconds": deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.mover_service_account,
                    "containers": [{
                        "name": "mover",
                        "image": settings.mover_image,
                        "command": ["python", "-m", "savepoint.mover"],
                        "env": env,
                        "volumeMounts": mounts,
                        "securityContext": security,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


# Capabilities a root mover keeps: enough to read any file and recreate
# owners, modes, ACLs and xattrs exactly; nothing else.
FILE_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "SETFCAP", "MKNOD"]
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


def _ensure_mover_identity(namespace: str, settings: Settings) -> None:
    """The per-namespace mover ServiceAccount and its RoleBinding (created once)."""
    core = k8s.core()
    sa = settings.mover_service_account
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": sa, "labels": {
            "app.kubernetes.io/managed-by": "savepoint"}}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    try:
        k8s.rbac().create_namespaced_role_binding(namespace, {
            "metadata": {"name": sa, "labels": {"app.kubernetes.io/managed-by": "savepoint"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": settings.mover_cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        })
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def _ensure_ceph_secret(owner: k8s.Owner, name: str, creds: CephCredentials) -> None:
    try:
        k8s.core().create_namespaced_secret(owner.namespace, {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "savepoint", MOVER_LABEL: "true"},
                         "ownerReferences": [owner.owner_reference(controller=False)]},
            "type": "Opaque",
            "stringData": {"monitors": ",".join(creds.monitors), "userID": creds.user_id, "userKey": creds.key},
        })
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def running_movers() -> int:
    jobs = k8s.batch().list_job_for_all_namespaces(label_selector=f"{MOVER_LABEL}=true")
    return sum(1 for job in jobs.items if not _finished(job))


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


def _pod_result(namespace: str, name: str) -> tuple[MoverResult | None, str]:
    """The newest terminated mover container's result (and raw message)."""
    pods = k8s.core().list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}").items
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


def mover_state(namespace: str, name: str) -> MoverState | None:
    try:
        job = k8s.batch().read_namespaced_job(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    outcome = _job_outcome(job)
    result, raw = _pod_result(namespace, name)
    if outcome == "Running":
        # A mover that exited 0 with its verdict is done, whether or not the Job
        # controller has marked the Job Complete yet (it batches pod updates).
        if result is not None and result.ok:
            return MoverState("Succeeded", name, result)
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


def wait_for_job(namespace: str, name: str, timeout: float) -> None:
    """Wait until the mover is done or ``timeout`` passes, woken by its pods'
    events (a watch, not a sleep): a flow reacts the moment its mover exits
    rather than at its next retry.  A failed attempt the Job will retry, or a
    Job failing without a pod event, is noticed at the next re-check."""
    from kubernetes import watch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = mover_state(namespace, name)
        if state is None or state.done:
            return
        w = watch.Watch()
        window = max(1, int(min(RECHECK_SECONDS, deadline - time.monotonic())))
        for event in w.stream(k8s.core().list_namespaced_pod, namespace,
                              label_selector=f"batch.kubernetes.io/job-name={name}", timeout_seconds=window):
            pod = event["object"]
            statuses = (pod.status.container_statuses or []) if pod.status else []
            if any(cs.state and cs.state.terminated for cs in statuses):
                w.stop()


def ensure_mover(owner: k8s.Owner, step: str, request: MoverRequest, settings: Settings, *,
                 deadline_seconds: int, ceph: CephCredentials | None = None, wait: float = 0) -> MoverState:
    """Create the step's Job if it does not exist yet (respecting the concurrency
    limit) and report where it stands; with ``wait``, watch a running Job up to
    that many seconds first.  Safe to call again at any time."""
    name = job_name(owner, step)
    state = mover_state(owner.namespace, name)
    if state is not None:
        if state.phase == "Running" and wait > 0:
            wait_for_job(owner.namespace, name, wait)
            state = mover_state(owner.namespace, name) or state
        return state
    job = build_job(owner, step, request, settings, deadline_seconds,
                    _ceph_secret_name(name) if request.needs_ceph else None)
    with _slots:
        busy = running_movers()
        if busy >= settings.mover_concurrency:
            return MoverState("Waiting", name, reason="MoverSlotsFull",
                              message=f"{busy} movers running, the limit is {settings.mover_concurrency}")
        _ensure_mover_identity(owner.namespace, settings)
        if request.needs_ceph:
            if ceph is None:
                raise ValueError("a mover that needs Ceph needs credentials")
            _ensure_ceph_secret(owner, _ceph_secret_name(name), ceph)
        try:
            k8s.batch().create_namespaced_job(owner.namespace, job)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    crash_point("mover-created")
    if wait > 0:
        wait_for_job(owner.namespace, name, wait)
        return mover_state(owner.namespace, name) or MoverState("Running", name)
    return MoverState("Running", name)


def cleanup_mover(owner: k8s.Owner, step: str) -> None:
    """Remove the step's Job (and its pods) and credentials; missing is fine."""
    name = job_name(owner, step)
    for delete in (
        lambda: k8s.batch().delete_namespaced_job(name, owner.namespace, propagation_policy="Background"),
        lambda: k8s.core().delete_namespaced_secret(_ceph_secret_name(name), owner.namespace),
    ):
        try:
            delete()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
