"""SavepointSchedule end to end: the real API server, the real Ceph, the operator with the chart's
ServiceAccount, in real time (``@every 5s`` slots; no fake clock anywhere).

Cheap children keep these fast: safe points are one Ceph call, and a ShareBackup whose source claim is
not bound stays Pending (a "slow child") until its own short deadline fails it — which is all Forbid,
deletion and the crash tests need. ImageSnapshots run for real (clone and flatten).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from helpers import volumes
from helpers.kube import wait_custom, wait_gone
from savepoint import cron
from savepoint.flows.schedule_children import ANN_CREATED_BY, LABEL_SCHEDULE_UID, SAFEPOINT_KEY
from savepoint.storage import rbd

pytestmark = pytest.mark.e2e

GROUP, VERSION, PLURAL = "savepoint.dev", "v1alpha1", "savepointschedules"
EVERY = "@every 5s"
PERIOD = 5


@pytest.fixture(scope="module", autouse=True)
def schedule_rbac(kube: Any, chart: Any) -> Iterator[None]:
    """See helpers/schedule_rbac.py: the shared chart release may lose the schedule RBAC mid-run."""
    from helpers.schedule_rbac import schedule_rbac as keep

    with keep(kube):
        yield


@pytest.fixture
def api(kube: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi()


@pytest.fixture
def make_volume(kube: Any) -> Iterator[Any]:
    made: list[volumes.RbdVolume] = []

    def make(namespace: str, name: str = "data", **kw: Any) -> volumes.RbdVolume:
        vol = volumes.rbd_pvc(kube, namespace, name, **kw)
        made.append(vol)
        return vol

    yield make
    for vol in made:
        volumes.delete_rbd_volume(kube, vol)


@pytest.fixture
def schedules(api: client.CustomObjectsApi) -> Iterator[list[tuple[str, str]]]:
    """Schedules a test made, deleted (and waited for) before its namespace goes: the namespace fixture
    only knows the four one-shot kinds, and a schedule left running would keep making children."""
    made: list[tuple[str, str]] = []
    yield made
    for namespace, name in made:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    for namespace, name in made:
        wait_gone(lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name), timeout=60)


def create(api: client.CustomObjectsApi, made: list[tuple[str, str]], namespace: str, template: dict[str, Any],
           name: str | None = None, **spec: Any) -> str:
    name = name or f"s{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SavepointSchedule", "metadata": {"name": name},
            "spec": {"schedule": EVERY, "template": template, **spec}}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    made.append((namespace, name))
    return name


def get(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def status_is(check: Any) -> Any:
    return lambda obj: bool(check(obj.get("status") or {}))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def backups(api: client.CustomObjectsApi, namespace: str, uid: str) -> list[dict[str, Any]]:
    return api.list_namespaced_custom_object(GROUP, VERSION, namespace, "sharebackups",
                                             label_selector=f"{LABEL_SCHEDULE_UID}={uid}")["items"]


def safe_points(kube: Any, vol: volumes.RbdVolume, schedule: str) -> list[str]:
    with volumes.cluster(kube) as c:
        return [s for s in volumes.snapshots(c, vol.ref) if cron.slot_of_child(schedule, s) is not None]


def unbound_backup(claim: str = "never-bound", deadline: int = 3600) -> dict[str, Any]:
    """A ShareBackup template whose child waits (PvcNotBound) until its deadline: a slow child."""
    return {"shareBackup": {"source": {"persistentVolumeClaim": {"name": claim}},
                            "repository": {"persistentVolumeClaim": {"name": "repo"}}, "deadlineSeconds": deadline}}


def unbound_claim(namespace: str, name: str = "never-bound") -> None:
    client.CoreV1Api().create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "no-such-class",
                 "resources": {"requests": {"storage": "1Mi"}}}})


def wait_for_wall_clock(seconds: float) -> None:
    """Let real time pass for slots to come: the clock is what is being tested, nothing else is awaited."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.5, end - time.monotonic()))


# ---- safe points: retention, and VolumeRevert's latest-snapshot rule ------------------------------


