"""A hostile repository against the real movers: real Ceph images, a real nfs-ganesha export, and the
mover's own entry point (``python -m savepoint.mover``) run as a process with a deadline.

A ``backup.json`` out of bounds ends the action ``BadBackupManifest`` naming the file and field, fast,
with nothing written to the target; a directory that is not the asker's is never deleted or
overwritten (``BackupOwnerMismatch``), byte for byte; the listing reports hostile directories as
invalid and goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rados
from helpers import trees
from sandboxlib import nfs as sandbox_nfs
from savepoint.mover import blocks  # noqa: F401 - registers the actions
from savepoint.mover import files as mover_files
from savepoint.mover.registry import ActionContext, ActionFailed, get
from savepoint.mover.request import MoverRequest, MoverResult
from savepoint.storage import rbd, repository
from savepoint.storage.ceph import CephCredentials

pytestmark = pytest.mark.storage

MiB = 1 << 20
NS, SOURCE = "team-a", "5d0c6c1e-0000-4000-8000-00000000beef"
ROOT = Path(__file__).resolve().parents[2]
EXPORT = "savepoint-storage-trust"


@pytest.fixture
def ctx(ceph_creds: CephCredentials) -> ActionContext:
    return ActionContext(progress=lambda done, total, files=None: None,
                         ceph={"monitors": ",".join(ceph_creds.monitors), "user_id": ceph_creds.user_id,
                               "key": ceph_creds.key})


@pytest.fixture
def export(nfs: Any) -> Iterator[sandbox_nfs.Export]:
    exp = sandbox_nfs.add_export(nfs, EXPORT)
    sub = exp.dir / uuid.uuid4().hex[:8]
    sub.mkdir()
    yield sandbox_nfs.Export(server=exp.server, port=exp.port, path=f"{exp.path}/{sub.name}", dir=sub)
    subprocess.run(["rm", "-rf", str(sub)], check=False)


def run(name: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    fn = get(name)
    assert fn is not None
    return fn(params, ctx)


def mover_process(request: MoverRequest, creds: CephCredentials | None, tmp: Path,
                  timeout: float = 120) -> tuple[int, MoverResult, float]:
    """``python -m savepoint.mover`` as a Job's container runs it: request in the env, verdict in the log."""
    log = tmp / f"termination-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "SAVEPOINT_MOVER_REQUEST": request.to_env(), "SAVEPOINT_TERMINATION_LOG": str(log),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    if creds is not None:
        env.update(SAVEPOINT_CEPH_MONITORS=",".join(creds.monitors), SAVEPOINT_CEPH_USER_ID=creds.user_id,
                   SAVEPOINT_CEPH_KEY=creds.key)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "savepoint.mover"], env=env, capture_output=True, timeout=timeout,
                          check=False, cwd=ROOT)
    result = MoverResult.parse(log.read_text())
    assert result is not None, done.stderr[-2000:]
    return done.returncode, result, time.monotonic() - started


def image_sha(cluster: rados.Rados, ref: rbd.ImageRef) -> str:
    with rbd.open_ref(cluster, ref, read_only=True) as image:
        return hashlib.sha256(image.read(0, image.size())).hexdigest()


def owner(name: str, uid: str) -> dict[str, str]:
    return {"namespace": NS, "name": name, "uid": uid}


def block_backup(cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef], root: Path, ctx: ActionContext,
                 name: str, uid: str) -> tuple[rbd.ImageRef, dict[str, Any]]:
    ref = make_image(size=16 * MiB)
    with rbd.open_ref(cluster, ref) as image:
        image.write(b"\x11" * MiB, 0)
        image.write(b"\x22" * MiB, 9 * MiB)
        rbd.create_snapshot(image, "snap")
    result = run("blocks-backup", {
        "repository": str(root), "backupPath": f"{NS}/{SOURCE}/{name}",
        "source": {"pool": ref.pool, "image": ref.image, "snapshot": "snap"}, "snapshotName": "snap",
        "base": None, "owner": owner(name, uid),
        "manifest": {"backup": owner(name, uid), "created": "2026-01-01T00:00:00Z",
                     "source": {"namespace": NS, "uid": SOURCE, "pvcName": "data", "sizeBytes": 16 * MiB}}}, ctx)
    return ref, result


HOSTILE_BLOCKS = [
    ("blocks.size", lambda b: b.update(size=1 << 62)),
    ("blocks.chunkSize", lambda b: b.update(chunkSize=1)),
    ("blocks.size", lambda b: b.update(size="16777216")),
    ("blocks.chunkCount", lambda b: b.update(chunkCount=99)),
    ("blocks.chunks[1][0]", lambda b: b["chunks"].insert(1, list(b["chunks"][0]))),
]


