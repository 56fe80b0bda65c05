"""ImageSnapshot end to end (seed 002, Nova's RBD direct snapshots): real API server, real Ceph, the
operator running with the chart's ServiceAccount, flatten and copy movers run by the pod runner.

The caps tests run a second operator whose Ceph user may not write the ``images`` pool (ceph-csi style
Secret, made here with the admin keyring), and whose fallback copy runs as a separate user that may read
``rbd`` and write ``images`` only (setting ``image_copy_secret``).
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from helpers.movers import live_mover_objects
from helpers import volumes
from helpers.kube import phase_in, reason_is, wait_custom, wait_gone
from helpers.operator_proc import OperatorProcess, free_port
from helpers.tenant import make_namespace, tenant_of
from sandboxlib import ceph as sandbox_ceph
from savepoint.flows import imagesnapshot as flow
from savepoint.storage import ceph, rbd

pytestmark = pytest.mark.e2e

MiB = 1 << 20
GROUP, VERSION, PLURAL = "savepoint.dev", "v1alpha1", "imagesnapshots"
SIZE = 64 * MiB
# Known data at a few offsets of a thin image: the start, inside an object, a whole object, the last block.
DATA = {0: b"A" * 4096, 5 * MiB + 123: b"point in time" * 300, 16 * MiB: bytes(range(256)) * 16384,
        SIZE - 4096: b"\xff" * 4096}
BLOCK = 4096


@pytest.fixture
def make_volume(make_volume: Any) -> Any:
    """conftest's, with the claim named ``disk`` unless told otherwise."""
    make_volume.default_name = "disk"
    return make_volume


def create(api: client.CustomObjectsApi, namespace: str, *, pvc: str = "disk", name: str | None = None,
           **spec: Any) -> str:
    name = name or f"isnap-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageSnapshot", "metadata": {"name": name},
            "spec": {"source": {"persistentVolumeClaim": {"name": pvc}}, **spec}}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return name


