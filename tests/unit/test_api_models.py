"""The pydantic models: the rules users meet in the API server hold in Python too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from savepoint import api
from savepoint.api import (
    READY,
    SUCCEEDED,
    ConditionStatus,
    DeletionPolicy,
    ExactlyOne,
    Handling,
    ImageMethod,
    ImageSnapshotSpec,
    NewClaim,
    NfsRef,
    RbdRef,
    Reason,
    RepositoryRef,
    RestoreTarget,
    ShareBackup,
    ShareBackupSpec,
    ShareBackupStatus,
    ShareRestoreSpec,
    ShareSource,
    SnapshotSource,
    VolumeRevert,
    VolumeRevertSpec,
    VolumeSource,
    find_condition,
    initial_conditions,
    is_settled,
    is_true,
    set_condition,
    to_bytes,
    to_quantity,
)
from savepoint.api.base import one_of_message

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
PVC = {"name": "app-data"}
RBD = {"clusterID": "ceph", "pool": "rbd", "image": "disk"}
NFS = {"server": "nfs.example.com", "path": "/exports/share"}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def messages(error: ValidationError) -> list[str]:
    return [e["msg"] for e in error.errors()]


# --- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_parses_and_round_trips(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    resource = api.parse(body)
    assert "namespace" not in body["metadata"], "examples are applied with -n"
    dumped = resource.to_dict()
    assert dumped["spec"] | body["spec"] == dumped["spec"], "every field of the example survives, defaults are added"
    assert type(resource).model_validate(dumped) == resource


def test_every_kind_has_an_example() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == set(api.BY_KIND)


# --- exactly one of ----------------------------------------------------------------------------

CHOICES: list[tuple[type[ExactlyOne], dict[str, Any]]] = [
    (VolumeSource, {"persistentVolumeClaim": PVC, "rbd": RBD}),
    (ShareSource, {"persistentVolumeClaim": PVC, "nfs": NFS, "rbd": RBD}),
    (RepositoryRef, {"persistentVolumeClaim": PVC, "nfs": NFS}),
    (SnapshotSource, {"rbdSnapshot": "snap", "volumeSnapshot": {"name": "snap"}}),
    (RestoreTarget, {"persistentVolumeClaim": PVC, "newClaim": {"name": "new"}}),
]


@pytest.mark.parametrize(("model", "alternatives"), CHOICES, ids=[m.__name__ for m, _ in CHOICES])
def test_exactly_one_reference(model: type[ExactlyOne], alternatives: dict[str, Any]) -> None:
    expected = one_of_message(list(alternatives))
    for name, value in alternatives.items():
        chosen = model.model_validate({name: value})
        assert chosen.chosen()[0] == name
    with pytest.raises(ValidationError) as none:
        model.model_validate({})
    assert any(expected in m for m in messages(none.value))
    with pytest.raises(ValidationError) as all_of_them:
        model.model_validate(alternatives)
    assert any(expected in m for m in messages(all_of_them.value))


def test_the_cel_rule_and_the_python_check_say_the_same() -> None:
    rule = ShareSource.all_cel_rules()[0]
    assert rule["message"] == "exactly one of persistentVolumeClaim, nfs or rbd must be set"
    assert rule["rule"] == "[has(self.persistentVolumeClaim), has(self.nfs), has(self.rbd)].exists_one(x, x)"
    assert VolumeSource.all_cel_rules()[0]["message"] == "exactly one of persistentVolumeClaim or rbd must be set"


# --- defaults ----------------------------------------------------------------------------------


def test_defaults() -> None:
    revert = VolumeRevertSpec.model_validate({"volume": {"persistentVolumeClaim": PVC}, "snapshot": {"rbdSnapshot": "s"}})
    assert revert.safety_snapshot is True and revert.deadline_seconds is None
    backup = ShareBackupSpec.model_validate({"source": {"persistentVolumeClaim": PVC}})
    assert (backup.incremental, backup.verify, backup.force, backup.repository) == (True, False, False, None)
    restore = ShareRestoreSpec.model_validate({"backup": {"name": "b"}})
    assert restore.delete_extra_files is True and restore.target is None
    image = ImageSnapshotSpec.model_validate({"source": {"rbd": RBD}})
    assert image.method is ImageMethod.AUTO and image.deletion_policy is DeletionPolicy.DELETE
    assert image.destination is None


# --- camelCase on the wire ---------------------------------------------------------------------


def test_camel_case_round_trip() -> None:
    by_python_name = RbdRef(cluster_id="ceph", pool="rbd", image="disk", rados_namespace="tenant")
    wire = by_python_name.to_dict()
    assert wire == {"clusterID": "ceph", "pool": "rbd", "image": "disk", "radosNamespace": "tenant"}
    assert RbdRef.model_validate(wire) == by_python_name

    status = ShareBackupStatus(source_uid="0f1e", bytes_stored=10, full_read_reason="no base snapshot")
    assert status.to_dict() == {"conditions": [], "sourceUID": "0f1e", "bytesStored": 10, "fullReadReason": "no base snapshot"}


def test_unset_fields_are_left_out_not_null() -> None:
    """A ``null`` would make ``has()`` true in the CRD's exactly-one-of rules."""
    spec = ShareBackupSpec.model_validate({"source": {"nfs": NFS}})
    assert spec.to_dict() == {"source": {"nfs": NFS}, "incremental": True, "verify": False, "force": False}