def test_a_hostile_backup_json_fails_the_restore_fast_and_writes_nothing(
        cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef], ceph_creds: CephCredentials,
        tmp_path: Path, ctx: ActionContext) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    _, made = block_backup(cluster, make_image, root, ctx, "b", "uid-b")
    directory = root / NS / SOURCE / "b"
    good = json.loads((directory / "backup.json").read_text())
    target = make_image(size=16 * MiB)
    with rbd.open_ref(cluster, target) as image:
        image.write(b"\x77" * 2 * MiB, 3 * MiB)  # what the target holds must survive every refusal
    before = image_sha(cluster, target)
    for i, (field, mutate) in enumerate(HOSTILE_BLOCKS):
        raw = json.loads(json.dumps(good))
        mutate(raw["blocks"])
        data = json.dumps(raw).encode()
        (directory / "backup.json").write_bytes(data)  # what a tenant's (or a damaged) repository holds
        params = {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/b", "expectedUid": "uid-b",
                  "expectedDigest": repository.digest_bytes(data),  # as a re-import recorded it
                  "owner": owner("my-restore", "uid-r"),
                  "target": {"pool": target.pool, "image": target.image}}
        if i < 2:  # the real entry point, as a process with a deadline: no hang, a readable verdict
            code, result, seconds = mover_process(MoverRequest(action="blocks-restore", params=params,
                                                               needs_ceph=True), ceph_creds, tmp_path)
            assert code == 1 and not result.ok and result.reason == "BadBackupManifest", result
            assert result.message is not None and result.message.startswith(f"{NS}/{SOURCE}/b/backup.json: {field}: ")
            assert result.data["targetTouched"] is False and seconds < 60
        else:
            with pytest.raises(ActionFailed) as err:
                run("blocks-restore", params, ctx)
            assert err.value.reason == "BadBackupManifest" and f"backup.json: {field}: " in err.value.message
        assert image_sha(cluster, target) == before, f"{field}: the target changed"
        with pytest.raises(ActionFailed) as err:
            run("blocks-verify", {k: params[k] for k in ("repository", "backupPath", "expectedUid", "owner")}, ctx)
        assert err.value.reason == "BadBackupManifest"
    assert made["manifestDigest"].startswith("sha256:")


def test_a_hostile_parent_fails_the_backup_before_it_writes(
        cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef], tmp_path: Path, ctx: ActionContext) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    ref, _ = block_backup(cluster, make_image, root, ctx, "full", "uid-1")
    parent = root / NS / SOURCE / "full" / "backup.json"
    raw = json.loads(parent.read_text())
    raw["blocks"]["chunkSize"] = 1
    parent.write_text(json.dumps(raw))
    with rbd.open_ref(cluster, ref) as image:
        rbd.create_snapshot(image, "snap2")
    before = trees.snapshot(root)
    with pytest.raises(ActionFailed) as err:
        run("blocks-backup", {
            "repository": str(root), "backupPath": f"{NS}/{SOURCE}/incr",
            "source": {"pool": ref.pool, "image": ref.image, "snapshot": "snap2"}, "snapshotName": "snap2",
            "base": {"parentPath": f"{NS}/{SOURCE}/full", "parentUid": "uid-1"},
            "manifest": {"backup": owner("incr", "uid-2"), "created": "2026-01-01T00:00:00Z",
                         "source": {"namespace": NS, "uid": SOURCE, "pvcName": "data"}}}, ctx)
    assert err.value.reason == "BadBackupManifest" and "blocks.chunkSize" in err.value.message
    assert trees.diff(before, trees.snapshot(root)) == [], "a refused backup wrote into the repository"
    # a parent in another namespace is refused outright
    with pytest.raises(ActionFailed) as err:
        run("blocks-backup", {
            "repository": str(root), "backupPath": f"{NS}/{SOURCE}/incr",
            "source": {"pool": ref.pool, "image": ref.image, "snapshot": "snap2"}, "snapshotName": "snap2",
            "base": {"parentPath": f"team-b/{SOURCE}/full", "parentUid": "uid-1"},
            "manifest": {"backup": owner("incr", "uid-2"), "created": "2026-01-01T00:00:00Z",
                         "source": {"namespace": NS, "uid": SOURCE, "pvcName": "data"}}}, ctx)
    assert err.value.reason == "BadBackupPath"
    assert trees.diff(before, trees.snapshot(root)) == []


def test_a_block_backup_of_another_owner_is_never_deleted(
        cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef], tmp_path: Path, ctx: ActionContext) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    block_backup(cluster, make_image, root, ctx, "b", "uid-b")
    before = trees.snapshot(root)
    for who in (owner("b", "uid-forged"), {"namespace": "team-b", "name": "b", "uid": "uid-b"}):
        with pytest.raises(ActionFailed) as err:
            run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/b", "owner": who}, ctx)
        assert err.value.reason in ("BackupOwnerMismatch", "BadBackupPath")
    with pytest.raises(ActionFailed) as err:
        run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/b"}, ctx)
    assert err.value.reason == "BadMoverRequest"
    assert trees.diff(before, trees.snapshot(root)) == []
    gone = run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/b", "owner": owner("b", "uid-b")},
               ctx)
    assert gone["removed"] and not (root / NS).exists() or not any((root / NS).iterdir())