def finished(api: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_custom(api, namespace, PLURAL, name, phase_in("Succeeded", "Failed"), timeout)


def get(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def delete(api: client.CustomObjectsApi, namespace: str, name: str) -> None:
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def gone(api: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 120) -> None:
    wait_gone(lambda: get(api, namespace, name), timeout)


def event_reasons(namespace: str, kind: str, name: str) -> set[str]:
    events = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    return {e.reason for e in events.items}


def image_names(kube: Any, pool: str, prefix: str) -> list[str]:
    """Images of ``pool`` whose names start with ``prefix`` (generated names start with the namespace)."""
    import rbd as librbd

    with volumes.cluster(kube) as c, ceph.open_ioctx(c, pool) as ioctx:
        return sorted(n for n in librbd.RBD().list(ioctx) if n.startswith(prefix))


def assert_clean(kube: Any, vol: volumes.RbdVolume, namespace: str) -> None:
    """No snapshot on the source, no lock on the PVC, no mover Job or credential Secret left."""
    with volumes.cluster(kube) as c:
        assert volumes.snapshots(c, vol.ref) == [], "a snapshot was left on the source"
    pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim(vol.pvc, namespace)
    assert not {k for k in (pvc.metadata.annotations or {}) if k.startswith("savepoint.dev/")}
    assert not live_mover_objects(namespace)


def assert_image(kube: Any, obj: dict[str, Any], vol: volumes.RbdVolume, *, method: str,
                 expected_checksum: str | None = None) -> rbd.ImageRef:
    """The image is independent (no parent), holds the source's content, has ``snap`` protected, and
    ``status.location`` points at it."""
    st = obj["status"]
    assert st["phase"] == "Succeeded", st
    assert st["method"] == method
    image = rbd.ImageRef(st["image"]["pool"], st["image"]["name"])
    fsid = sandbox_ceph.fsid(kube)
    assert st["location"] == f"rbd://{fsid}/{image.pool}/{image.image}/snap"
    assert st["image"]["size"] == f"{vol.size // MiB}Mi"
    assert st["step"] == "ImageReady"
    assert not {"temporarySnapshot", "temporaryImage", "moverJob"} & set(st), st
    with volumes.cluster(kube) as c:
        with rbd.open_ref(c, image, read_only=True) as handle:
            info = rbd.image_info(handle)
            owner = handle.metadata_get(flow.OWNER_KEY)
        assert info.parent is None, "the image still depends on the source"
        assert [s.name for s in info.snapshots] == ["snap"] and info.snapshots[0].protected
        assert owner.endswith(obj["metadata"]["uid"])
        assert info.size == vol.size
        content = volumes.checksum(c, image)
        assert content == (expected_checksum or volumes.checksum(c, vol.ref))
        with rbd.open_ref(c, image, read_only=True) as dst, rbd.open_ref(c, vol.ref, read_only=True) as src:
            # thin stays thin: exactly the source's allocation, object for object
            assert rbd.allocated_extents(dst, whole_object=True) == rbd.allocated_extents(src, whole_object=True)
    return image


def remove_image(kube: Any, image: rbd.ImageRef) -> None:
    with volumes.cluster(kube) as c:
        rbd.remove_image(c, image, purge_snapshots=True)


# --- the direct path ---------------------------------------------------------------------------

def test_direct_path_clones_and_flattens_into_the_image_pool(kube: Any, operator: Any, namespace: str, api: Any,
                                                             make_volume: Any) -> None:
    vol = make_volume(namespace, size=SIZE, data=DATA)
    name = create(api, namespace)
    seen: list[dict[str, Any]] = []

    def done(obj: dict[str, Any]) -> bool:
        st = obj.get("status") or {}
        if st.get("phase") == "Creating" and st.get("progress"):
            seen.append({"step": st.get("step"), "job": st.get("moverJob"), **st["progress"]})
        return st.get("phase") in ("Succeeded", "Failed")

    obj = wait_custom(api, namespace, PLURAL, name, done, 180)
    # the flatten ran in a mover Job, named in status, and reported its progress there (kubectl get isnap)
    # (between the Job's removal and the runner recording Flattened, status briefly shows no moverJob)
    flattening = [p for p in seen if p["step"] == "Cloned" and p["job"]]
    assert flattening and all(p["job"].startswith(f"{name}-flatten-") for p in flattening), seen
    assert flattening[-1]["percent"] == 100 and flattening[-1]["bytesTotal"] == SIZE, seen
    image = assert_image(kube, obj, vol, method="Clone")
    assert image.pool == "images" and image.image == flow.generated_image_name(namespace, name, obj["metadata"]["uid"])
    assert "fallbackReason" not in obj["status"]
    with volumes.cluster(kube) as c:
        for offset, data in DATA.items():
            assert volumes.read(c, image, offset, len(data)) == data
    assert_clean(kube, vol, namespace)
    reasons = {"ImageSnapshotStarted", "ImageSnapshotSucceeded"}
    assert reasons <= event_reasons(namespace, "ImageSnapshot", name)
    assert reasons <= event_reasons(namespace, "PersistentVolumeClaim", vol.pvc)
    ready = {c["type"]: c for c in obj["status"]["conditions"]}
    assert ready["Ready"]["status"] == "True" and ready["Succeeded"]["status"] == "True"
    # deletionPolicy Delete (the default): the image goes with the ImageSnapshot
    delete(api, namespace, name)
    gone(api, namespace, name)
    assert image_names(kube, "images", namespace) == []


def test_the_point_in_time_data_while_the_source_is_being_written(kube: Any, operator: Any, namespace: str,
                                                                 api: Any, make_volume: Any) -> None:
    """A writer keeps writing the source through librbd (it is in use: an RBD watcher, the exclusive lock)
    for the whole ImageSnapshot; the image holds exactly the writes up to one moment, none after it."""
    vol = make_volume(namespace, size=SIZE)
    blocks = 256
    stride = SIZE // blocks  # one block every 256 KiB: every RADOS object sees writes
    written = [0]
    failure: list[BaseException] = []
    stop = threading.Event()
    warm = threading.Event()

    def writer() -> None:
        try:
            with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref) as image:
                gen = 0
                while not stop.is_set():
                    gen += 1
                    image.write(struct.pack(">Q", gen) * (BLOCK // 8), (gen % blocks) * stride)
                    written[0] = gen
                    if gen == 2 * blocks:
                        warm.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)
            warm.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert warm.wait(60), "the writer did not get going"
        with volumes.cluster(kube) as c, rbd.open_ref(c, vol.ref, read_only=True) as image:
            assert rbd.watchers(image), "the source should be in use (watched) during the snapshot"
        before = written[0]
        name = create(api, namespace)
        obj = finished(api, namespace, name)
        after_snapshot_target = written[0] + 2 * blocks
        while written[0] < after_snapshot_target and not failure:
            stop.wait(0.01)  # let the writer add writes that the image must not have
    finally:
        stop.set()
        thread.join(30)
    assert not failure, f"writing the source failed during the snapshot: {failure[0]!r}"
    st = obj["status"]
    assert st["phase"] == "Succeeded" and st["method"] == "Clone", st
    image = rbd.ImageRef(st["image"]["pool"], st["image"]["name"])
    with volumes.cluster(kube) as c:
        raw = [volumes.read(c, image, i * stride, BLOCK) for i in range(blocks)]
        assert volumes.snapshots(c, vol.ref) == []
    gens = []
    for i, block in enumerate(raw):
        words = set(struct.unpack(f">{BLOCK // 8}Q", block))
        assert len(words) == 1, f"block {i} is torn: {sorted(words)[:4]}"
        gens.append(words.pop())
    cut = max(gens)
    expected = [max(0, cut - ((cut - i) % blocks)) for i in range(blocks)]
    assert gens == expected, "the image is not the source at one point in time"
    assert before <= cut < written[0], (before, cut, written[0])
    delete(api, namespace, name)
    gone(api, namespace, name)


def test_copy_method_copies_sparse_and_verified(kube: Any, operator: Any, namespace: str, api: Any,
                                                make_volume: Any) -> None:
    vol = make_volume(namespace, size=SIZE, data=DATA)
    name = create(api, namespace, method="Copy", destination={"image": f"copy-{namespace}"})
    obj = finished(api, namespace, name)
    image = assert_image(kube, obj, vol, method="Copy")
    assert image.image == f"copy-{namespace}"
    with volumes.cluster(kube) as c:
        assert obj["status"]["checksum"] == volumes.checksum(c, vol.ref)
    assert obj["status"]["fallbackReason"].startswith("spec.method is Copy")
    assert "FallbackToCopy" not in event_reasons(namespace, "ImageSnapshot", name)
    assert_clean(kube, vol, namespace)
    delete(api, namespace, name)
    gone(api, namespace, name)
    assert image_names(kube, "images", f"copy-{namespace}") == []


# --- deletion ----------------------------------------------------------------------------------

def test_retain_keeps_the_image_and_clones_hold_up_a_delete(kube: Any, operator: Any, namespace: str, api: Any,
                                                            make_volume: Any) -> None:
    vol = make_volume(namespace, size=16 * MiB, data={0: b"kept" * 1024})
    kept = create(api, namespace, deletionPolicy="Retain")
    kept_image = assert_image(kube, finished(api, namespace, kept), vol, method="Clone")
    delete(api, namespace, kept)
    gone(api, namespace, kept)
    try:
        assert image_names(kube, "images", namespace) == [kept_image.image]
        assert "Retained" in event_reasons(namespace, "ImageSnapshot", kept)
    finally:
        remove_image(kube, kept_image)

    dropped = create(api, namespace)
    image = assert_image(kube, finished(api, namespace, dropped), vol, method="Clone")
    child = rbd.ImageRef("rbd", f"child-of-{namespace}")
    with volumes.cluster(kube) as c:
        rbd.clone(c, image, "snap", child)  # someone booted a disk from the image
    try:
        delete(api, namespace, dropped)
        obj = wait_custom(api, namespace, PLURAL, dropped, reason_is("ImageHasClones"), 60)
        assert obj["status"]["phase"] == "ErrorDeleting"
        assert child.image in obj["status"]["message"]
        assert image_names(kube, "images", namespace) == [image.image]
        assert "ImageHasClones" in event_reasons(namespace, "ImageSnapshot", dropped)
    finally:
        remove_image(kube, child)
    gone(api, namespace, dropped, timeout=60)  # retried by itself once the clone is gone
    assert image_names(kube, "images", namespace) == []


# --- refusals ----------------------------------------------------------------------------------

def test_refusals(kube: Any, operator: Any, namespace: str, api: Any, make_volume: Any) -> None:
    missing = create(api, namespace, pvc="no-such-claim")
    obj = finished(api, namespace, missing, 60)
    assert obj["status"]["phase"] == "Failed" and obj["status"]["conditions"][0]["reason"] == "PvcNotFound"
    vol = make_volume(namespace, size=16 * MiB)
    taken = rbd.ImageRef("images", f"taken-{namespace}")
    with volumes.cluster(kube) as c:
        rbd.create_image(c, taken, MiB)
    try:
        clash = create(api, namespace, destination={"image": taken.image})
        obj = finished(api, namespace, clash, 60)
        assert obj["status"]["phase"] == "Failed", obj["status"]
        assert "exists already" in obj["status"]["message"]
        delete(api, namespace, clash)
        gone(api, namespace, clash)
        assert image_names(kube, "images", taken.image) == [taken.image], "someone else's image must stay"
    finally:
        remove_image(kube, taken)
    assert_clean(kube, vol, namespace)


def test_plugin_snapshots_an_image_and_follows_it(kube: Any, operator: Any, tenant: Any, namespace: str, api: Any,
                                                  make_volume: Any) -> None:
    make_volume(namespace, size=16 * MiB, data={0: b"plugin" * 100})
    out = subprocess.run([str(kube.venv / "bin" / "kubectl-savepoint"), "--kubeconfig", str(tenant.kubeconfig),
                          "-n", namespace, "snapshot-image", "disk", "--name", "via-plugin", "--wait",
                          "--timeout", "120"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "phase=Succeeded" in out.stdout and "location: rbd://" in out.stdout
    table = subprocess.run([str(kube.bin / "kubectl"), "--kubeconfig", str(tenant.kubeconfig), "-n", namespace, "get",
                            "isnap", "via-plugin", "-o", "wide"], capture_output=True, text=True, check=True).stdout
    header, row = table.splitlines()
    assert header.split()[:4] == ["NAME", "PHASE", "PROGRESS", "SOURCE"] and "METHOD" in header
    assert "Succeeded" in row and "pvc/disk" in row and "rbd://" in row and "Clone" in row
    delete(api, namespace, "via-plugin")
    gone(api, namespace, "via-plugin")


# --- a Ceph user that may not write the image pool ---------------------------------------------

class Restricted:
    """Two cephx users and their ceph-csi style Secrets, readable by the operator's ServiceAccount."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.tag = uuid.uuid4().hex[:4]
        self.prefix = f"spk-{self.tag}-"
        self.creds_namespace = f"{self.prefix}creds"
        self.no_images_user = f"sp-noimg-{self.tag}"  # the operator's user: writes volumes, only reads images
        self.copy_user = f"sp-copy-{self.tag}"  # the fallback copy's user: reads volumes, writes images
        self.env = {"SAVEPOINT_CEPH_SECRET": f"{self.creds_namespace}/no-images",
                    "SAVEPOINT_IMAGE_COPY_SECRET": f"{self.creds_namespace}/copy"}

    def _ceph(self, *args: str) -> str:
        env = dict(os.environ, **sandbox_ceph.admin_env(self.kube))
        return subprocess.run(["ceph", *args], env=env, check=True, capture_output=True, text=True,
                              timeout=60).stdout.strip()

    def setup(self) -> None:
        caps = {self.no_images_user: "profile rbd pool=rbd, profile rbd-read-only pool=images",
                self.copy_user: "profile rbd-read-only pool=rbd, profile rbd pool=images"}
        core = client.CoreV1Api()
        core.create_namespace({"metadata": {"name": self.creds_namespace}})
        for (user, osd), secret in zip(caps.items(), ("no-images", "copy"), strict=True):
            self._ceph("auth", "get-or-create", f"client.{user}", "mon", "profile rbd", "osd", osd)
            key = self._ceph("auth", "print-key", f"client.{user}")
            core.create_namespaced_secret(self.creds_namespace, {"metadata": {"name": secret},
                                                                 "stringData": {"userID": user, "userKey": key}})
        # What the chart renders for ceph.secret (and would for the copy secret): get, by name, in that namespace.
        client.RbacAuthorizationV1Api().create_namespaced_role(self.creds_namespace, {
            "metadata": {"name": "savepoint-ceph-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["no-images", "copy"],
                       "verbs": ["get"]}]})
        client.RbacAuthorizationV1Api().create_namespaced_role_binding(self.creds_namespace, {
            "metadata": {"name": "savepoint-ceph-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "savepoint-ceph-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "savepoint-operator", "namespace": "savepoint-system"}]})

    def teardown(self) -> None:
        try:
            client.CoreV1Api().delete_namespace(self.creds_namespace)
        finally:
            for user in (self.no_images_user, self.copy_user):
                self._ceph("auth", "del", f"client.{user}")


@pytest.fixture(scope="module")
def restricted(kube: Any, chart: dict[str, str]) -> Iterator[Restricted]:
    config.load_kube_config(str(kube.kubeconfig))
    users = Restricted(kube)
    users.setup()
    yield users
    users.teardown()


CAPS_TESTS = ("auto", "clone")


@pytest.fixture(scope="module")
def restricted_operator(kube: Any, chart: dict[str, str], restricted: Restricted) -> Iterator[OperatorProcess]:
    """An operator whose Ceph user may not write the images pool, serving one namespace per caps test.

    The namespaces exist before the operator starts and are named, not matched by a pattern: kopf then
    watches them from its start (once, a CR created right after its namespace went unseen for minutes
    while kopf was still starting that namespace's watch)."""
    from helpers.operator_sa import operator_kubeconfig

    names = [f"{restricted.prefix}{test}" for test in CAPS_TESTS]
    for name in names:
        make_namespace(kube, name)  # with its tenant, who creates the CRs there
    env = dict(chart, **restricted.env, SAVEPOINT_METRICS_PORT=str(free_port()),
               SAVEPOINT_WATCH_NAMESPACES=",".join(names))
    log = kube.logs / f"operator-isnap-caps-{restricted.tag}.log"
    proc = OperatorProcess(kube.venv, operator_kubeconfig(kube), log, env, free_port())
    proc.start()
    yield proc
    proc.stop()
    for name in names:
        tenant_of(name).close()
        client.CoreV1Api().delete_namespace(name)


def caps_namespace(restricted: Restricted, test: str) -> str:
    return f"{restricted.prefix}{test}"


def metric(proc: OperatorProcess, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.env['SAVEPOINT_METRICS_PORT']}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_caps_denied_auto_falls_back_to_a_sparse_verified_copy(kube: Any, restricted: Restricted,
                                                               restricted_operator: OperatorProcess,
                                                               make_volume: Any) -> None:
    namespace = caps_namespace(restricted, "auto")
    api = tenant_of(namespace).custom
    vol = make_volume(namespace, size=SIZE, data=DATA)
    fallbacks = metric(restricted_operator, "savepoint_fallbacks_total", 'reason="PermissionDenied"')
    name = create(api, namespace)
    obj = finished(api, namespace, name)
    image = assert_image(kube, obj, vol, method="Copy")
    why = obj["status"]["fallbackReason"]
    assert "PermissionDenied" in why and f"client.{restricted.no_images_user}" in why, why
    assert "profile rbd pool=images" in why, why
    with volumes.cluster(kube) as c:
        assert obj["status"]["checksum"] == volumes.checksum(c, vol.ref)
    assert {"ImageSnapshotStarted", "FallbackToCopy", "ImageSnapshotSucceeded"} <= event_reasons(
        namespace, "ImageSnapshot", name)
    assert "FallbackToCopy" in event_reasons(namespace, "PersistentVolumeClaim", vol.pvc)
    assert metric(restricted_operator, "savepoint_fallbacks_total", 'reason="PermissionDenied"') == fallbacks + 1
    assert_clean(kube, vol, namespace)
    assert image_names(kube, "images", namespace) == [image.image]
    # The operator's own user cannot remove it; the copy user, which made it, does.
    delete(api, namespace, name)
    gone(api, namespace, name)
    assert image_names(kube, "images", namespace) == []


def test_caps_denied_clone_fails_with_the_reason_and_leaves_nothing(kube: Any, restricted: Restricted,
                                                                    restricted_operator: OperatorProcess,
                                                                    make_volume: Any) -> None:
    namespace = caps_namespace(restricted, "clone")
    api = tenant_of(namespace).custom
    vol = make_volume(namespace, size=SIZE, data=DATA)
    name = create(api, namespace, method="Clone")
    obj = finished(api, namespace, name)
    st = obj["status"]
    assert st["phase"] == "Failed", st
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PermissionDenied"
    assert f"client.{restricted.no_images_user}" in st["message"] and "pool images" in st["message"], st["message"]
    assert "method Clone does not fall back" in st["message"]
    assert "method" in st and st["method"] == "Clone" and "fallbackReason" not in st
    assert not {"temporaryImage", "temporarySnapshot"} & set(st)
    assert image_names(kube, "images", namespace) == []
    assert_clean(kube, vol, namespace)
    reasons = event_reasons(namespace, "ImageSnapshot", name)
    assert "ImageSnapshotFailed" in reasons and "FallbackToCopy" not in reasons
    delete(api, namespace, name)
    gone(api, namespace, name)


# --- killed at every step ----------------------------------------------------------------------

# "ImageSnapshot:<Step>:done" is right after the step runner recorded the step; "isnap:..." points are inside
# a step (the snapshot taken under the lock, the clone made before it is marked ours, ...).  "mover-created" is
# right after a mover Job is created: on the direct path the flatten, after a fallback the copy; the Job runs
# on while the operator is down.
DIRECT_POINTS = ["ImageSnapshot:Validated:done", "isnap:snapshot-taken", "ImageSnapshot:Snapshotted:done",
                 "isnap:clone-made", "ImageSnapshot:Cloned:done", "mover-created", "ImageSnapshot:Flattened:done",
                 "ImageSnapshot:SourceSnapshotRemoved:done"]
FALLBACK_POINTS = ["isnap:fallback", "isnap:image-created", "ImageSnapshot:ImageCreated:done", "mover-created",
                   "ImageSnapshot:Copied:done"]


def _kill_and_restart(kube: Any, harness: Any, api: Any, make_volume: Any, point: str, method: str) -> None:
    namespace = harness.namespace
    vol = make_volume(namespace, size=SIZE, data=DATA)
    crashing = harness.start(crash_at=point)
    name = create(api, namespace)
    harness.wait_crashed(crashing)
    at_crash = get(api, namespace, name)["status"]
    assert at_crash.get("phase") not in ("Succeeded", "Failed"), at_crash
    if point == "ImageSnapshot:Validated:done":  # both names are recorded before either object exists
        assert at_crash["temporarySnapshot"] == flow.snapshot_name(get(api, namespace, name)["metadata"]["uid"])
        with volumes.cluster(kube) as c:
            assert volumes.snapshots(c, vol.ref) == []
        assert image_names(kube, "images", namespace) == []
        assert at_crash["temporaryImage"].startswith(namespace)
    harness.start()
    obj = finished(api, namespace, name)
    image = assert_image(kube, obj, vol, method=method)
    assert "Adopted" in event_reasons(namespace, "ImageSnapshot", name)
    assert_clean(kube, vol, namespace)
    assert image_names(kube, "images", namespace) == [image.image], "an orphan image was left in the image pool"
    staging = f"{flow.STAGING_PREFIX}{obj['metadata']['uid'][:13]}"
    assert image_names(kube, "images", staging) == [], "the copy path's staging image was left"
    delete(api, namespace, name)
    gone(api, namespace, name)
    assert image_names(kube, "images", namespace) == []


@pytest.mark.parametrize("point", DIRECT_POINTS)
def test_killed_at_each_step_of_the_direct_path(kube: Any, crash_harness: Any, make_volume: Any, point: str) -> None:
    _kill_and_restart(kube, crash_harness, crash_harness.api, make_volume, point, "Clone")


@pytest.mark.parametrize("point", FALLBACK_POINTS)
def test_killed_at_each_step_of_the_fallback(kube: Any, crash_harness: Any, restricted: Restricted,
                                             make_volume: Any, point: str) -> None:
    crash_harness.env.update(restricted.env)
    _kill_and_restart(kube, crash_harness, crash_harness.api, make_volume, point, "Copy")


def test_deleted_while_the_operator_is_down_mid_flatten(kube: Any, crash_harness: Any, make_volume: Any) -> None:
    """Killed with a clone made and its flatten running, deleted meanwhile: the restarted operator removes
    the clone (once the mover lets go of it), the source snapshot and the Job, then lets the CR go."""
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=SIZE, data=DATA)
    crashing = crash_harness.start(crash_at="mover-created")  # the flatten Job runs on
    name = create(api, namespace)
    crash_harness.wait_crashed(crashing)
    delete(api, namespace, name)
    assert get(api, namespace, name)["metadata"]["deletionTimestamp"]
    crash_harness.start()
    gone(api, namespace, name)
    assert image_names(kube, "images", namespace) == []
    assert_clean(kube, vol, namespace)


def test_a_failed_flatten_falls_back_to_the_copy(kube: Any, crash_harness: Any, make_volume: Any) -> None:
    """The clone vanishes while the operator is down (an admin cleaned up): the flatten fails, the copy
    takes over from the same source snapshot, and the result is the same image."""
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=SIZE, data=DATA)
    crashing = crash_harness.start(crash_at="ImageSnapshot:Cloned:done")
    name = create(api, namespace)
    crash_harness.wait_crashed(crashing)
    st = get(api, namespace, name)["status"]
    remove_image(kube, rbd.ImageRef(st["destinationPool"], st["temporaryImage"]))
    crash_harness.start()
    obj = finished(api, namespace, name)
    image = assert_image(kube, obj, vol, method="Copy")
    assert obj["status"]["fallbackReason"].startswith("the flatten failed"), obj["status"]["fallbackReason"]
    assert_clean(kube, vol, namespace)
    delete(api, namespace, name)
    gone(api, namespace, name)
    assert image_names(kube, "images", namespace) == [] and image.image


def test_a_raw_rbd_source_in_an_admin_namespace(kube: Any, operator: Any, admin_namespace: str,
                                                admin_api: Any) -> None:
    api = admin_api  # raw references are for administrators
    fsid = sandbox_ceph.fsid(kube)
    source = rbd.ImageRef("rbd", f"raw-{admin_namespace}")
    with volumes.cluster(kube) as c:
        rbd.create_image(c, source, 8 * MiB)
        volumes.write(c, source, {MiB: b"raw" * 1000})
        expected = volumes.checksum(c, source)
    try:
        name = f"raw-{uuid.uuid4().hex[:6]}"
        api.create_namespaced_custom_object(GROUP, VERSION, admin_namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageSnapshot", "metadata": {"name": name},
            "spec": {"source": {"rbd": {"clusterID": fsid, "pool": "rbd", "image": source.image}},
                     "destination": {"image": f"raw-copy-{admin_namespace}"}, "deletionPolicy": "Delete"}})
        obj = finished(api, admin_namespace, name)
        assert obj["status"]["phase"] == "Succeeded" and obj["status"]["source"] == f"rbd:rbd/{source.image}"
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, rbd.ImageRef("images", f"raw-copy-{admin_namespace}")) == expected
            assert volumes.snapshots(c, source) == []
        delete(api, admin_namespace, name)
        gone(api, admin_namespace, name)
        assert image_names(kube, "images", f"raw-copy-{admin_namespace}") == []
    finally:
        remove_image(kube, source)


def test_the_snapshot_waits_for_another_action_holding_the_volume(kube: Any, operator: Any, tenant: Any,
                                                                   namespace: str, api: Any, make_volume: Any) -> None:
    """The short PVC lock: while another action holds the volume (a revert writing it, say), the snapshot
    waits (VolumeBusy) instead of capturing half-written data; once the lock is gone, it goes on."""
    vol = make_volume(namespace, size=16 * MiB, data={0: b"busy" * 1024})
    core = tenant.core  # annotations of its own claim are the tenant's to write
    held = {"savepoint.dev/lock": "Reverter/elsewhere", "savepoint.dev/lock-uid": "not-a-savepoint-cr",
            "savepoint.dev/state": "reverting"}
    core.patch_namespaced_persistent_volume_claim(vol.pvc, namespace, {"metadata": {"annotations": held}})
    name = create(api, namespace)
    obj = wait_custom(api, namespace, PLURAL, name, reason_is("VolumeBusy"), 60)
    assert obj["status"]["phase"] == "Pending" and obj["status"]["step"] == "Validated"
    with volumes.cluster(kube) as c:
        assert volumes.snapshots(c, vol.ref) == []
    core.patch_namespaced_persistent_volume_claim(vol.pvc, namespace, {"metadata": {"annotations": {
        key: None for key in held}}})
    obj = finished(api, namespace, name, 60)
    assert_image(kube, obj, vol, method="Clone")
    assert_clean(kube, vol, namespace)
    assert "VolumeBusy" in event_reasons(namespace, "ImageSnapshot", name)


@pytest.mark.parametrize("method", ["Auto", "Copy"])
def test_a_destination_taken_after_the_check_ends_destination_exists(kube: Any, crash_harness: Any,
                                                                      make_volume: Any, method: str) -> None:
    """Another action takes the named destination between this one's check and its clone (or, for the copy,
    its create): the ImageSnapshot ends DestinationExists naming the image's owner before anything is
    written to it (the copy used to write onto it), and the undo removes its temporary snapshot; the other
    image stays exactly as it was, still marked as the other's."""
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=16 * MiB, data={0: b"mine" * 1024})
    golden = rbd.ImageRef("images", f"golden-{uuid.uuid4().hex[:6]}")
    crashing = crash_harness.start(crash_at="ImageSnapshot:Snapshotted:done")
    name = create(api, namespace, method=method, destination={"image": golden.image})
    crash_harness.wait_crashed(crashing)
    other = flow.owner_value("elsewhere", "theirs", "00000000-other")
    try:
        with volumes.cluster(kube) as c:
            assert volumes.snapshots(c, vol.ref), "the temporary snapshot was taken before the crash"
            rbd.create_image(c, golden, 4 * MiB)
            volumes.write(c, golden, {0: b"golden" * 100})
            with rbd.open_ref(c, golden) as image:
                image.metadata_set(flow.OWNER_KEY, other)
            before = volumes.checksum(c, golden)
        crash_harness.start()
        obj = finished(api, namespace, name)
        st = obj["status"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert st["phase"] == "Failed" and ready["reason"] == "DestinationExists", st
        assert other in st["message"] and "it is left alone" in st["message"], st["message"]
        assert "removed snapshot" in st["message"], st["message"]
        assert not {"temporaryImage", "temporarySnapshot", "moverJob", "abort"} & set(st), st
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, golden) == before, "the other's image was written"
            with rbd.open_ref(c, golden, read_only=True) as image:
                assert image.metadata_get(flow.OWNER_KEY) == other
        assert_clean(kube, vol, namespace)
        assert {"Aborting", "ImageSnapshotFailed"} <= event_reasons(namespace, "ImageSnapshot", name)
        delete(api, namespace, name)
        gone(api, namespace, name)
        assert image_names(kube, "images", golden.image) == [golden.image], "deleting it must not take theirs"
    finally:
        remove_image(kube, golden)


def test_killed_under_the_lock_and_deleted_the_undo_releases_it(kube: Any, crash_harness: Any,
                                                                 make_volume: Any) -> None:
    """Killed right after the snapshot, with the PVC lock still held; deleted while the operator is down:
    the restarted operator undoes the begun step through the runner (phase Aborting), which removes the
    snapshot and gives the lock back."""
    namespace, api = crash_harness.namespace, crash_harness.api
    vol = make_volume(namespace, size=16 * MiB, data={0: b"locked" * 1024})
    crashing = crash_harness.start(crash_at="isnap:snapshot-taken")
    name = create(api, namespace)
    crash_harness.wait_crashed(crashing)
    pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim(vol.pvc, namespace)
    assert (pvc.metadata.annotations or {}).get("savepoint.dev/state") == flow.LOCK_STATE
    delete(api, namespace, name)
    crash_harness.start()
    gone(api, namespace, name)
    assert_clean(kube, vol, namespace)
    assert image_names(kube, "images", namespace) == []