def test_unknown_spec_fields_are_refused_but_unknown_status_fields_are_tolerated() -> None:
    with pytest.raises(ValidationError):
        ShareBackupSpec.model_validate({"source": {"nfs": NFS}, "incrementl": False})
    status = ShareBackupStatus.model_validate({"phase": "Available", "addedByANewerOperator": 1})
    assert status.phase == "Available"


def test_whole_object_parsing() -> None:
    body = {
        "apiVersion": "savepoint.dev/v1alpha1",
        "kind": "VolumeRevert",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 2, "managedFields": [{}]},
        "spec": {"volume": {"persistentVolumeClaim": PVC}, "snapshot": {"rbdSnapshot": "s"}},
    }
    revert = api.parse(body)
    assert isinstance(revert, VolumeRevert)
    assert revert.metadata.generation == 2 and revert.status is None
    assert VolumeRevert(spec=revert.spec).kind == "VolumeRevert"
    with pytest.raises(ValidationError):
        VolumeRevert.model_validate({**body, "kind": "ShareBackup"})
    with pytest.raises(ValidationError):
        ShareBackup.model_validate({**body, "apiVersion": "savepoint.dev/v1"})


# --- scalar rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bad_Name", "-leading", "trailing-", "a" * 254, ""])
def test_bad_object_names(name: str) -> None:
    with pytest.raises(ValidationError):
        NewClaim(name=name)


@pytest.mark.parametrize("name", ["pool/image", "image@snap", "-rf", ".hidden", "with space", ""])
def test_bad_ceph_names(name: str) -> None:
    with pytest.raises(ValidationError):
        RbdRef(cluster_id="ceph", pool="rbd", image=name)


@pytest.mark.parametrize("path", ["/", "/exports", "/exports/share/", "/a/.b/..c/.../.", "/a..b"])
def test_good_nfs_paths(path: str) -> None:
    assert NfsRef(server="10.0.0.1", path=path).path == path


@pytest.mark.parametrize("path", ["relative", "/a/../b", "/..", "/a/..", "//a", ""])
def test_bad_nfs_paths(path: str) -> None:
    with pytest.raises(ValidationError):
        NfsRef(server="nfs", path=path)


@pytest.mark.parametrize("size", ["1", "10Gi", "1.5Gi", "500M", "2e9", ".5Ti", "0.1"])
def test_good_sizes(size: str) -> None:
    assert NewClaim(name="n", size=size).size == size


