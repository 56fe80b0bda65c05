"""A tenant tries to reach, through Savepoint, what its own RBAC does not give it.

The tenant is a namespace ``edit`` ServiceAccount (Kubernetes' own role, which
Savepoint's ClusterRoles aggregate into) and whatever a pod in its namespace
could do with such a token.  Every attempt must fail with a clear reason, and
nothing outside the tenant's reach may change — checked on Ceph and in the
repository, byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client

from helpers import shares, volumes
from helpers.kube import phase_in, ready_reason, wait_custom, wait_gone
from helpers.movers import OPERATOR_NAMESPACE, live_mover_objects
from helpers.tenant import delete_namespaces, forget, make_namespace, tenant_of
from savepoint.flows import imagesnapshot as isnap_flow
from savepoint.storage import rbd

GROUP, VERSION = "savepoint.dev", "v1alpha1"
MiB = 1 << 20


# ---- the tenant ---------------------------------------------------------------------------------


class Tenant:
    """A namespace ``edit`` ServiceAccount's API access (a kubeconfig with only its token)."""

    def __init__(self, kube: Any, namespace: str) -> None:
        # Every test namespace comes with its edit ServiceAccount and a kubeconfig for it (helpers/tenant.py).
        base = tenant_of(namespace)
        self.namespace = namespace
        self.kubeconfig = base.kubeconfig
        self.core, self.batch, self.custom = base.core, base.batch, base.custom

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any],
               annotations: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name}
        if annotations:
            meta["annotations"] = annotations
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural,
                                                    {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                                                     "metadata": meta, "spec": spec})

    def readable_text(self) -> str:
        """Everything this tenant can read in its namespace that could carry a credential:
        Secrets (decoded), ConfigMaps, and every pod's and Job's environment."""
        parts: list[str] = []
        for secret in self.core.list_namespaced_secret(self.namespace).items:
            for value in (secret.data or {}).values():
                parts.append(base64.b64decode(value).decode(errors="replace"))
        for cm in self.core.list_namespaced_config_map(self.namespace).items:
            parts.extend((cm.data or {}).values())
        pods = [p.spec for p in self.core.list_namespaced_pod(self.namespace).items]
        pods += [j.spec.template.spec for j in self.batch.list_namespaced_job(self.namespace).items]
        for spec in pods:
            for container in spec.containers or []:
                parts.extend(str(e.value) for e in container.env or [] if e.value)
        return "\n".join(parts)

    def may(self, verb: str, resource: str, namespace: str) -> bool:
        review = client.AuthorizationV1Api(self.core.api_client).create_self_subject_access_review({
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource.split("/")[0],
                                            "subresource": resource.split("/")[1] if "/" in resource else None,
                                            "group": GROUP if resource.split("/")[0] in PLURALS else "",
                                            "namespace": namespace}}})
        return bool(review.status.allowed)


PLURALS = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots")


@pytest.fixture
def tenant(kube: Any, tenant: Any) -> Tenant:
    """conftest's tenant of ``namespace``, with this module's probes."""
    return Tenant(kube, tenant.namespace)


def ceph_key() -> str:
    secret = client.CoreV1Api().read_namespaced_secret("csi-rbd-secret", "ceph-csi")
    return base64.b64decode(secret.data["userKey"]).decode()


def event_reasons(namespace: str, name: str) -> set[str]:
    events = client.CoreV1Api().list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return {e.reason for e in events.items}


@pytest.fixture
def rbd_volume(kube: Any) -> Iterator[Any]:
    made: list[volumes.RbdVolume] = []

    def make(namespace: str, name: str = "disk", **kw: Any) -> volumes.RbdVolume:
        made.append(volumes.rbd_pvc(kube, namespace, name, **kw))
        return made[-1]

    yield make
    for vol in made:
        volumes.delete_rbd_volume(kube, vol)


# ---- credentials ------------------------------------------------------------------------------------