def test_safe_points_are_taken_pruned_and_revertable(kube: Any, operator: Any, namespace: str,
                                                     api: client.CustomObjectsApi, make_volume: Any,
                                                     schedules: list[tuple[str, str]]) -> None:
    vol = make_volume(namespace, data={0: b"v1" * 2048})
    name = create(api, schedules, namespace, {"safePoint": {"persistentVolumeClaim": {"name": "data"}}},
                  retention={"keepLast": 2})
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: (s.get("pruned") or 0) >= 2), timeout=90)
    assert obj["status"]["kept"] == 2 and obj["status"]["phase"] == "Active"
    assert obj["status"]["lastSuccessfulTime"] and obj["status"]["nextScheduleTime"]
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("phase") == "Suspended"), timeout=30)
    # What is there after suspension settles: at most keepLast + the one taken while the patch travelled.
    points = safe_points(kube, vol, name)
    assert 2 <= len(points) <= 3, points
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref, read_only=True) as image:
        marks = dict(image.metadata_list())
        assert all(marks[SAFEPOINT_KEY + p] == f"SavepointSchedule/{name} {obj['metadata']['uid']}" for p in points)
        newest = rbd.latest_snapshot(rbd.image_info(image))
    assert newest is not None and newest.name == max(points), "a safe point is an ordinary (latest) snapshot"
    # VolumeRevert treats them as ordinary snapshots: an older one is refused, the newest is rolled back to.
    with volumes.cluster(kube) as c:
        volumes.write(c, vol.ref, {0: b"v2" * 2048})
    for snap, phase in ((min(points), "Failed"), (max(points), "Succeeded")):
        revert = f"rv-{uuid.uuid4().hex[:5]}"
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "volumereverts", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeRevert", "metadata": {"name": revert},
            "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": {"rbdSnapshot": snap}}})
        done = wait_custom(api, namespace, "volumereverts", revert,
                           lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"), timeout=90)
        assert done["status"]["phase"] == phase, done["status"]
        if phase == "Failed":
            assert condition(done, "Ready")["reason"] == "SnapshotNotLatest"
    with volumes.cluster(kube) as c:
        assert volumes.read(c, vol.ref, 0, 4) == b"v1v1"
    # Resumed, it goes on; deleted (deletionPolicy Delete), its safe points go and other snapshots stay.
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
        rbd.create_snapshot(image, "users-own")
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": False}})
    runs = obj["status"]["runs"]
    wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("runs", 0) > runs), timeout=30)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_gone(lambda: get(api, namespace, name), timeout=60)
    with volumes.cluster(kube) as c:
        assert volumes.snapshots(c, vol.ref) == ["users-own"]


def revert_to(api: client.CustomObjectsApi, namespace: str, snap: str) -> dict[str, Any]:
    name = f"rv-{uuid.uuid4().hex[:5]}"
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "volumereverts", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeRevert", "metadata": {"name": name},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": {"rbdSnapshot": snap}}})
    return wait_custom(api, namespace, "volumereverts", name,
                       lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"), timeout=90)


def test_safe_points_across_a_resize_and_the_claim_deleted(kube: Any, operator: Any, namespace: str,
                                                           api: client.CustomObjectsApi, make_volume: Any,
                                                           schedules: list[tuple[str, str]]) -> None:
    vol = make_volume(namespace)
    name = create(api, schedules, namespace, {"safePoint": {"persistentVolumeClaim": {"name": "data"}}},
                  retention={"keepLast": 3})
    wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("lastSuccessfulTime")), timeout=30)
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("phase") == "Suspended"), timeout=30)
    before = max(safe_points(kube, vol, name))
    # Resized (as an expansion does to the image): the newest safe point is of the old size.
    with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
        rbd.resize(image, 2 * vol.size)
    done = revert_to(api, namespace, before)
    assert done["status"]["phase"] == "Failed" and condition(done, "Ready")["reason"] == "SizeMismatch"
    # Resumed, new safe points have the new size and revert; the old ones age out by the rules.
    success = obj["status"]["lastSuccessfulTime"]
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": False}})
    wait_custom(api, namespace, PLURAL, name,
                status_is(lambda s: s.get("lastSuccessfulTime", success) > success and not s.get("pendingRun")),
                timeout=30)
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})
    wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("phase") == "Suspended"), timeout=30)
    after = max(safe_points(kube, vol, name))
    assert after > before
    assert revert_to(api, namespace, after)["status"]["phase"] == "Succeeded"
    # The claim deleted: runs fail with PvcNotFound, nothing is pruned, the image keeps its safe points.
    kept = safe_points(kube, vol, name)
    client.CoreV1Api().delete_namespaced_persistent_volume_claim("data", namespace)
    wait_gone(lambda: client.CoreV1Api().read_namespaced_persistent_volume_claim("data", namespace))
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": False}})
    obj = wait_custom(api, namespace, PLURAL, name,
                      lambda o: condition(o, "LastRunFailed").get("reason") == "PvcNotFound", timeout=30)
    assert condition(obj, "LastRunFailed")["status"] == "True"
    assert safe_points(kube, vol, name) == kept


