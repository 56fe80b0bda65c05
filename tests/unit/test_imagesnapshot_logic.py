"""ImageSnapshot's pure decisions: names, which path, when to fall back, what deletion does, what a
failure tells the user; and the mover's parent check. No services."""

from __future__ import annotations

import re

import pytest
from savepoint.api import ImageSnapshotStatus, Reason
from savepoint.api.types import CEPH_NAME
from savepoint.flows import imagesnapshot as flow
from savepoint.mover import registry
from savepoint.mover.rbdflatten import expected_parent_mismatch
from savepoint.storage import rbd

pytestmark = pytest.mark.unit

UID = "3f2a1b4c-1d2e-4f00-9abc-0123456789ab"


def test_temporary_snapshot_is_a_savepoint_snapshot_unique_per_cr() -> None:
    name = flow.snapshot_name(UID)
    assert name == "savepoint-image-3f2a1b4c-1d2e"
    assert name.startswith(rbd.SAVEPOINT_SNAPSHOT_PREFIX)  # never "the latest snapshot" for a revert
    assert flow.snapshot_name("ffffffff-1d2e-0000") != name


@pytest.mark.parametrize(("namespace", "name"), [
    ("team-a", "nightly"),
    ("ns", "web.v1.2"),
    ("x" * 63, "y" * 253),
])
def test_generated_image_names_are_valid_ceph_names_with_the_uid(namespace: str, name: str) -> None:
    image = flow.generated_image_name(namespace, name, UID)
    assert re.match(CEPH_NAME, image) and len(image) <= 250
    assert image.endswith("-3f2a1b4c")
    assert image.startswith(f"{namespace}-"[:240])


def test_the_spec_method_picks_the_first_path() -> None:
    assert flow.initial_path("Auto") == "Clone"
    assert flow.initial_path("Clone") == "Clone"
    assert flow.initial_path("Copy") == "Copy"


@pytest.mark.parametrize(("method", "reason", "late", "expected"), [
    ("Auto", "PermissionDenied", False, "fallback"),
    ("Auto", "NotFound", False, "fallback"),  # destination pool missing: the copy reports it properly
    ("Auto", "MoverFailed", False, "fallback"),
    ("Auto", None, False, "fallback"),
    ("Clone", "PermissionDenied", False, "fail"),
    ("Clone", "MoverFailed", False, "fail"),
    ("Auto", "DeadlineExceeded", False, "fail"),  # a copy would not finish either
    ("Auto", "PermissionDenied", True, "fail"),
])
def test_when_the_direct_path_falls_back(method: str, reason: str | None, late: bool, expected: str) -> None:
    assert flow.on_direct_failure(method, reason, late) == expected


def test_a_caps_failure_tells_which_user_needs_which_caps() -> None:
    why = flow.fallback_reason("the clone", "PermissionDenied",
                               "RBD permission error (EPERM)", "client.csi", "images")
    assert "client.csi" in why and "pool images" in why and "profile rbd pool=images" in why
    assert why.startswith("the clone failed (PermissionDenied): RBD permission error")
    assert "pool images exist" in flow.direct_path_hint("NotFound", "client.csi", "images")


def test_failure_reasons_are_api_reasons() -> None:
    assert flow.failure_reason("PermissionDenied") is Reason.PERMISSION_DENIED
    assert flow.failure_reason("MoverFailed") is Reason.CLONE_FAILED
    assert flow.copy_failure_reason("VerifyFailed") == Reason.VERIFICATION_FAILED
    assert flow.copy_failure_reason("PermissionDenied") == Reason.PERMISSION_DENIED
    assert flow.copy_failure_reason("DeadlineExceeded") == Reason.DEADLINE_EXCEEDED
    assert flow.copy_failure_reason("NotFound") == "NotFound"  # Ceph's own reason passes through
    assert flow.copy_failure_reason(None) == Reason.MOVER_FAILED


@pytest.mark.parametrize(("phase", "step", "policy", "expected"), [
    ("Succeeded", "ImageReady", "Delete", "delete"),
    ("Succeeded", "ImageReady", "Retain", "retain"),
    ("ErrorDeleting", "ImageReady", "Delete", "delete"),  # retried until the clones are gone
    ("Deleting", "ImageReady", "Delete", "delete"),
    ("Creating", "Cloned", "Delete", "abort"),
    ("Creating", "Cloned", "Retain", "abort"),  # a half-made image is never retained
    ("Pending", "Validated", "Delete", "abort"),  # the lock may be held
    ("Failed", "Aborting", "Delete", "abort"),
    ("Pending", None, "Delete", "nothing"),
    ("Failed", None, "Delete", "nothing"),  # failed validation: nothing was created
])
def test_what_deletion_does(phase: str, step: str | None, policy: str, expected: str) -> None:
    assert flow.deletion_action(phase, step, policy) == expected


def test_ownership_by_image_metadata() -> None:
    mine = flow.owner_value("ns", "isnap", UID)
    assert flow.owned_by(mine, UID)
    assert not flow.owned_by(None, UID), "an unmarked image is never ours, whatever status says"
    assert not flow.owned_by(flow.owner_value("ns", "isnap", "another-uid"), UID)


def test_an_existing_destination_is_ours_only_if_marked_or_still_our_clone() -> None:
    source = rbd.ImageRef("rbd", "csi-vol-1")
    snap = flow.snapshot_name(UID)
    ours = rbd.ParentInfo(pool="rbd", namespace=None, image="csi-vol-1", snapshot=snap)
    assert flow.our_clone(None, ours, source, snap, UID), "killed between the clone and the marking"
    assert not flow.our_clone(None, None, source, snap, UID), "an unmarked image that is no clone of ours"
    other_snap = rbd.ParentInfo(pool="rbd", namespace=None, image="csi-vol-1", snapshot=flow.snapshot_name("x"))
    assert not flow.our_clone(None, other_snap, source, snap, UID), "another action's clone of the same volume"
    assert not flow.our_clone(flow.owner_value("t2", "i", "x"), ours, source, snap, UID)
    assert flow.our_clone(flow.owner_value("ns", "isnap", UID), None, source, snap, UID)


def test_every_status_field_the_flow_writes_exists_in_the_api() -> None:
    """The API server prunes unknown status fields silently: the flow must write only known ones."""
    fields = {info.alias or name for name, info in ImageSnapshotStatus.model_fields.items()}
    written = {"step", "source", "clusterID", "sourceImage", "destinationPool", "temporaryImage",
               "temporarySnapshot", "method", "fallbackReason", "moverJob", "progress", "checksum", "location",
               "image", "phase", "message"}
    assert written <= fields, written - fields


def test_flatten_action_is_registered_and_checks_the_parent() -> None:
    assert registry.get("rbd-flatten") is not None
    parent = rbd.ParentInfo(pool="rbd", namespace=None, image="vol", snapshot="savepoint-image-x")
    expected = {"pool": "rbd", "image": "vol", "namespace": None, "snapshot": "savepoint-image-x"}
    assert expected_parent_mismatch(parent, expected) is None
    assert expected_parent_mismatch(parent, None) is None
    assert expected_parent_mismatch(parent, {"pool": "rbd", "image": "vol"}) is None  # any snapshot of it
    why = expected_parent_mismatch(parent, {**expected, "image": "other"})
    assert why is not None and "rbd/vol@savepoint-image-x" in why and "rbd/other" in why