class KeyWatch:
    """Looks, as the tenant, for the Ceph key in everything it can read, over and over while
    movers run; remembers whether a mover was running in the operator's namespace meanwhile."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant, self.key = tenant, ceph_key()
        self.leaks: list[str] = []
        self.saw_mover = False
        self.looks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            self._stop.wait(0.2)

    def look(self) -> None:
        if self.key in self.tenant.readable_text():
            self.leaks.append(time.strftime("%H:%M:%S"))
        if [n for n in live_mover_objects(self.tenant.namespace) if n.endswith("-ceph")]:
            self.saw_mover = True
        self.looks += 1

    def __enter__(self) -> "KeyWatch":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.look()


def test_no_ceph_key_in_the_tenants_namespace_while_block_movers_run(kube: Any, operator: Any, namespace: str,
                                                                      tenant: Tenant, rbd_volume: Any) -> None:
    vol = rbd_volume(namespace, data={0: b"tenant data" * 1000, 8 * MiB: b"more" * 1000})
    repo = shares.make_share(kube, namespace, "repo")
    try:
        assert not tenant.may("get", "secrets", OPERATOR_NAMESPACE)
        assert not tenant.may("list", "pods", OPERATOR_NAMESPACE)
        with KeyWatch(tenant) as watch:
            tenant.create("sharebackups", "ShareBackup", "b1", {
                "source": {"persistentVolumeClaim": {"name": vol.pvc}},
                "repository": {"persistentVolumeClaim": {"name": repo.pvc}}})
            wait_custom(tenant.custom, namespace, "sharebackups", "b1", phase_in("Available", "Failed"), timeout=180)
            tenant.create("sharerestores", "ShareRestore", "r1", {
                "backup": {"name": "b1"}, "target": {"newClaim": {"name": "copy", "storageClassName": "csi-rbd-sc"}}})
            restored = wait_custom(tenant.custom, namespace, "sharerestores", "r1", phase_in("Succeeded", "Failed"),
                                   timeout=180)
        assert restored["status"]["phase"] == "Succeeded", restored["status"]
        assert watch.saw_mover, "no Ceph mover ran while the tenant looked"
        assert watch.leaks == [], f"the Ceph key was readable in the tenant's namespace at {watch.leaks}"
        sas = {sa.metadata.name for sa in client.CoreV1Api().list_namespaced_service_account(namespace).items}
        assert "savepoint-mover" not in sas, "no mover identity in a tenant's namespace"
    finally:
        # The CRs before their repository: deleting the backup removes its data from there (with the
        # repository gone first it stays ErrorDeleting, and the namespace's teardown waited out 60 s).
        for plural, name in (("sharerestores", "r1"), ("sharebackups", "b1")):
            with contextlib.suppress(client.ApiException):
                tenant.custom.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, plural, name)
            wait_gone(lambda: tenant.custom.get_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace,
                                                                         plural, name), 60)
        shares.delete(repo)


def test_no_ceph_key_in_the_tenants_namespace_when_the_operator_dies_mid_mover(kube: Any, crash_harness: Any,
                                                                                rbd_volume: Any) -> None:
    ns = crash_harness.namespace
    tenant = Tenant(kube, ns)
    vol = rbd_volume(ns, data={0: b"x" * MiB})
    isnap_flow_name = "copy-me"
    proc = crash_harness.start(crash_at="mover-created")
    tenant.create("imagesnapshots", "ImageSnapshot", isnap_flow_name, {
        "source": {"persistentVolumeClaim": {"name": vol.pvc}}, "method": "Copy"})
    crash_harness.wait_crashed(proc)
    watch = KeyWatch(tenant)
    watch.look()
    assert [n for n in live_mover_objects(ns) if n.endswith("-ceph")], "the crash left the mover's Secret"
    assert watch.leaks == [], "with the operator dead mid-mover, the key is still out of the tenant's reach"
    crash_harness.start()
    done = wait_custom(tenant.custom, ns, "imagesnapshots", isnap_flow_name, phase_in("Succeeded", "Failed"),
                       timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    watch.look()
    assert watch.leaks == [] and not live_mover_objects(ns)


# ---- status and annotations are not the tenant's authority -------------------------------------------


def test_status_is_written_by_the_operator_only(kube: Any, operator: Any, namespace: str, tenant: Tenant) -> None:
    for plural in PLURALS:
        assert tenant.may("create", plural, namespace), f"edit users must be able to create {plural}"
        assert not tenant.may("patch", f"{plural}/status", namespace), f"edit users must not write {plural}/status"
    tenant.create("imagesnapshots", "ImageSnapshot", "i1", {"source": {"persistentVolumeClaim": {"name": "none"}}})
    with pytest.raises(client.ApiException) as refused:
        tenant.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "imagesnapshots", "i1",
                                                            {"status": {"phase": "Succeeded"}})
    assert refused.value.status == 403


def test_a_forged_destination_in_status_does_not_steer_a_delete(kube: Any, operator: Any, namespace: str,
                                                               tenant: Tenant, rbd_volume: Any) -> None:
    """Were status ever forged (a compromised writer), deleting the ImageSnapshot still removes only its
    own image: the destination is derived from the immutable spec and checked against owner metadata."""
    vol = rbd_volume(namespace, data={0: b"source" * 1000})
    victim = rbd.ImageRef("images", f"victim-{uuid.uuid4().hex[:6]}")
    with volumes.cluster(kube) as c:
        rbd.create_image(c, victim, 4 * MiB)
        volumes.write(c, victim, {0: b"another team's golden image" * 100})
        before = volumes.checksum(c, victim)
    try:
        tenant.create("imagesnapshots", "ImageSnapshot", "i1", {"source": {"persistentVolumeClaim": {"name": vol.pvc}}})
        done = wait_custom(tenant.custom, namespace, "imagesnapshots", "i1", phase_in("Succeeded", "Failed"),
                           timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        own = rbd.ImageRef(done["status"]["image"]["pool"], done["status"]["image"]["name"])
        client.CustomObjectsApi().patch_namespaced_custom_object_status(  # as admin: forging is not a tenant's
            GROUP, VERSION, namespace, "imagesnapshots", "i1",
            {"status": {"destinationPool": victim.pool, "temporaryImage": victim.image,
                        "image": {"pool": victim.pool, "name": victim.image}}})
        tenant.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots", "i1")
        wait_gone(lambda: tenant.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "imagesnapshots",
                                                                     "i1"), timeout=120)
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, victim) == before, "the victim image was touched"
            assert not rbd.image_exists(c, own), "its own image goes with it"
    finally:
        with volumes.cluster(kube) as c:
            rbd.remove_image(c, victim, purge_snapshots=True)


def test_an_unmarked_image_of_the_destination_name_is_never_taken(kube: Any, operator: Any, namespace: str,
                                                                  tenant: Tenant, rbd_volume: Any) -> None:
    vol = rbd_volume(namespace, data={0: b"mine" * 1000})
    victim = rbd.ImageRef("images", f"golden-{uuid.uuid4().hex[:6]}")
    with volumes.cluster(kube) as c:
        rbd.create_image(c, victim, 4 * MiB)
        volumes.write(c, victim, {0: b"golden" * 100})
        before = volumes.checksum(c, victim)
    try:
        for method in ("Clone", "Copy"):
            name = f"take-{method.lower()}"
            tenant.create("imagesnapshots", "ImageSnapshot", name, {
                "source": {"persistentVolumeClaim": {"name": vol.pvc}}, "method": method,
                "destination": {"image": victim.image}})
            failed = wait_custom(tenant.custom, namespace, "imagesnapshots", name, phase_in("Succeeded", "Failed"),
                                 timeout=120)
            assert failed["status"]["phase"] == "Failed" and ready_reason(failed) == "DestinationExists", failed
            assert "ImageSnapshotFailed" in event_reasons(namespace, name)
        with volumes.cluster(kube) as c:
            assert volumes.checksum(c, victim) == before
            with rbd.open_ref(c, victim, read_only=True) as image:
                assert isnap_flow._owner_of(image) is None, "no ImageSnapshot marked it as its own"
    finally:
        with volumes.cluster(kube) as c:
            rbd.remove_image(c, victim, purge_snapshots=True)


def test_destination_pools_are_the_image_pools(kube: Any, operator: Any, namespace: str, tenant: Tenant,
                                               rbd_volume: Any) -> None:
    vol = rbd_volume(namespace)
    tenant.create("imagesnapshots", "ImageSnapshot", "into-rbd", {
        "source": {"persistentVolumeClaim": {"name": vol.pvc}}, "destination": {"pool": "rbd"}})
    failed = wait_custom(tenant.custom, namespace, "imagesnapshots", "into-rbd", phase_in("Succeeded", "Failed"))
    assert ready_reason(failed) == "ReferenceNotAllowed" and "pool rbd" in failed["status"]["message"]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_annotations_do_not_choose_the_repository(kube: Any, operator: Any, namespace: str, tenant: Tenant) -> None:
    data, repo = shares.make_share(kube, namespace, "data"), shares.make_share(kube, namespace, "repo")
    victim_dir, victim_path = shares.nfs_dir(kube, f"victim-{uuid.uuid4().hex[:6]}", "repo")
    (victim_dir / "precious").write_bytes(b"another team's backups")
    before = tree_digest(victim_dir)
    (data.dir / "file").write_bytes(b"hello")
    try:
        steer = {"savepoint.dev/repository": json.dumps({"nfs": {"server": "127.0.0.1", "path": victim_path}}),
                 "savepoint.dev/rbd-image": json.dumps({"clusterID": "x", "pool": "rbd", "image": "victim"})}
        tenant.create("sharebackups", "ShareBackup", "b1", {
            "source": {"persistentVolumeClaim": {"name": data.pvc}},
            "repository": {"persistentVolumeClaim": {"name": repo.pvc}}}, annotations=steer)
        done = wait_custom(tenant.custom, namespace, "sharebackups", "b1", phase_in("Available", "Failed"),
                           timeout=180)
        assert done["status"]["phase"] == "Available", done["status"]
        assert done["status"]["repository"] == {"persistentVolumeClaim": {"name": repo.pvc}}
        assert (repo.dir / done["status"]["repositoryPath"] / "backup.json").exists()
        tenant.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "sharebackups", "b1")
        wait_gone(lambda: tenant.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "sharebackups",
                                                                     "b1"), timeout=120)
        assert tree_digest(victim_dir) == before, "the annotation's repository was touched"
    finally:
        for share in (data, repo):
            shares.delete(share)


# ---- a shared repository: one namespace's backups are out of another's reach -------------------------


def shared_repository_claim(kube: Any, namespace: str, repo_dir: Path, repo_path: str) -> str:
    """An admin's claim for ``namespace`` on the one shared repository export."""
    pv = f"{namespace}-shared-repo"
    core = client.CoreV1Api()
    core.create_persistent_volume(shares.static_pv(pv, repo_path, "1Gi", claim=(namespace, "shared")))
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}})
    shares.wait_bound(namespace, "shared")
    return pv


