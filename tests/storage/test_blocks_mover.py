"""The block mover actions (blocks-backup/-restore/-verify/-delete) run in-process against the real Ceph
and a local repository directory: what a mover Job does, without the Job."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rados
from savepoint.mover import blocks  # noqa: F401 - registers the actions
from savepoint.mover.registry import ActionContext, ActionFailed, get
from savepoint.mover.request import TERMINATION_MESSAGE_LIMIT, MoverResult
from savepoint.storage import chunks, rbd, repository
from savepoint.storage.ceph import CephCredentials

pytestmark = pytest.mark.storage

MiB = 1 << 20
NS, SOURCE = "team-a", "5d0c6c1e-0000-4000-8000-000000000001"


@pytest.fixture
def ctx(ceph_creds: CephCredentials) -> ActionContext:
    seen: list[tuple[int, int]] = []
    c = ActionContext(progress=lambda done, total, files=None: seen.append((done, total)),
                      ceph={"monitors": ",".join(ceph_creds.monitors), "user_id": ceph_creds.user_id,
                            "key": ceph_creds.key})
    c.seen = seen  # type: ignore[attr-defined]
    return c


def run(name: str, params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    fn = get(name)
    assert fn is not None
    result = fn(params, ctx)
    message = MoverResult(ok=True, data=result).to_termination_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT and "truncated" not in message
    return result


def owner(name: str, uid: str, ns: str = NS) -> dict[str, str]:
    return {"namespace": ns, "name": name, "uid": uid}


def manifest(name: str, uid: str, size: int) -> dict[str, Any]:
    return {"backup": {"name": name, "uid": uid, "namespace": NS},
            "source": {"namespace": NS, "uid": SOURCE, "pvcName": "data", "description": "pvc/data",
                       "sizeBytes": size},
            "created": "2026-01-01T00:00:00Z", "labels": {"app": "db"}}


def backup_params(root: Path, ref: rbd.ImageRef, name: str, uid: str, snap: str, *,
                  parent: tuple[str, str] | None = None, verify: bool = False, size: int = 64 * MiB) -> dict[str, Any]:
    return {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/{name}",
            "source": {"pool": ref.pool, "image": ref.image, "snapshot": snap},
            "snapshotName": f"savepoint-base-{uid[:13]}",
            "base": {"parentPath": f"{NS}/{SOURCE}/{parent[0]}", "parentUid": parent[1]} if parent else None,
            "manifest": manifest(name, uid, size), "verify": verify}


def write_at(cluster: rados.Rados, ref: rbd.ImageRef, data: dict[int, bytes]) -> None:
    with rbd.open_ref(cluster, ref) as image:
        for offset, blob in data.items():
            image.write(blob, offset)


def snap(cluster: rados.Rados, ref: rbd.ImageRef, name: str) -> None:
    with rbd.open_ref(cluster, ref) as image:
        rbd.create_snapshot(image, name)


def rename(cluster: rados.Rados, ref: rbd.ImageRef, old: str, new: str) -> None:
    with rbd.open_ref(cluster, ref) as image:
        image.rename_snap(old, new)


def read_all(cluster: rados.Rados, ref: rbd.ImageRef, snapshot: str | None = None) -> bytes:
    with rbd.open_ref(cluster, ref, snapshot=snapshot, read_only=True) as image:
        return image.read(0, image.size())


def test_backup_incremental_verify_restore_delete(cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef],
                                                  tmp_path: Path, ctx: ActionContext) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    ref = make_image(size=64 * MiB)
    rnd = random.Random(11)
    write_at(cluster, ref, {i * 8 * MiB: rnd.randbytes(4 * MiB) for i in range(8)})

    # full backup from a temporary snapshot, which then becomes the source's base (what the flow does)
    uid1 = str(uuid.uuid4())
    snap(cluster, ref, "savepoint-backup-1")
    r1 = run("blocks-backup", backup_params(root, ref, "full", uid1, "savepoint-backup-1", verify=True), ctx)
    assert r1["incremental"] is False and "no earlier backup" in r1["fullReadReason"]
    assert r1["bytesStored"] == 32 * MiB and r1["verifiedChunks"] == 8 and ctx.seen  # type: ignore[attr-defined]
    rename(cluster, ref, "savepoint-backup-1", f"savepoint-base-{uid1[:13]}")
    listed = repository.list_backups(root, NS, SOURCE)
    assert [b.manifest.backup.name for b in listed.backups] == ["full"]
    assert listed.backups[0].digest == r1["manifestDigest"]
    assert listed.backups[0].manifest.blocks is not None

    # the same Job again (a retry after a crash): reports the complete backup, writes nothing
    again = run("blocks-backup", backup_params(root, ref, "full", uid1, f"savepoint-base-{uid1[:13]}"), ctx)
    assert again["alreadyComplete"] and again["manifestDigest"] == r1["manifestDigest"]

    # incremental: 4 MiB changed
    write_at(cluster, ref, {16 * MiB: rnd.randbytes(4 * MiB)})
    uid2 = str(uuid.uuid4())
    snap(cluster, ref, "savepoint-backup-2")
    r2 = run("blocks-backup", backup_params(root, ref, "incr", uid2, "savepoint-backup-2", parent=("full", uid1)),
             ctx)
    assert r2["incremental"] is True and r2["parent"] == "full"
    assert r2["bytesRead"] == 4 * MiB and r2["bytesStored"] == 4 * MiB and r2["chunksInherited"] == 7
    expected = read_all(cluster, ref, "savepoint-backup-2")
    with rbd.open_ref(cluster, ref) as image:
        rbd.remove_snapshot(image, f"savepoint-base-{uid1[:13]}")  # replaced by the new base
        image.rename_snap("savepoint-backup-2", f"savepoint-base-{uid2[:13]}")
    m2 = json.loads((root / NS / SOURCE / "incr" / "backup.json").read_text())
    assert m2["parent"] == "full" and m2["parentUid"] == uid1 and m2["incremental"] is True
    assert m2["blocks"]["baseSnapshot"] == f"savepoint-base-{uid2[:13]}" and m2["bytesTotal"] == 32 * MiB

    rel2 = f"{NS}/{SOURCE}/incr"
    assert run("blocks-verify", {"repository": str(root), "backupPath": rel2, "expectedUid": uid2,
                                 "expectedDigest": r2["manifestDigest"]}, ctx)["chunksVerified"] == 8

    # delete the full backup: the incremental keeps every chunk it needs
    gone = run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/full",
                                 "owner": owner("full", uid1)}, ctx)
    assert gone["removed"] and gone["chunksRemoved"] == 1 and gone["backupsLeft"] == 1
    assert run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/full",
                                 "owner": owner("full", uid1)}, ctx)["removed"] is False  # idempotent

    target = make_image(size=64 * MiB)
    restored = run("blocks-restore", {"repository": str(root), "backupPath": rel2, "expectedUid": uid2,
                                      "expectedDigest": r2["manifestDigest"], "exactSize": True, "readback": True,
                                      "target": {"pool": target.pool, "image": target.image}}, ctx)
    assert restored["bytesWritten"] == 32 * MiB
    assert read_all(cluster, target) == expected

    # a third backup whose base snapshot was recreated under the same name: not trusted, full read
    with rbd.open_ref(cluster, ref) as image:
        rbd.remove_snapshot(image, f"savepoint-base-{uid2[:13]}")
        rbd.create_snapshot(image, f"savepoint-base-{uid2[:13]}")
    snap(cluster, ref, "savepoint-backup-3")
    r3 = run("blocks-backup", backup_params(root, ref, "third", str(uuid.uuid4()), "savepoint-backup-3",
                                            parent=("incr", uid2)), ctx)
    assert r3["incremental"] is False and "not the one" in r3["fullReadReason"]
    assert r3["bytesStored"] == 0  # all its chunks were in the store already

    # deleting every backup removes the chunk store and the source directory
    for name in ("incr", "third"):
        m = repository.read_manifest(root / NS / SOURCE / name)
        run("blocks-delete", {"repository": str(root), "backupPath": f"{NS}/{SOURCE}/{name}",
                              "owner": owner(name, m.backup.uid)}, ctx)
    assert not (root / NS / SOURCE).exists()


def test_restore_refusals_and_a_corrupt_chunk(cluster: rados.Rados, other_cluster: rados.Rados,
                                              make_image: Callable[..., rbd.ImageRef], tmp_path: Path,
                                              ctx: ActionContext) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    ref = make_image(size=16 * MiB)
    write_at(cluster, ref, {0: b"\x01" * MiB, 8 * MiB: b"\x02" * MiB})
    snap(cluster, ref, "t")
    uid = str(uuid.uuid4())
    r = run("blocks-backup", backup_params(root, ref, "b", uid, "t", size=16 * MiB), ctx)
    rel = f"{NS}/{SOURCE}/b"
    base = {"repository": str(root), "backupPath": rel, "expectedUid": uid, "expectedDigest": r["manifestDigest"]}

    bigger = make_image(size=32 * MiB)
    with pytest.raises(ActionFailed) as err:
        run("blocks-restore", {**base, "exactSize": True, "target": {"pool": bigger.pool, "image": bigger.image}}, ctx)
    assert err.value.reason == "SizeMismatch"
    run("blocks-restore", {**base, "target": {"pool": bigger.pool, "image": bigger.image}}, ctx)  # a new claim: fine

    smaller = make_image(size=8 * MiB)
    with pytest.raises(ActionFailed) as err:
        run("blocks-restore", {**base, "target": {"pool": smaller.pool, "image": smaller.image}}, ctx)
    assert err.value.reason == "SizeMismatch"

    busy = make_image(size=16 * MiB)
    with rbd.open_ref(other_cluster, busy), pytest.raises(ActionFailed) as err:  # open elsewhere: a watcher
        run("blocks-restore", {**base, "target": {"pool": busy.pool, "image": busy.image}}, ctx)
    assert err.value.reason in ("VolumeInUse", "VolumeBusy")

    with pytest.raises(ActionFailed) as err:
        run("blocks-restore", {**base, "expectedDigest": "sha256:" + "0" * 64,
                               "target": {"pool": bigger.pool, "image": bigger.image}}, ctx)
    assert err.value.reason == "BackupDataMissing"

    victim = json.loads((root / rel / "backup.json").read_text())["blocks"]["chunks"][1]
    path = chunks.ChunkStore(root / NS / SOURCE).path_of(victim[2])
    path.write_bytes(b"\x03" + path.read_bytes()[1:])
    with pytest.raises(ActionFailed) as err:
        run("blocks-verify", base, ctx)
    assert err.value.reason == "VerificationFailed"
    assert victim[2] in err.value.message and str(victim[0]) in err.value.message
    assert err.value.data["bad"][0]["digest"] == victim[2]
    with pytest.raises(ActionFailed) as err:
        run("blocks-restore", {**base, "target": {"pool": bigger.pool, "image": bigger.image}}, ctx)
    assert err.value.reason == "VerificationFailed" and victim[2] in err.value.message


def test_backup_of_a_missing_snapshot_fails_with_its_reason(cluster: rados.Rados, make_image: Callable[..., rbd.ImageRef],
                                                            tmp_path: Path, ctx: ActionContext) -> None:
    ref = make_image(size=8 * MiB)
    (tmp_path / "repo").mkdir()
    with pytest.raises(ActionFailed) as err:
        run("blocks-backup", backup_params(tmp_path / "repo", ref, "b", str(uuid.uuid4()), "nope", size=8 * MiB), ctx)
    assert err.value.reason == "NotFound"
    with pytest.raises(ActionFailed) as err:
        run("blocks-backup", {**backup_params(tmp_path / "repo", ref, "b", str(uuid.uuid4()), "x"),
                              "repository": str(tmp_path / "absent")}, ctx)
    assert err.value.reason == "RepositoryUnavailable"