def test_a_safe_point_schedule_may_not_be_named_savepoint(operator: Any, namespace: str,
                                                          api: client.CustomObjectsApi,
                                                          schedules: list[tuple[str, str]]) -> None:
    name = create(api, schedules, namespace, {"safePoint": {"persistentVolumeClaim": {"name": "data"}}},
                  name="savepoint-hourly")
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("phase") == "Invalid"), timeout=30)
    assert condition(obj, "Ready")["reason"] == "InvalidSpec" and "latest-snapshot" in obj["status"]["message"]


def test_cel_and_schema_refuse_bad_specs(operator: Any, namespace: str, api: client.CustomObjectsApi) -> None:
    bad = [{"schedule": "* * * * * *"}, {"retention": {}}, {"timeZone": "../etc"},
           {"template": {"safePoint": {"persistentVolumeClaim": {"name": "a"}}, "imageSnapshot": {
               "source": {"persistentVolumeClaim": {"name": "a"}}}}}]
    for extra in bad:
        spec = {"schedule": EVERY, "template": {"safePoint": {"persistentVolumeClaim": {"name": "a"}}}, **extra}
        with pytest.raises(client.ApiException) as refused:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "SavepointSchedule", "metadata": {"name": "bad"},
                "spec": spec})
        assert refused.value.status == 422, extra


# ---- missed runs, Forbid, restarts -----------------------------------------------------------------


def test_an_outage_across_several_slots_yields_one_run(kube: Any, operator: Any, namespace: str,
                                                        api: client.CustomObjectsApi, make_volume: Any,
                                                        schedules: list[tuple[str, str]]) -> None:
    vol = make_volume(namespace)
    name = create(api, schedules, namespace, {"safePoint": {"persistentVolumeClaim": {"name": "data"}}})
    obj = wait_custom(api, namespace, PLURAL, name,
                      status_is(lambda s: s.get("runs") == 1 and s.get("lastSuccessfulTime") and not s.get("pendingRun")),
                      timeout=30)
    first_status = obj["status"]
    operator.kill()
    try:
        wait_for_wall_clock(4 * PERIOD)  # four slots pass with no operator
    finally:
        operator.start()
    obj = wait_custom(api, namespace, PLURAL, name,
                      status_is(lambda s: s.get("lastScheduleTime", "") > first_status["lastScheduleTime"]
                                and not s.get("pendingRun")), timeout=30)
    status = obj["status"]
    assert status["missedRuns"] >= 2, status
    # Every child is named by its slot: the first after the outage came several slots after the last one
    # before it, and nothing in between.
    first = cron.parse_time(first_status["lastScheduleTime"])
    slots = sorted(cron.slot_of_child(name, p) for p in safe_points(kube, vol, name))  # type: ignore[type-var]
    assert first in slots
    catch_up = next(t for t in slots if t > first)  # type: ignore[operator]
    assert (catch_up - first).total_seconds() >= 3 * PERIOD, f"one catch-up run, not one per missed slot: {slots}"
    reasons = [e.reason for e in client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items]
    assert "MissedRuns" in reasons


def test_forbid_waits_for_a_slow_child(operator: Any, namespace: str, api: client.CustomObjectsApi,
                                       schedules: list[tuple[str, str]]) -> None:
    unbound_claim(namespace)
    name = create(api, schedules, namespace, unbound_backup(deadline=12))
    obj = wait_custom(api, namespace, PLURAL, name,
                      lambda o: condition(o, "Ready").get("reason") == "PreviousRunActive", timeout=30)
    uid = obj["metadata"]["uid"]
    first = obj["status"]["active"]
    assert [b["metadata"]["name"] for b in backups(api, namespace, uid)] == [first]
    assert "is still running" in obj["status"]["message"]
    # The child gives up at its deadline (PvcNotBound): the run is reported failed, the next one starts.
    obj = wait_custom(api, namespace, PLURAL, name,
                      lambda o: condition(o, "LastRunFailed").get("status") == "True"
                      and (o["status"].get("active") or first) != first, timeout=60)
    failed = condition(obj, "LastRunFailed")
    assert failed["message"].startswith(f"{first}:") and failed["reason"] == "PvcNotBound", failed
    names = sorted(b["metadata"]["name"] for b in backups(api, namespace, uid))
    assert len(names) == 2 and names[0] == first
    assert obj["status"]["missedRuns"] >= 1