def test_over_nfs_a_hostile_repository_is_listed_as_invalid_and_restores_nothing(
        export: sandbox_nfs.Export, tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "docs").mkdir(parents=True)
    (share / "docs" / "a.txt").write_text("hello\n")
    ctx = ActionContext(progress=lambda *a, **k: None)
    m = {"format": "files", "backup": owner("monday", "uid-m"), "created": "2024-05-01T10:00:00+00:00",
         "source": {"namespace": NS, "uid": SOURCE, "pvcName": "shared"}, "toolVersion": "test"}
    run("files-backup", {"source": str(share), "repository": str(export.dir), "path": f"{NS}/{SOURCE}/monday",
                         "parent": None, "verify": True, "manifest": m}, ctx)
    hostile = export.dir / NS / SOURCE / "tuesday"
    (hostile / "data").mkdir(parents=True)
    raw = json.loads((export.dir / NS / SOURCE / "monday" / "backup.json").read_text())
    raw["backup"]["name"] = "tuesday"
    raw["entries"] = "lots"
    (hostile / "backup.json").write_text(json.dumps(raw))
    huge = export.dir / NS / SOURCE / "wednesday"
    huge.mkdir()
    with open(huge / "backup.json", "wb") as f:
        f.truncate(1 << 30)
    page = run("repository-list", {"repository": str(export.dir), "namespace": NS}, ctx)
    assert [e["name"] for e in mover_files.unpack(page["entries"])] == ["monday"]
    assert page["invalidCount"] == 2
    assert any("tuesday: BadBackupManifest:" in p and "entries" in p for p in page["invalid"])
    assert any("wednesday: BadBackupManifest:" in p and "refused unread" in p for p in page["invalid"])

    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("must survive\n")
    before = trees.snapshot(target)
    for path in (f"{NS}/{SOURCE}/tuesday", f"{NS}/{SOURCE}/wednesday"):
        with pytest.raises(ActionFailed) as err:
            run("files-restore", {"repository": str(export.dir), "target": str(target), "path": path,
                                  "deleteExtraFiles": True, "owner": owner("r", "uid-r")}, ctx)
        assert err.value.reason == "BadBackupManifest" and err.value.data["targetTouched"] is False
    # checksums.jsonl that would make verify read outside the tree
    monday = export.dir / NS / SOURCE / "monday"
    (monday / "checksums.jsonl").write_text(json.dumps({"path": "../../../../etc/passwd", "size": 1,
                                                        "sha256": "0" * 64}) + "\n")
    with pytest.raises(ActionFailed) as err:
        run("files-verify", {"repository": str(export.dir), "path": f"{NS}/{SOURCE}/monday"}, ctx)
    assert err.value.reason == "BadBackupManifest" and "line 1.path" in err.value.message
    # data/ replaced by a link to somewhere else: never restored from
    os.rename(monday / "data", monday / "data.real")
    os.symlink("/etc", monday / "data")
    with pytest.raises(ActionFailed) as err:
        run("files-restore", {"repository": str(export.dir), "target": str(target), "path": f"{NS}/{SOURCE}/monday",
                              "deleteExtraFiles": True}, ctx)
    assert err.value.reason == "BadBackupPath"
    assert trees.diff(before, trees.snapshot(target)) == []


def test_the_mover_process_refuses_a_delete_without_or_with_a_forged_owner(export: sandbox_nfs.Export,
                                                                           tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "a").write_text("keep\n")
    ctx = ActionContext(progress=lambda *a, **k: None)
    run("files-backup", {"source": str(share), "repository": str(export.dir), "path": f"{NS}/{SOURCE}/monday",
                         "parent": None, "manifest": {"format": "files", "backup": owner("monday", "uid-m"),
                                                      "created": "2024-05-01T10:00:00+00:00", "toolVersion": "t",
                                                      "source": {"namespace": NS, "uid": SOURCE}}}, ctx)
    before = trees.snapshot(export.dir)
    for params, reason in (({}, "BadMoverRequest"),
                           ({"owner": owner("monday", "uid-forged")}, "BackupOwnerMismatch"),
                           ({"owner": {"namespace": "team-b", "name": "monday", "uid": "uid-m"}}, "BadBackupPath")):
        code, result, _ = mover_process(MoverRequest(action="repository-delete", params={
            "repository": str(export.dir), "path": f"{NS}/{SOURCE}/monday", **params}), None, tmp_path)
        assert code == 1 and result.reason == reason, result
    assert trees.diff(before, trees.snapshot(export.dir)) == []
    code, result, _ = mover_process(MoverRequest(action="repository-delete", params={
        "repository": str(export.dir), "path": f"{NS}/{SOURCE}/monday", "owner": owner("monday", "uid-m")}),
        None, tmp_path)
    assert code == 0 and result.ok and result.data["removed"] is True
    assert not (export.dir / NS / SOURCE / "monday").exists()
