"""SavepointSchedule's pure parts: whose child is whose, what a run's child looks like, the API model's rules."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from pydantic import ValidationError

from savepoint.api import SavepointScheduleSpec
from savepoint.flows.schedule_children import (
    ShareBackupChildren,
    Sched,
    VolumeSnapshotChildren,
)
from savepoint.retention import State
from savepoint.settings import Settings

pytestmark = pytest.mark.unit

S = Sched("apps", "nightly", "11111111-2222-3333-4444-555555555555")
SLOT = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)


def child(**meta: object) -> dict:
    obj = {"metadata": S.child_meta("nightly-20261201-023000", SLOT), "status": {"phase": "Available"}}
    obj["metadata"].update(meta)
    return obj


def test_a_child_is_ours_only_with_every_mark() -> None:
    assert S.owns(child())
    forged = child()
    del forged["metadata"]["annotations"]["savepoint.dev/created-by"]
    assert not S.owns(forged), "a label alone (which a tenant can write) is not ownership"
    assert not S.owns(child(namespace="other")), "never another namespace's object"
    assert not S.owns(child(name="weekly-20261201-023000")), "the name must be one of this schedule's slots"
    foreign = child()
    foreign["metadata"]["ownerReferences"] = []
    assert not S.owns(foreign)
    other = Sched("apps", "nightly", "99999999-2222-3333-4444-555555555555")
    assert not other.owns(child()), "a new schedule of the same name does not own the old one's children"


def test_sharebackup_child_spec_and_dependencies() -> None:
    spec = SavepointScheduleSpec.model_validate({"schedule": "@daily", "template": {"shareBackup": {
        "source": {"persistentVolumeClaim": {"name": "data"}}, "fullEvery": 7, "force": True}}})
    adapter = ShareBackupChildren(spec.template.share_backup, Settings())
    assert adapter.spec(False) == {"source": {"persistentVolumeClaim": {"name": "data"}}, "force": True,
                                   "incremental": False}
    running = child()
    running["status"] = {"phase": "Creating", "parentBackup": "nightly-20261130-023000"}
    c = adapter.to_child(S, running)
    assert c is not None and c.state == State.RUNNING and c.requires == {"nightly-20261130-023000"}
    done = adapter.to_child(S, child())
    assert done is not None and done.state == State.SUCCEEDED and not done.requires
    deleting = copy.deepcopy(running)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T03:00:00Z"
    assert adapter.to_child(S, deleting).state is None  # type: ignore[union-attr]


def test_volume_snapshot_states() -> None:
    spec = SavepointScheduleSpec.model_validate({"schedule": "@daily", "template": {"volumeSnapshot": {
        "persistentVolumeClaim": {"name": "data"}, "volumeSnapshotClassName": "csi-rbdplugin-snapclass"}}})
    adapter = VolumeSnapshotChildren(spec.template.volume_snapshot, Settings())
    assert adapter.spec(None) == {"source": {"persistentVolumeClaimName": "data"},
                                  "volumeSnapshotClassName": "csi-rbdplugin-snapclass"}
    for status, state in (({"readyToUse": True}, State.SUCCEEDED), ({}, State.RUNNING),
                          ({"error": {"message": "no driver"}}, State.FAILED)):
        obj = child()
        obj["status"] = status
        assert adapter.to_child(S, obj).state == state  # type: ignore[union-attr]


@pytest.mark.parametrize("spec", [
    {"schedule": "* * * * * *"},
    {"schedule": "@sometimes"},
    {"retention": {}},
    {"retention": {"maxAge": "soon"}},
    {"jitterSeconds": 7200},
    {"template": {}},
])
def test_model_refuses(spec: dict) -> None:
    base = {"schedule": "@hourly", "template": {"safePoint": {"persistentVolumeClaim": {"name": "a"}}}}
    with pytest.raises(ValidationError):
        SavepointScheduleSpec.model_validate({**base, **spec})