@pytest.mark.parametrize("point", ["schedule:recorded", "schedule:created"])
def test_a_restart_never_makes_a_second_child_for_a_slot(crash_harness: Any, api: client.CustomObjectsApi,
                                                         point: str) -> None:
    namespace = crash_harness.namespace
    unbound_claim(namespace)
    crashing = crash_harness.start(crash_at=point)
    name = f"crash{uuid.uuid4().hex[:4]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SavepointSchedule", "metadata": {"name": name},
            "spec": {"schedule": "@every 1h", "template": unbound_backup(), "deletionPolicy": "Delete"}}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                       {"metadata": {"annotations": {"savepoint.dev/run-now": "1"}}})
    crash_harness.wait_crashed(crashing)
    obj = get(api, namespace, name)
    pending = obj["status"]["pendingRun"]
    uid = obj["metadata"]["uid"]
    children = [b["metadata"]["name"] for b in backups(api, namespace, uid)]
    assert children == ([] if point == "schedule:recorded" else [pending["name"]])
    crash_harness.start()
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("active") and not s.get("pendingRun")),
                      timeout=60)
    assert obj["status"]["active"] == pending["name"] and obj["status"]["runs"] == 1
    (child,) = backups(api, namespace, uid)
    assert child["metadata"]["name"] == pending["name"]
    assert child["metadata"]["annotations"][ANN_CREATED_BY] == f"SavepointSchedule/{name} {uid}"
    assert child["spec"]["incremental"] is False, "the first run of a chain is a full backup"
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_gone(lambda: get(api, namespace, name), timeout=60)


# ---- deletion ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["Delete", "Retain"])
def test_deleting_the_schedule(operator: Any, namespace: str, api: client.CustomObjectsApi,
                               schedules: list[tuple[str, str]], policy: str) -> None:
    unbound_claim(namespace)
    name = create(api, schedules, namespace, unbound_backup(), concurrencyPolicy="Allow", deletionPolicy=policy)
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("runs", 0) >= 2 and not s.get("pendingRun")),
                      timeout=30)
    uid = obj["metadata"]["uid"]
    # A tenant's own backup wearing the schedule's label is not the schedule's: it is never touched.
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "sharebackups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ShareBackup",
        "metadata": {"name": f"{name}-20200101-000000", "labels": {LABEL_SCHEDULE_UID: uid}},
        "spec": unbound_backup()["shareBackup"]})
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_gone(lambda: get(api, namespace, name), timeout=60)
    left = {b["metadata"]["name"]: b for b in backups(api, namespace, uid)
            if not b["metadata"].get("deletionTimestamp")}
    assert f"{name}-20200101-000000" in left
    ours = [b for n, b in left.items() if n != f"{name}-20200101-000000"]
    if policy == "Delete":
        assert not ours
    else:
        assert len(ours) >= 2
        for b in ours:
            assert all(r["uid"] != uid for r in b["metadata"].get("ownerReferences") or [])
            assert b["metadata"]["annotations"]["savepoint.dev/retained-from"] == f"SavepointSchedule/{name} {uid}"


# ---- pruning an ImageSnapshot that clones depend on -------------------------------------------------


