"""ShareBackup / ShareRestore of file shares end to end (seed 003): real API server, the operator with the
chart's ServiceAccount, mover Jobs run by the pod runner with rsync on real directories, NFS shares served
by nfs-ganesha and read back over NFS."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.movers import free_mover_slot, live_mover_objects, occupy_mover_slot
from helpers import shares, trees
from helpers.kube import phase_in, reason_is, wait_custom, wait_gone
from helpers.tenant import tenant_of
from kubernetes import client
from savepoint.storage import files, repository

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
G, V = "savepoint.dev", "v1alpha1"


# ---- fixtures and helpers ---------------------------------------------------------------------------


class Env:
    """One test's shares: the share to back up (``data``), the repository (``repo``), cleaned up after."""

    def __init__(self, kube: Any, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.made: list[shares.Share] = []

    def share(self, name: str, size: str = "1Gi") -> shares.Share:
        s = shares.make_share(self.kube, self.namespace, name, size, claims=tenant_of(self.namespace).core)
        self.made.append(s)
        return s

    def offer(self, name: str, storage_class: str, size: str = "1Gi") -> shares.Share:
        s = shares.offer_volume(self.kube, self.namespace, name, storage_class, size)
        self.made.append(s)
        return s

    def repo_dir(self, repo: shares.Share) -> Path:
        return repo.dir

    def cleanup(self) -> None:
        """Delete the test's ShareBackups and ShareRestores while their repository is still there (the
        finalizers' mover Jobs mount it), then the shares."""
        api = client.CustomObjectsApi()
        for plural in ("sharerestores", "sharebackups"):
            api.delete_collection_namespaced_custom_object(G, V, self.namespace, plural)
        for plural in ("sharerestores", "sharebackups"):
            for obj in api.list_namespaced_custom_object(G, V, self.namespace, plural)["items"]:
                try:
                    wait_gone(lambda o=obj, p=plural: api.get_namespaced_custom_object(
                        G, V, self.namespace, p, o["metadata"]["name"]), timeout=120)
                except AssertionError:
                    pass  # the namespace's teardown reports it
        for s in self.made:
            shares.delete(s)


@pytest.fixture
def env(kube: Any, namespace: str) -> Iterator[Env]:
    e = Env(kube, namespace)
    yield e
    e.cleanup()


def create_backup(api: client.CustomObjectsApi, namespace: str, name: str, *, pvc: str = "data",
                  repo: str | None = "repo", **spec: Any) -> None:
    body: dict[str, Any] = {"apiVersion": f"{G}/{V}", "kind": "ShareBackup", "metadata": {"name": name},
                            "spec": {"source": {"persistentVolumeClaim": {"name": pvc}}, **spec}}
    if repo:
        body["spec"]["repository"] = {"persistentVolumeClaim": {"name": repo}}
    api.create_namespaced_custom_object(G, V, namespace, "sharebackups", body)


def create_restore(api: client.CustomObjectsApi, namespace: str, name: str, backup: str, **spec: Any) -> None:
    body = {"apiVersion": f"{G}/{V}", "kind": "ShareRestore", "metadata": {"name": name},
            "spec": {"backup": {"name": backup}, **spec}}
    api.create_namespaced_custom_object(G, V, namespace, "sharerestores", body)


def backed_up(api: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_custom(api, namespace, "sharebackups", name, phase_in("Available", "Failed"), timeout)


def restored(api: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_custom(api, namespace, "sharerestores", name, phase_in("Succeeded", "Failed"), timeout)


def ready_reason(obj: dict[str, Any]) -> str | None:
    return next((c["reason"] for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), None)


def pvc_annotations(namespace: str, name: str) -> dict[str, str]:
    return client.CoreV1Api().read_namespaced_persistent_volume_claim(name, namespace).metadata.annotations or {}


def savepoint_annotations(namespace: str, name: str) -> dict[str, str]:
    return {k: v for k, v in pvc_annotations(namespace, name).items() if k.startswith("savepoint.dev/")}


def event_reasons(namespace: str, kind: str, name: str) -> set[str]:
    events = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    return {e.reason for e in events.items}


def live_jobs(namespace: str) -> list[str]:
    return live_mover_objects(namespace)


def backup_dir(repo: shares.Share, obj: dict[str, Any]) -> Path:
    return repo.dir / obj["status"]["repositoryPath"]


def kubectl_savepoint(kube: Any, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The plugin, run by the namespace's tenant."""
    return subprocess.run([str(kube.venv / "bin" / "kubectl-savepoint"), "--kubeconfig",
                           str(tenant_of(namespace).kubeconfig), "-n", namespace, *args],
                          capture_output=True, text=True, timeout=600, check=False)


def corrupt(path: Path) -> None:
    """Bit rot in the repository: same size and time, other content."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- the seed's scenario -----------------------------------------------------------------------------


def test_backup_then_restore_in_place_gives_back_every_byte_and_every_attribute(
        kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    before = trees.snapshot(data.dir)
    create_backup(api, namespace, "monday", verify=True)
    obj = backed_up(api, namespace, "monday")
    st = obj["status"]
    assert st["phase"] == "Available", st
    assert st["format"] == "Tree" and st["size"] == "1Gi" and st["fileCount"] > 10
    assert st["sourceUID"] == client.CoreV1Api().read_namespaced_persistent_volume_claim("data", namespace).metadata.uid
    assert st["repositoryPath"] == f"{namespace}/{st['sourceUID']}/monday"
    assert st["manifestDigest"].startswith("sha256:") and st["bytesStored"] > 64 * trees.MiB
    assert st["progress"]["percent"] == 100 and "parentBackup" not in st
    assert trees.diff(before, trees.snapshot(backup_dir(repo, obj) / "data")) == []
    manifest = repository.read_manifest(backup_dir(repo, obj))
    assert manifest.checksums is not None and manifest.source.pvc_name == "data"
    assert {"BackupStarted", "BackupSucceeded"} <= event_reasons(namespace, "ShareBackup", "monday")
    assert {"BackupStarted", "BackupSucceeded"} <= event_reasons(namespace, "PersistentVolumeClaim", "data")
    assert savepoint_annotations(namespace, "data") == {}, "the share kept a lock or a state"
    assert live_jobs(namespace) == []

    trees.change_tree(data.dir)
    create_restore(api, namespace, "back-to-monday", "monday")
    out = restored(api, namespace, "back-to-monday")
    assert out["status"]["phase"] == "Succeeded", out["status"]
    assert out["status"]["targetClaim"] == "data"
    assert trees.diff(before, trees.snapshot(data.dir)) == []
    assert trees.allocated(data.dir / "sparse.img") < trees.MiB
    # read back over NFS, as a client of the share sees it
    assert shares.nfs_cat(data, "docs/a.txt") == (data.dir / "docs" / "a.txt").read_bytes()
    assert shares.nfs_cat(data, "private/key") == b"only for uid 2000\n"
    assert "name with spaces ünïcødé.txt" in shares.nfs_ls(data)
    assert "new-file.txt" not in shares.nfs_ls(data)
    assert {"RestoreStarted", "RestoreSucceeded"} <= event_reasons(namespace, "ShareRestore", "back-to-monday")
    assert {"RestoreStarted", "RestoreSucceeded"} <= event_reasons(namespace, "PersistentVolumeClaim", "data")
    backup_obj = api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")
    assert backup_obj["status"]["phase"] == "Available"
    assert not {k for k in backup_obj["metadata"].get("annotations", {}) if k.startswith("savepoint.dev/lock")}
    assert savepoint_annotations(namespace, "data") == {} and live_jobs(namespace) == []


def test_incremental_stores_nothing_new_and_survives_deleting_its_parent(
        kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "monday")
    first = backed_up(api, namespace, "monday")
    create_backup(api, namespace, "tuesday")
    second = backed_up(api, namespace, "tuesday")
    assert second["status"]["phase"] == "Available", second["status"]
    assert second["status"]["parentBackup"] == "monday" and second["status"]["bytesStored"] == 0
    links = files.link_stats(backup_dir(repo, second) / "data", backup_dir(repo, first) / "data")
    assert links.new_inodes == 0 and links.linked == links.inodes > 5, links
    # deleting the first backup removes its directory; the second still restores fully
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday"), timeout=120)
    assert not backup_dir(repo, first).exists()
    assert "BackupDeleted" in event_reasons(namespace, "ShareBackup", "monday")
    # into a new claim: bound to a static NFS volume offered under a storage class (no provisioner here)
    env.offer("restored-volume", f"static-{namespace}", "2Gi")
    create_restore(api, namespace, "copy", "tuesday",
                   target={"newClaim": {"name": "restored", "storageClassName": f"static-{namespace}", "size": "2Gi"}})
    out = restored(api, namespace, "copy")
    assert out["status"]["phase"] == "Succeeded", out["status"]
    assert out["status"]["targetClaim"] == "restored" and out["status"]["createdClaim"] is True
    target = env.made[-1]
    assert trees.diff(trees.snapshot(data.dir), trees.snapshot(target.dir)) == []
    pvc = client.CoreV1Api().read_namespaced_persistent_volume_claim("restored", namespace)
    assert not pvc.metadata.owner_references, "the claim must outlive the ShareRestore"
    assert shares.nfs_cat(target, "docs/a.txt") == (data.dir / "docs" / "a.txt").read_bytes()


def test_verify_catches_a_corrupted_file_in_the_repository(kube: Any, operator: Any, namespace: str, api: Any,
                                                           env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "monday", verify=True)
    first = backed_up(api, namespace, "monday")
    corrupt(backup_dir(repo, first) / "data" / "docs" / "a.txt")
    create_backup(api, namespace, "tuesday", verify=True)
    second = backed_up(api, namespace, "tuesday")
    assert second["status"]["phase"] == "Failed"
    assert ready_reason(second) == "VerificationFailed"
    assert "docs/a.txt" in second["status"]["message"]
    assert not (repo.dir / namespace / first["status"]["sourceUID"] / "tuesday").exists(), "partial backup left"
    assert savepoint_annotations(namespace, "data") == {} and live_jobs(namespace) == []
    assert "BackupFailed" in event_reasons(namespace, "ShareBackup", "tuesday")


# ---- refusals ----------------------------------------------------------------------------------------


def test_restore_refusals(kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    env.share("small", "512Mi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "monday")
    obj = backed_up(api, namespace, "monday")
    assert obj["status"]["phase"] == "Available", obj["status"]
    # a claim smaller than the backup
    create_restore(api, namespace, "too-small", "monday", target={"persistentVolumeClaim": {"name": "small"}})
    assert ready_reason(restored(api, namespace, "too-small")) == "TargetTooSmall"
    # the source was resized since the backup: in place needs the same size (the seed's 400)
    client.CoreV1Api().patch_persistent_volume(data.pv, {"spec": {"capacity": {"storage": "2Gi"}}})
    create_restore(api, namespace, "resized", "monday")
    out = restored(api, namespace, "resized")
    assert ready_reason(out) == "SizeMismatch" and "2147483648" in out["status"]["message"]
    client.CoreV1Api().patch_persistent_volume(data.pv, {"spec": {"capacity": {"storage": "1Gi"}}})
    # over the repository itself
    create_restore(api, namespace, "over-repo", "monday", target={"persistentVolumeClaim": {"name": "repo"}})
    out = restored(api, namespace, "over-repo")
    assert ready_reason(out) == "InvalidSpec" and "repository" in out["status"]["message"]
    # no such backup; a backup that failed
    create_restore(api, namespace, "nothing", "no-such-backup")
    assert ready_reason(restored(api, namespace, "nothing")) == "BackupNotFound"
    create_backup(api, namespace, "broken", pvc="no-such-claim")
    assert ready_reason(backed_up(api, namespace, "broken")) == "PvcNotFound"
    create_restore(api, namespace, "from-broken", "broken")
    assert ready_reason(restored(api, namespace, "from-broken")) == "BackupNotAvailable"
    # the backup's data is gone from the repository: fails, never succeeds, writes nothing
    subprocess.run(["rm", "-rf", str(backup_dir(repo, obj))], check=True)
    (data.dir / "written-after").write_text("must survive a failed restore\n")
    create_restore(api, namespace, "data-gone", "monday")
    out = restored(api, namespace, "data-gone")
    assert out["status"]["phase"] == "Failed" and ready_reason(out) == "BackupDataMissing", out["status"]
    assert "nothing was written" in out["status"]["message"]
    assert (data.dir / "written-after").exists()
    assert savepoint_annotations(namespace, "data") == {}, "nothing was written: no error state"
    assert api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")["status"]["phase"] == "Available"


def test_a_failed_restore_leaves_an_error_state_until_it_is_reset(kube: Any, operator: Any, namespace: str,
                                                                  api: Any, env: Env) -> None:
    data, _ = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "monday")
    assert backed_up(api, namespace, "monday")["status"]["phase"] == "Available"
    trees.change_tree(data.dir)
    pinned = data.dir / "new-file.txt"  # not in the backup: deleteExtraFiles must remove it, and cannot
    subprocess.run(["chattr", "+i", str(pinned)], check=True)
    try:
        create_restore(api, namespace, "half", "monday")
        out = restored(api, namespace, "half")
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    assert out["status"]["phase"] == "Failed" and ready_reason(out) == "MoverFailed", out["status"]
    assert "backup-restoring-error" in out["status"]["message"] and "reset-state pvc/data" in out["status"]["message"]
    assert savepoint_annotations(namespace, "data") == {"savepoint.dev/state": "backup-restoring-error"}
    assert "RestoreFailed" in event_reasons(namespace, "PersistentVolumeClaim", "data")
    assert api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")["status"]["phase"] == "Available"
    # every other action waits for the reset...
    create_restore(api, namespace, "again", "monday")
    wait_custom(api, namespace, "sharerestores", "again", reason_is("VolumeInErrorState"), 60)
    reset = kubectl_savepoint(kube, namespace, "reset-state", "pvc/data")
    assert reset.returncode == 0 and "backup-restoring-error" in reset.stdout, reset.stdout + reset.stderr
    # ...and goes on by itself after it
    assert restored(api, namespace, "again")["status"]["phase"] == "Succeeded"
    assert not (data.dir / "new-file.txt").exists() and savepoint_annotations(namespace, "data") == {}


def test_backup_refusals_busy_error_state_raw_reference(kube: Any, operator: Any, namespace: str, api: Any,
                                                        env: Env) -> None:
    env.share("data"), env.share("repo", "4Gi")
    create_backup(api, namespace, "monday")
    monday = backed_up(api, namespace, "monday")
    # busy: another live Savepoint action holds the share's lock -> waits (VolumeBusy), fails at the deadline
    tenant_of(namespace).core.patch_namespaced_persistent_volume_claim("data", namespace, {"metadata": {"annotations": {
        "savepoint.dev/lock": "ShareBackup/monday", "savepoint.dev/lock-uid": monday["metadata"]["uid"],
        "savepoint.dev/state": "backup-creating"}}})
    create_backup(api, namespace, "busy", deadlineSeconds=8)
    wait_custom(api, namespace, "sharebackups", "busy", reason_is("VolumeBusy"), 60)
    out = backed_up(api, namespace, "busy", timeout=90)
    assert out["status"]["phase"] == "Failed" and ready_reason(out) == "VolumeBusy", out["status"]
    # an error state left by a failed restore: waits for the reset, then goes on by itself
    tenant_of(namespace).core.patch_namespaced_persistent_volume_claim("data", namespace, {"metadata": {"annotations": {
        "savepoint.dev/lock": None, "savepoint.dev/lock-uid": None, "savepoint.dev/state": "backup-restoring-error"}}})
    create_backup(api, namespace, "after-reset")
    waiting = wait_custom(api, namespace, "sharebackups", "after-reset", reason_is("VolumeInErrorState"), 60)
    assert "reset-state pvc/data" in waiting["status"]["message"]
    reset = kubectl_savepoint(kube, namespace, "reset-state", "pvc/data")
    assert reset.returncode == 0, reset.stderr
    assert backed_up(api, namespace, "after-reset", timeout=240)["status"]["phase"] == "Available"
    # raw NFS references only where the operator allows them
    api.create_namespaced_custom_object(G, V, namespace, "sharebackups", {
        "apiVersion": f"{G}/{V}", "kind": "ShareBackup", "metadata": {"name": "raw"},
        "spec": {"source": {"nfs": {"server": "127.0.0.1", "path": "/somewhere"}},
                 "repository": {"persistentVolumeClaim": {"name": "repo"}}}})
    assert ready_reason(backed_up(api, namespace, "raw")) == "ReferenceNotAllowed"
    # the repository inside the share
    create_backup(api, namespace, "into-itself", repo="data")
    assert ready_reason(backed_up(api, namespace, "into-itself")) == "InvalidSpec"


def test_quotas_count_and_gigabytes(kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    env.share("data"), env.share("repo", "4Gi")
    core = client.CoreV1Api()
    # gigabytes: enforced by the operator from the namespace annotation
    core.patch_namespace(namespace, {"metadata": {"annotations": {"savepoint.dev/backup-gigabytes": "1.5"}}})
    create_backup(api, namespace, "first")
    assert backed_up(api, namespace, "first")["status"]["phase"] == "Available"
    create_backup(api, namespace, "second")
    out = backed_up(api, namespace, "second")
    assert out["status"]["phase"] == "Failed" and ready_reason(out) == "QuotaExceeded"
    assert "needs 1 GiB" in out["status"]["message"] and "use 1 GiB of its 1.5 GiB" in out["status"]["message"]
    # count: a plain ResourceQuota, enforced by the API server
    core.patch_namespace(namespace, {"metadata": {"annotations": {"savepoint.dev/backup-gigabytes": None}}})
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "backups"},
                                                      "spec": {"hard": {"count/sharebackups.savepoint.dev": "2"}}})
    quota = wait_quota(namespace, "backups")
    assert quota["count/sharebackups.savepoint.dev"] == "2", quota
    with pytest.raises(client.ApiException) as refused:
        create_backup(api, namespace, "third")
    assert refused.value.status == 403 and "exceeded quota" in refused.value.body


def wait_quota(namespace: str, name: str, timeout: int = 60) -> dict[str, str]:
    """The ResourceQuota once the quota controller has counted usage (admission needs that)."""
    from kubernetes import watch

    core = client.CoreV1Api()
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_resource_quota, namespace, field_selector=f"metadata.name={name}",
                          timeout_seconds=timeout):
        status = event["object"].status
        if status and status.used is not None and "count/sharebackups.savepoint.dev" in (status.used or {}):
            w.stop()
            return dict(status.used)
    raise AssertionError(f"ResourceQuota {name} never counted ShareBackups")


# ---- re-import after losing every object --------------------------------------------------------------


def test_reimport_after_all_sharebackups_are_lost(kube: Any, operator: Any, namespace: str, api: Any,
                                                   env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    expected = trees.snapshot(data.dir)
    create_backup(api, namespace, "monday")
    assert backed_up(api, namespace, "monday")["status"]["phase"] == "Available"
    (data.dir / "tuesday.txt").write_text("added on tuesday\n")
    create_backup(api, namespace, "tuesday")
    tuesday = backed_up(api, namespace, "tuesday")
    # etcd lost: the objects vanish without their finalizers running (the data stays). The operator is down
    # meanwhile, or it would put its finalizer back before the deletion arrives.
    operator.kill()
    try:
        for name in ("monday", "tuesday"):
            api.patch_namespaced_custom_object(G, V, namespace, "sharebackups", name,
                                               {"metadata": {"finalizers": None}},
                                               _content_type="application/merge-patch+json")
            api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", name)
            wait_gone(lambda n=name: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", n))
    finally:
        operator.start()
    assert repository.is_complete(backup_dir(repo, tuesday))
    listed = kubectl_savepoint(kube, namespace, "backups", "list", "--repository", "pvc/repo", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == ["monday", "tuesday"]
    out = kubectl_savepoint(kube, namespace, "backups", "import", "--repository", "pvc/repo")
    assert out.returncode == 0, out.stderr
    assert "2 imported" in out.stdout, out.stdout
    for name in ("monday", "tuesday"):
        obj = wait_custom(api, namespace, "sharebackups", name, phase_in("Available", "Failed"), 60)
        assert obj["status"]["phase"] == "Available", obj["status"]
    imported = api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "tuesday")["status"]
    assert imported["parentBackup"] == "monday" and imported["repositoryPath"] == tuesday["status"]["repositoryPath"]
    assert imported["manifestDigest"] == tuesday["status"]["manifestDigest"] and imported["size"] == "1Gi"
    again = kubectl_savepoint(kube, namespace, "backups", "import", "--repository", "pvc/repo")
    assert "0 imported, 2 skipped" in again.stdout, again.stdout
    # an imported backup restores like any other
    trees.empty(data.dir)
    create_restore(api, namespace, "after-disaster", "monday")
    done = restored(api, namespace, "after-disaster")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert trees.diff(expected, trees.snapshot(data.dir)) == []
    # and deleting it removes its data
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "tuesday")
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "tuesday"), timeout=120)
    assert not backup_dir(repo, tuesday).exists()


def test_plugin_backs_up_lists_and_restores(kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, _ = env.share("data"), env.share("repo", "4Gi")
    (data.dir / "hello.txt").write_text("hello\n")
    out = kubectl_savepoint(kube, namespace, "backup", "data", "--repository", "pvc/repo", "--name", "b1", "--wait",
                            "--timeout", "180")
    assert out.returncode == 0, out.stdout + out.stderr
    listed = kubectl_savepoint(kube, namespace, "backups", "list")
    assert "b1" in listed.stdout and "Available" in listed.stdout, listed.stdout
    (data.dir / "hello.txt").write_text("changed\n")
    out = kubectl_savepoint(kube, namespace, "restore", "b1", "--wait", "--timeout", "180")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (data.dir / "hello.txt").read_text() == "hello\n"


# ---- deletion -----------------------------------------------------------------------------------------


def test_a_backup_being_read_is_deleted_after_the_restore_and_retain_keeps_data(
        kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "read")
    read = backed_up(api, namespace, "read")
    trees.change_tree(data.dir)
    create_restore(api, namespace, "reading", "read")
    wait_custom(api, namespace, "sharebackups", "read", phase_in("Restoring"), 120)
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "read")  # while the restore reads it
    out = restored(api, namespace, "reading")
    assert out["status"]["phase"] == "Succeeded", out["status"]
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "read"), timeout=120)
    assert not backup_dir(repo, read).exists()
    create_backup(api, namespace, "keep")
    kept = backed_up(api, namespace, "keep")
    api.patch_namespaced_custom_object(G, V, namespace, "sharebackups", "keep", {"metadata": {"annotations": {
        "savepoint.dev/deletion-policy": "Retain"}}})
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "keep")
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "keep"), timeout=60)
    assert repository.is_complete(backup_dir(repo, kept)), "Retain must keep the data"


def test_a_failed_deletion_keeps_the_object_in_error_deleting_until_the_data_can_go(
        kube: Any, operator: Any, namespace: str, api: Any, env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "stuck")
    obj = backed_up(api, namespace, "stuck")
    pinned = backup_dir(repo, obj) / "data" / "big.bin"
    subprocess.run(["chattr", "+i", str(pinned)], check=True)  # even root cannot remove it now
    try:
        api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "stuck")
        stuck = wait_custom(api, namespace, "sharebackups", "stuck", phase_in("ErrorDeleting"), 120)
        assert ready_reason(stuck) == "DeletionFailed" and "big.bin" in stuck["status"]["message"], stuck["status"]
        assert not repository.is_complete(backup_dir(repo, obj)), "a half-deleted backup must not be listed"
        assert "BackupDeleteFailed" in event_reasons(namespace, "ShareBackup", "stuck")
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "stuck"), timeout=120)
    assert not backup_dir(repo, obj).exists()


# ---- killed and restarted ---------------------------------------------------------------------------


# "mover-created": right after the copy's Job was created, i.e. killed while the copy runs.
BACKUP_POINTS = ["sbak:validated", "sbak:locked", "mover-created", "sbak:copied"]
RESTORE_POINTS = ["srst:validated", "srst:locked", "mover-created", "srst:restored"]


@pytest.fixture
def crash_env(kube: Any, crash_harness: Any) -> Iterator[Env]:
    e = Env(kube, crash_harness.namespace)
    yield e
    e.cleanup()


def assert_clean(namespace: str, repo: shares.Share) -> None:
    assert savepoint_annotations(namespace, "data") == {}, "a lock or state was left on the share"
    assert live_jobs(namespace) == [], "a mover Job was left behind"
    listing = repository.list_backups(repo.dir, namespace)
    assert listing.incomplete == [], f"half-written backups left: {listing.incomplete}"


@pytest.mark.parametrize("point", BACKUP_POINTS)
def test_killed_while_backing_up_finishes_after_restart(kube: Any, crash_harness: Any, crash_env: Env,
                                                       point: str) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, repo = crash_env.share("data"), crash_env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    crashing = crash_harness.start(crash_at=point)
    create_backup(api, namespace, "monday", verify=True)
    crash_harness.wait_crashed(crashing)
    crash_harness.start()
    obj = backed_up(api, namespace, "monday", timeout=240)
    assert obj["status"]["phase"] == "Available", obj["status"]
    assert trees.diff(trees.snapshot(data.dir), trees.snapshot(backup_dir(repo, obj) / "data")) == []
    assert_clean(namespace, repo)


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_killed_while_restoring_finishes_after_restart(kube: Any, crash_harness: Any, crash_env: Env,
                                                      point: str) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, repo = crash_env.share("data"), crash_env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    expected = trees.snapshot(data.dir)
    crash_harness.start()
    create_backup(api, namespace, "monday")
    assert backed_up(api, namespace, "monday")["status"]["phase"] == "Available"
    crash_harness.stop()
    trees.change_tree(data.dir)
    crashing = crash_harness.start(crash_at=point)
    create_restore(api, namespace, "back", "monday")
    crash_harness.wait_crashed(crashing)
    crash_harness.start()
    out = restored(api, namespace, "back", timeout=240)
    assert out["status"]["phase"] == "Succeeded", out["status"]
    assert trees.diff(expected, trees.snapshot(data.dir)) == []
    assert_clean(namespace, repo)
    assert api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")["status"]["phase"] == "Available"


def test_killed_while_deleting_finishes_after_restart(kube: Any, crash_harness: Any, crash_env: Env) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, repo = crash_env.share("data"), crash_env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    crash_harness.start()
    create_backup(api, namespace, "monday")
    obj = backed_up(api, namespace, "monday")
    crash_harness.stop()
    crashing = crash_harness.start(crash_at="mover-created")  # the delete Job runs
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")
    crash_harness.wait_crashed(crashing)
    crash_harness.start()
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday"), timeout=180)
    assert not backup_dir(repo, obj).exists()
    assert_clean(namespace, repo)


def test_deleted_while_the_copy_runs_leaves_nothing(kube: Any, operator: Any, namespace: str, api: Any,
                                                    env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    for i in range(200):
        (data.dir / f"bulk-{i:03d}.bin").write_bytes(os.urandom(256 * 1024))
    create_backup(api, namespace, "monday", verify=True)
    wait_custom(api, namespace, "sharebackups", "monday", lambda o: bool((o.get("status") or {}).get("moverJob")), 120)
    api.delete_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday"), timeout=180)
    uid = client.CoreV1Api().read_namespaced_persistent_volume_claim("data", namespace).metadata.uid
    assert not (repo.dir / namespace / uid / "monday").exists()
    assert_clean(namespace, repo)


def test_operator_killed_during_a_copy_adopts_it(kube: Any, operator: Any, namespace: str, api: Any,
                                                 env: Env) -> None:
    data, repo = env.share("data"), env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    create_backup(api, namespace, "monday")
    wait_custom(api, namespace, "sharebackups", "monday", lambda o: bool((o.get("status") or {}).get("moverJob")), 120)
    operator.kill()
    operator.start()
    obj = backed_up(api, namespace, "monday", timeout=240)
    assert obj["status"]["phase"] == "Available", obj["status"]
    assert trees.diff(trees.snapshot(data.dir), trees.snapshot(backup_dir(repo, obj) / "data")) == []
    assert_clean(namespace, repo)



# ---- after the lock: every ending goes through the undo -------------------------------------------------


def test_a_deadline_passing_in_the_mover_queue_ends_through_the_undo(kube: Any, crash_harness: Any,
                                                                     crash_env: Env) -> None:
    """Locked, its copy queued for a mover slot, the deadline passes: Aborting, then Failed DeadlineExceeded
    with "nothing was written", the claim released at once (no partial backup to remove: the mover never
    started -- before the step runner the undo queued a removal Job behind the same full slots)."""
    namespace, api = crash_harness.namespace, crash_harness.api
    data, repo = crash_env.share("data"), crash_env.share("repo", "4Gi")
    (data.dir / "hello.txt").write_text("hello\n")
    occupant = occupy_mover_slot(f"occupant-{namespace}")
    try:
        crash_harness.start(SAVEPOINT_MOVER_CONCURRENCY="1")
        create_backup(api, namespace, "queued", deadlineSeconds=25)
        waiting = wait_custom(api, namespace, "sharebackups", "queued", reason_is("MoverLimit"), 60)
        assert waiting["status"]["phase"] == "Creating", waiting["status"]
        assert savepoint_annotations(namespace, "data").get("savepoint.dev/state") == "backup-creating"
        done = backed_up(api, namespace, "queued", timeout=90)
        assert done["status"]["phase"] == "Failed" and ready_reason(done) == "DeadlineExceeded", done["status"]
        assert "nothing was written" in done["status"]["message"], done["status"]["message"]
        assert "repositoryPath" not in done["status"] and "abort" not in done["status"]
        assert {"Aborting", "BackupFailed"} <= event_reasons(namespace, "ShareBackup", "queued")
        assert not (repo.dir / namespace / done["status"]["sourceUID"] / "queued").exists()
        assert_clean(namespace, repo)
    finally:
        free_mover_slot(occupant)
