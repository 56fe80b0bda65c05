"""The block-volume format's decisions, without a cluster: in use and force, one base per source,
the size rules on the image, the names of temporary objects, the mover requests it builds."""

from __future__ import annotations

import logging

import pytest
from savepoint.kube import k8s, references
from savepoint.api import Reason
from savepoint.engine.context import FlowContext
from savepoint.flows.blocks_format import (
    BASE_PREFIX,
    TEMP_PREFIX,
    BlocksFormat,
    Image,
    base_snapshot_name,
    in_use_refusal,
    restore_size_refusal,
    stale_bases,
    temp_snapshot_name,
)
from savepoint.flows.formats import BackupPlan, DeletePlan, Repository, Source
from savepoint.mover.request import MoverRequest
from savepoint.settings import Settings
from savepoint.storage import rbd

pytestmark = pytest.mark.unit

UID = "0b4c1f1e-1111-4222-8333-444455556666"
MiB = 1 << 20


def test_in_use_needs_force_and_says_so() -> None:
    assert in_use_refusal([], force=False) is None
    assert in_use_refusal(["Pod/app"], force=True) is None
    message = in_use_refusal(["Pod/app", "RBD watcher 10.0.0.1:0/1"], force=False)
    assert message and "Pod/app" in message and "watcher" in message and "force: true" in message


def test_snapshot_names_are_savepoint_snapshots_never_a_users_latest() -> None:
    for name in (temp_snapshot_name(UID), base_snapshot_name(UID)):
        assert name.startswith(rbd.SAVEPOINT_SNAPSHOT_PREFIX) and UID in name and len(name) < 250
    assert temp_snapshot_name(UID).startswith(TEMP_PREFIX) and base_snapshot_name(UID).startswith(BASE_PREFIX)


def test_one_base_per_source() -> None:
    keep = base_snapshot_name("new")
    snaps = ["nightly", base_snapshot_name("old"), keep, temp_snapshot_name("x"), "savepoint-safety-1"]
    assert stale_bases(snaps, keep) == [base_snapshot_name("old")]
    assert stale_bases(snaps, None) == [base_snapshot_name("old"), keep]


def test_restore_size_rules_on_the_image() -> None:
    assert restore_size_refusal(16 * MiB, 16 * MiB, in_place=True, what="pvc/data") is None
    reason, message = restore_size_refusal(32 * MiB, 16 * MiB, in_place=True, what="pvc/data") or ("", "")
    assert reason == Reason.SIZE_MISMATCH and "pvc/data" in message and str(16 * MiB) in message
    assert restore_size_refusal(32 * MiB, 16 * MiB, in_place=False, what="pvc/other") is None
    reason, _ = restore_size_refusal(8 * MiB, 16 * MiB, in_place=False, what="pvc/other") or ("", "")
    assert reason == Reason.TARGET_TOO_SMALL
    assert restore_size_refusal(8 * MiB, None, in_place=True, what="x") is None


def test_image_annotation_round_trips() -> None:
    image = Image("fsid", "rbd", "csi-vol-1", "tenant")
    assert Image.from_json(image.to_json()) == image
    assert Image.from_json(Image("fsid", "rbd", "img").to_json()) == Image("fsid", "rbd", "img", None)
    assert Image.from_json("not json") is None and Image.from_json(None) is None
    assert str(image) == "rbd:rbd/tenant/csi-vol-1"


def _ctx(status: dict | None = None) -> FlowContext:
    owner = k8s.Owner("ShareBackup", "ns", "nightly", UID)
    return FlowContext(owner=owner, generation=1, spec={}, status=status or {}, settings=Settings(),
                       logger=logging.getLogger("test"))


def _plan(**kw: object) -> BackupPlan:
    target = references.RbdTarget("fsid", "rbd", "csi-vol-1")
    resolved = references.ResolvedVolume(namespace="ns", target=target, pvc_name="data", pvc_uid="pvc-uid",
                                         pv_name="pv", size_bytes=16 * MiB, volume_mode="Block")
    source = Source(reference={"persistentVolumeClaim": {"name": "data"}}, uid="pvc-uid", description="pvc/data",
                    size_bytes=16 * MiB, resolved=resolved)
    defaults: dict = dict(namespace="ns", name="nightly", backup_uid=UID, source=source,
                          repository=Repository({"nfs": {"server": "nfs.example", "path": "/backups"}}),
                          rel_path="ns/pvc-uid/nightly", incremental=True, verify=True, force=False,
                          parent_name="monday", parent_path="ns/pvc-uid/monday", created="2026-01-01T00:00:00Z")
    defaults.update(kw)
    return BackupPlan(**defaults)


def test_backup_request_reads_the_temporary_snapshot_incrementally() -> None:
    fmt = BlocksFormat()
    request = fmt.backup_request(_ctx({"temporarySnapshot": temp_snapshot_name(UID)}), _plan())
    assert isinstance(request, MoverRequest) and request.action == "blocks-backup"
    assert request.needs_ceph and request.run_as_root and not request.privileged
    # Only the namespace's own part of the repository is mounted, where the full path would put it.
    assert [(v.name, v.nfs.path, v.sub_path, v.mount_path, v.read_only) for v in request.volumes] == [
        ("repository", "/backups", "ns", "/savepoint/repository/ns", False)]
    params = request.params
    assert params["source"] == {"pool": "rbd", "image": "csi-vol-1", "namespace": None,
                                "snapshot": temp_snapshot_name(UID)}
    assert params["snapshotName"] == base_snapshot_name(UID)
    assert params["base"] == {"parentPath": "ns/pvc-uid/monday", "parentUid": None}
    assert params["verify"] is True and params["manifest"]["backup"]["uid"] == UID
    assert MoverRequest.from_env(request.to_env()) == request
    full = fmt.backup_request(_ctx(), _plan(incremental=False))
    assert full.params["base"] is None


def test_delete_request_needs_no_ceph() -> None:
    plan = DeletePlan(namespace="ns", name="nightly", backup_uid=UID, rel_path="ns/pvc-uid/nightly",
                      repository=Repository({"nfs": {"server": "nfs.example", "path": "/backups"}}),
                      source_uid="pvc-uid")
    request = BlocksFormat().delete_request(_ctx(), plan)
    assert request.action == "blocks-delete" and not request.needs_ceph
    assert request.volumes[0].nfs.path == "/backups" and request.volumes[0].sub_path == "ns"
    assert request.params["expectedUid"] == UID


def test_accepts_only_rbd() -> None:
    fmt = BlocksFormat()
    assert fmt.accepts(references.RbdTarget("fsid", "rbd", "img"))
    assert not fmt.accepts(references.NfsTarget("nfs.example", "/share"))