def test_an_image_with_clones_is_kept_until_they_go(kube: Any, operator: Any, namespace: str,
                                                    api: client.CustomObjectsApi, make_volume: Any,
                                                    schedules: list[tuple[str, str]]) -> None:
    make_volume(namespace, data={0: b"img" * 1000})
    name = create(api, schedules, namespace, {"imageSnapshot": {"source": {"persistentVolumeClaim": {"name": "data"}}}},
                  schedule="@every 10s", retention={"keepLast": 1})
    obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("lastSuccessfulTime")), timeout=120)
    made = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots",
                                             label_selector=f"{LABEL_SCHEDULE_UID}={obj['metadata']['uid']}")["items"]
    done = sorted((i for i in made if (i.get("status") or {}).get("phase") == "Succeeded"),
                  key=lambda i: i["metadata"]["name"])
    first, image = done[0]["metadata"]["name"], done[0]["status"]["image"]
    clone = rbd.ImageRef("rbd", f"clone-{uuid.uuid4().hex[:6]}")
    with volumes.cluster(kube) as c:
        rbd.clone(c, rbd.ImageRef(image["pool"], image["name"]), "snap", clone)
    try:
        obj = wait_custom(api, namespace, PLURAL, name,
                          status_is(lambda s: first in (s.get("retentionBlocked") or "")), timeout=120)
        assert "clones depend on its image" in obj["status"]["retentionBlocked"]
        assert api.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots", first)
    finally:
        with volumes.cluster(kube) as c:
            rbd.remove_image(c, clone, purge_snapshots=True)
    wait_gone(lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots", first),
              timeout=120)
    with volumes.cluster(kube) as c:
        assert not rbd.image_exists(c, rbd.ImageRef(image["pool"], image["name"])), "pruned through its finalizer"
    # Deleted (deletionPolicy Delete), its ImageSnapshots go through their finalizers, a running one too.
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_gone(lambda: get(api, namespace, name), timeout=60)
    deadline = time.monotonic() + 120
    while api.list_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots")["items"]:
        assert time.monotonic() < deadline, "the schedule's ImageSnapshots were not deleted"
        time.sleep(0.5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- pruning across a block-incremental chain -----------------------------------------------------


def test_pruning_a_block_incremental_chain(kube: Any, operator: Any, namespace: str, api: client.CustomObjectsApi,
                                           make_volume: Any, schedules: list[tuple[str, str]]) -> None:
    """Nightly-style block backups every 10 s, keepLast 1, a full one every 3rd run: each new backup is
    incremental to the previous one, which retention prunes only once the new one has ended (never while it
    reads its parent), through the ShareBackup's own finalizer (its repository directory goes)."""
    from sandboxlib import nfs as sandbox_nfs

    export = sandbox_nfs.add_export(kube, "test-schedules-repo")
    core = client.CoreV1Api()
    pv = f"repo-{namespace}"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "claimRef": {"namespace": namespace, "name": "repo"},
                 "nfs": {"server": export.server, "path": export.path}}})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "repo"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "10Gi"}}}})
    try:
        vol = make_volume(namespace, data={0: b"block" * 1000})
        name = create(api, schedules, namespace, {"shareBackup": {
            "source": {"persistentVolumeClaim": {"name": "data"}}, "repository": {"persistentVolumeClaim": {"name": "repo"}},
            "fullEvery": 3}}, schedule="@every 10s", retention={"keepLast": 1})
        obj = wait_custom(api, namespace, PLURAL, name, status_is(lambda s: (s.get("pruned") or 0) >= 2), timeout=240)
        uid = obj["metadata"]["uid"]
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": True}})
        wait_custom(api, namespace, PLURAL, name, status_is(lambda s: s.get("phase") == "Suspended"), timeout=30)

        def events() -> list[Any]:
            return client.CoreV1Api().list_namespaced_event(namespace).items

        pruned = [e.message.rsplit(" ", 1)[1] for e in events() if e.reason == "Pruned"]
        assert len(pruned) >= 2, pruned
        for gone in pruned:  # each went through its own finalizer: data removed, then the object
            wait_gone(lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, "sharebackups", gone),
                      timeout=120)
        seen = events()
        deleted = {e.involved_object.name for e in seen if e.reason == "BackupDeleted"}
        assert set(pruned) <= deleted, (pruned, deleted)
        for gone in pruned:
            assert not list((export.dir / namespace).rglob(gone)), f"{gone}'s data is still in the repository"
        alive = sorted((b for b in backups(api, namespace, uid) if not b["metadata"].get("deletionTimestamp")),
                       key=lambda b: b["metadata"]["name"])
        assert any(b["status"].get("phase") == "Available" for b in alive), "the newest backup always survives"
        # The chain, from the backups' own Events: F I I F ... (fullEvery 3), each incremental to the one before.
        runs = sorted(set(pruned) | {b["metadata"]["name"] for b in alive})
        started = {e.involved_object.name: e.message for e in seen if e.reason == "BackupStarted"}
        assert f"(incremental to {runs[0]})" in started[runs[1]], started
        assert "incremental to" not in started[runs[0]]
        # A parent is pruned only once the backup made from it has ended.
        prunes = {e.message.rsplit(" ", 1)[1]: e.last_timestamp or e.event_time for e in seen if e.reason == "Pruned"}
        ended = {e.involved_object.name: e.last_timestamp or e.event_time for e in seen if e.reason == "BackupSucceeded"}
        for i, victim in enumerate(runs[:-1]):
            if victim in prunes and runs[i + 1] in ended:
                assert prunes[victim] >= ended[runs[i + 1]], f"{victim} pruned before {runs[i + 1]} ended"
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        wait_gone(lambda: get(api, namespace, name), timeout=60)
        deadline = time.monotonic() + 120
        while backups(api, namespace, uid):
            assert time.monotonic() < deadline, "the schedule's backups were not deleted"
            time.sleep(0.5)
        del vol
    finally:
        try:
            core.delete_persistent_volume(pv)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