@pytest.mark.parametrize(
    ("size", "message"),
    [("0", "greater than zero"), ("0Gi", "greater than zero"), ("0.0", "greater than zero"), ("00e3", "greater than zero"),
     ("-1Gi", "pattern"), ("ten gigs", "pattern"), ("100m", "pattern"), ("1GiB", "pattern"), ("", "at least 1")],
)
def test_bad_sizes(size: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        NewClaim(name="n", size=size)
    assert any(message in m for m in messages(error.value))


@pytest.mark.parametrize("deadline", [0, -5])
def test_deadlines_are_positive(deadline: int) -> None:
    with pytest.raises(ValidationError):
        ImageSnapshotSpec.model_validate({"source": {"rbd": RBD}, "deadlineSeconds": deadline})


def test_enums_are_closed() -> None:
    with pytest.raises(ValidationError):
        ImageSnapshotSpec.model_validate({"source": {"rbd": RBD}, "method": "Fast"})
    with pytest.raises(ValidationError):
        ImageSnapshotSpec.model_validate({"source": {"rbd": RBD}, "deletionPolicy": "Keep"})


# --- conditions --------------------------------------------------------------------------------


def test_set_condition_adds_with_the_transition_time() -> None:
    conditions = set_condition([], READY, False, Reason.VOLUME_BUSY, "held by vrev/other", observed_generation=1, now=T0)
    (ready,) = conditions
    assert (ready.type, ready.status, ready.reason, ready.message) == (READY, ConditionStatus.FALSE, "VolumeBusy", "held by vrev/other")
    assert ready.last_transition_time == T0 and ready.observed_generation == 1
    assert ready.model_dump(mode="json", by_alias=True)["lastTransitionTime"] == "2025-01-01T00:00:00Z"


def test_set_condition_keeps_the_time_when_only_the_reason_changes() -> None:
    first = set_condition([], READY, False, Reason.VOLUME_BUSY, now=T0)
    second = set_condition(first, READY, False, Reason.VOLUME_IN_USE, "pod web-0 mounts it", now=T0 + timedelta(minutes=5))
    assert second[0].reason == "VolumeInUse" and second[0].message == "pod web-0 mounts it"
    assert second[0].last_transition_time == T0
    assert first[0].reason == "VolumeBusy", "the input list is not modified"


def test_set_condition_moves_the_time_when_the_status_changes() -> None:
    later = T0 + timedelta(hours=1)
    conditions = set_condition(set_condition([], READY, "Unknown", Reason.PENDING, now=T0), READY, True, Reason.SUCCEEDED, now=later)
    assert conditions[0].status == ConditionStatus.TRUE and conditions[0].last_transition_time == later


def test_set_condition_keeps_the_order_and_one_entry_per_type() -> None:
    conditions = initial_conditions(Reason.PENDING, now=T0)
    assert [c.type for c in conditions] == [READY, SUCCEEDED]
    assert all(c.status == ConditionStatus.UNKNOWN for c in conditions)
    conditions = set_condition(conditions, READY, True, Reason.SUCCEEDED, now=T0)
    conditions = set_condition(conditions, "Verified", True, Reason.SUCCEEDED, now=T0)
    assert [c.type for c in conditions] == [READY, SUCCEEDED, "Verified"]
    assert is_true(conditions, READY) and not is_true(conditions, SUCCEEDED) and not is_true(conditions, "Missing")
    assert find_condition(conditions, "Missing") is None
    assert len(initial_conditions(Reason.PENDING, one_shot=False)) == 1


def test_conditions_refuse_bad_reasons() -> None:
    with pytest.raises(ValidationError):
        set_condition([], READY, True, "not camel case", now=T0)


# --- reasons, phases, quantities ---------------------------------------------------------------


def test_reasons_are_camel_case_unique_and_explained() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    for reason in Reason:
        assert reason.value[0].isupper() and reason.value.isalnum(), reason
        assert reason.description.endswith("."), reason
        assert isinstance(reason.handling, Handling)
    assert Reason("SnapshotNotLatest").handling is Handling.FAIL
    assert Reason.VOLUME_IN_USE.handling is Handling.WAIT
    assert Reason.QUOTA_EXCEEDED == "QuotaExceeded"


def test_the_reasons_the_issues_name_exist() -> None:
    for name in ["VolumeBusy", "VolumeInUse", "SnapshotNotLatest", "SnapshotNotOfVolume", "SnapshotNotFound",
                 "SizeMismatch", "QuotaExceeded", "PvcNotFound", "ReferenceNotAllowed"]:
        assert Reason(name)


def test_settled_phases() -> None:
    assert is_settled("Succeeded") and is_settled("Available") and is_settled("Failed")
    assert not any(is_settled(p) for p in ["Pending", "Reverting", "Creating", "Deleting", "ErrorDeleting", None])


def test_quantities() -> None:
    assert to_quantity(10 << 30) == "10Gi"
    assert to_quantity(1536 << 20) == "1536Mi"
    assert to_quantity(1000) == "1000"
    assert to_quantity(0) == "0"
    assert to_bytes("1.5Gi") == 1536 << 20
    assert to_bytes("1k") == 1000
    assert to_bytes(to_quantity(123456789)) == 123456789
    with pytest.raises(ValueError):
        to_quantity(-1)