@pytest.fixture
def second_namespace(kube: Any, operator: Any) -> Iterator[str]:
    """Another tenant's namespace, served by the same operator."""
    name = operator.env["SAVEPOINT_WATCH_NAMESPACES"].rstrip("*") + uuid.uuid4().hex[:6]
    make_namespace(kube, name)  # with its own edit tenant
    yield name
    forget(name)
    delete_namespaces([name])


def test_a_second_namespace_cannot_reach_the_firsts_backups(kube: Any, operator: Any, namespace: str,
                                                            second_namespace: str, tenant: Tenant) -> None:
    other = Tenant(kube, second_namespace)
    repo_dir, repo_path = shares.nfs_dir(kube, f"shared-{uuid.uuid4().hex[:6]}", "repo")
    pvs = [shared_repository_claim(kube, ns, repo_dir, repo_path) for ns in (namespace, second_namespace)]
    data = shares.make_share(kube, namespace, "data")
    (data.dir / "secret.txt").write_bytes(b"team A's data")
    try:
        tenant.create("sharebackups", "ShareBackup", "b1", {
            "source": {"persistentVolumeClaim": {"name": data.pvc}},
            "repository": {"persistentVolumeClaim": {"name": "shared"}}})
        done = wait_custom(tenant.custom, namespace, "sharebackups", "b1", phase_in("Available", "Failed"),
                           timeout=180)
        assert done["status"]["phase"] == "Available", done["status"]
        path = done["status"]["repositoryPath"]
        assert path.startswith(f"{namespace}/")
        before = tree_digest(repo_dir / namespace)

        # 1. Restore it by name from the other namespace: there is no such backup there.
        other.create("sharerestores", "ShareRestore", "steal", {
            "backup": {"name": "b1"}, "target": {"newClaim": {"name": "loot"}}})
        failed = wait_custom(other.custom, second_namespace, "sharerestores", "steal", phase_in("Failed", "Succeeded"))
        assert ready_reason(failed) == "BackupNotFound", failed["status"]

        # 2. "Import" it into the other namespace with a crafted listing entry, then delete that.
        entry = {"path": path, "uid": done["metadata"]["uid"], "name": "b1", "format": "files",
                 "pvc": "data", "sizeBytes": 1 << 30}
        other.create("sharebackups", "ShareBackup", "imported", {
            "source": {"persistentVolumeClaim": {"name": "data"}},
            "repository": {"persistentVolumeClaim": {"name": "shared"}}},
            annotations={"savepoint.dev/imported": json.dumps(entry), "savepoint.dev/backup-uid": entry["uid"]})
        refused = wait_custom(other.custom, second_namespace, "sharebackups", "imported", phase_in("Failed", "Available"))
        assert ready_reason(refused) == "ReferenceNotAllowed", refused["status"]
        assert f"belongs to namespace {namespace}" in refused["status"]["message"]

        # 3. The same with the path disguised as its own: the mover sees only its own namespace's part.
        entry["path"] = f"{second_namespace}/{path.split('/', 1)[1]}"
        other.create("sharebackups", "ShareBackup", "disguised", {
            "source": {"persistentVolumeClaim": {"name": "data"}},
            "repository": {"persistentVolumeClaim": {"name": "shared"}}},
            annotations={"savepoint.dev/imported": json.dumps(entry), "savepoint.dev/backup-uid": entry["uid"]})
        wait_custom(other.custom, second_namespace, "sharebackups", "disguised", phase_in("Failed", "Available"))
        loot = shares.make_share(kube, second_namespace, "loot2")  # a claim of its own to restore into
        other.create("sharerestores", "ShareRestore", "steal2", {
            "backup": {"name": "disguised"}, "target": {"persistentVolumeClaim": {"name": loot.pvc}}})
        failed = wait_custom(other.custom, second_namespace, "sharerestores", "steal2", phase_in("Failed", "Succeeded"),
                             timeout=180)
        assert failed["status"]["phase"] == "Failed", failed["status"]
        for name in ("imported", "disguised"):
            other.custom.delete_namespaced_custom_object(GROUP, VERSION, second_namespace, "sharebackups", name)
            wait_gone(lambda: other.custom.get_namespaced_custom_object(GROUP, VERSION, second_namespace,
                                                                        "sharebackups", name), timeout=120)
        assert tree_digest(repo_dir / namespace) == before, "team A's backup changed"
        assert not [p for p in loot.dir.rglob("*") if p.name == "secret.txt"], "team A's data reached team B"
        shares.delete(loot)
        assert not (repo_dir / second_namespace / path.split("/", 1)[1]).exists()
    finally:
        shares.delete(data)
        for pv in pvs:
            try:
                client.CoreV1Api().delete_persistent_volume(pv)
            except client.ApiException:
                pass


# ---- mover slots ----------------------------------------------------------------------------------


def test_jobs_posing_as_movers_take_no_slot(kube: Any, operator: Any, namespace: str, tenant: Tenant,
                                            rbd_volume: Any) -> None:
    for i in range(5):
        tenant.batch.create_namespaced_job(namespace, {
            "metadata": {"name": f"poser-{i}", "labels": {"savepoint.dev/mover": "true",
                                                           "savepoint.dev/owner-namespace": "elsewhere"}},
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}}}})
    vol = rbd_volume(namespace, data={0: b"v1" * 1000})
    snap = volumes.csi_snapshot(kube, vol, "snap")
    try:
        tenant.create("volumereverts", "VolumeRevert", "rev", {
            "volume": {"persistentVolumeClaim": {"name": vol.pvc}},
            "snapshot": {"volumeSnapshot": {"name": snap.name}}, "deadlineSeconds": 150})
        done = wait_custom(tenant.custom, namespace, "volumereverts", "rev", phase_in("Succeeded", "Failed"),
                           timeout=180)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["method"] == "Copy"
    finally:
        volumes.delete_csi_snapshot(kube, snap)
