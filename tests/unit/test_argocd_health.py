"""Argo CD health checks (manifests/argocd/health.lua), run with real Lua.

Argo CD runs health checks in gopher-lua (Lua 5.1) with ``obj`` as a global;
here lupa's Lua 5.1 runs the same file with only the base, table, string and
math libraries reachable (no os, io, require, load), against sample objects
for every phase of every kind (the phases come from the API's enums, so a new
phase fails this test until the script and the table below know it). The
sample objects are valid for the API models (``savepoint.api.parse``) and
carry the conditions the operator writes in that phase (operator/engine/context.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from savepoint.api import (
    KINDS,
    ImageSnapshotPhase,
    Reason,
    SavepointSchedulePhase,
    ShareBackupPhase,
    ShareRestorePhase,
    VolumeRevertPhase,
    parse,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "manifests" / "argocd" / "health.lua").read_text()

EXPECTED = {
    ("VolumeRevert", VolumeRevertPhase.PENDING): "Progressing",
    ("VolumeRevert", VolumeRevertPhase.REVERTING): "Progressing",
    ("VolumeRevert", VolumeRevertPhase.SUCCEEDED): "Healthy",
    ("VolumeRevert", VolumeRevertPhase.FAILED): "Degraded",
    ("ShareBackup", ShareBackupPhase.PENDING): "Progressing",
    ("ShareBackup", ShareBackupPhase.CREATING): "Progressing",
    ("ShareBackup", ShareBackupPhase.AVAILABLE): "Healthy",
    ("ShareBackup", ShareBackupPhase.RESTORING): "Healthy",
    ("ShareBackup", ShareBackupPhase.DELETING): "Progressing",
    ("ShareBackup", ShareBackupPhase.ERROR_DELETING): "Degraded",
    ("ShareBackup", ShareBackupPhase.FAILED): "Degraded",
    ("ShareRestore", ShareRestorePhase.PENDING): "Progressing",
    ("ShareRestore", ShareRestorePhase.RESTORING): "Progressing",
    ("ShareRestore", ShareRestorePhase.SUCCEEDED): "Healthy",
    ("ShareRestore", ShareRestorePhase.FAILED): "Degraded",
    ("ImageSnapshot", ImageSnapshotPhase.PENDING): "Progressing",
    ("ImageSnapshot", ImageSnapshotPhase.CREATING): "Progressing",
    ("ImageSnapshot", ImageSnapshotPhase.SUCCEEDED): "Healthy",
    ("ImageSnapshot", ImageSnapshotPhase.FAILED): "Degraded",
    ("ImageSnapshot", ImageSnapshotPhase.DELETING): "Progressing",
    ("ImageSnapshot", ImageSnapshotPhase.ERROR_DELETING): "Degraded",
    ("VolumeRevert", VolumeRevertPhase.ABORTING): "Progressing",
    ("ShareBackup", ShareBackupPhase.ABORTING): "Progressing",
    ("ShareRestore", ShareRestorePhase.ABORTING): "Progressing",
    ("ImageSnapshot", ImageSnapshotPhase.ABORTING): "Progressing",
    ("SavepointSchedule", SavepointSchedulePhase.ACTIVE): "Healthy",
    ("SavepointSchedule", SavepointSchedulePhase.SUSPENDED): "Suspended",
    ("SavepointSchedule", SavepointSchedulePhase.INVALID): "Degraded",
}
PHASE_ENUMS = {"VolumeRevert": VolumeRevertPhase, "ShareBackup": ShareBackupPhase,
               "ShareRestore": ShareRestorePhase, "ImageSnapshot": ImageSnapshotPhase,
               "SavepointSchedule": SavepointSchedulePhase}
# Reason, Ready status and Succeeded status the operator writes in each phase.
WORKING = ("InProgress", "False", "Unknown")
FINAL = {"Succeeded": ("Succeeded", "True", "True"), "Available": ("Available", "True", "True"),
         "Failed": ("SizeMismatch", "False", "False")}
PHASE_CONDITIONS = {"Pending": ("VolumeBusy", "False", "Unknown"), "Deleting": ("Deleting", "False", "Unknown"),
                    "ErrorDeleting": ("DeletionFailed", "False", "Unknown"), **FINAL,
                    "Restoring": ("InProgress", "False", "Unknown"),
                    # SavepointSchedule (a controller: no Succeeded summary of its own)
                    "Active": ("Scheduled", "True", "Unknown"), "Suspended": ("Suspended", "False", "Unknown"),
                    "Invalid": ("InvalidSpec", "False", "Unknown")}


def lua_check(obj: dict[str, Any]) -> dict[str, str]:
    """Run health.lua the way Argo CD does: ``obj`` global, result table with status and message."""
    from lupa import lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    for name in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring", "debug", "package"):
        lua.execute(f"{name} = nil")
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(SCRIPT)
    assert result is not None, "the script must return a table"
    return {k: result[k] for k in ("status", "message") if result[k] is not None}


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python data as Lua tables (lists 1-based), as Argo CD hands objects to scripts."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    return value


def example(kind: str) -> dict[str, Any]:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                doc = copy.deepcopy(doc)
                doc["metadata"].update(namespace="apps", uid="3f1c6c55-1b7e-4c35-9a55-0c2d9d7f0001", generation=1)
                return doc
    raise AssertionError(f"no example of {kind} in examples/")


def sample(kind: str, phase: str, reason: str | None = None, progress: int | None = None) -> dict[str, Any]:
    obj = example(kind)
    default_reason, ready, succeeded = PHASE_CONDITIONS.get(phase, WORKING)
    reason = reason or default_reason
    ts = "2026-01-01T00:00:00Z"
    obj["status"] = {
        "phase": phase,
        "message": f"message for {phase}",
        "observedGeneration": 1,
        "startTime": ts,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": f"message for {phase}",
             "observedGeneration": 1, "lastTransitionTime": ts},
            {"type": "Succeeded", "status": succeeded, "reason": reason, "message": f"message for {phase}",
             "observedGeneration": 1, "lastTransitionTime": ts},
        ],
    }
    if progress is not None:
        obj["status"]["progress"] = {"percent": progress, "bytesDone": progress, "bytesTotal": 100}
    parse(obj)  # a sample the API accepts, not a made-up shape
    return obj


def test_every_phase_of_every_kind_is_expected() -> None:
    assert {k.crd.kind for k in KINDS} == set(PHASE_ENUMS)
    listed = {(kind, phase) for kind, enum in PHASE_ENUMS.items() for phase in enum}
    assert listed == set(EXPECTED), "a phase was added or removed: update health.lua and EXPECTED"


@pytest.mark.parametrize(("kind", "phase"), sorted(EXPECTED), ids=lambda v: str(v))
def test_phase_maps_to_health(kind: str, phase: str) -> None:
    result = lua_check(sample(kind, phase))
    assert result["status"] == EXPECTED[(kind, phase)]
    reason = PHASE_CONDITIONS.get(phase, WORKING)[0]
    assert result["message"] == f"{reason}: message for {phase}"


@pytest.mark.parametrize("kind", sorted(PHASE_ENUMS))
def test_not_yet_picked_up_is_progressing(kind: str) -> None:
    obj = example(kind)
    assert lua_check(obj) == {"status": "Progressing", "message": "Waiting for the Savepoint operator to pick this up"}
    obj["status"] = {}
    assert lua_check(obj)["status"] == "Progressing"


def test_waiting_reasons() -> None:
    waits = [r for r in Reason if r.handling.value == "Wait"]
    assert Reason.VOLUME_IN_USE in waits and Reason.VOLUME_IN_ERROR_STATE in waits
    for reason in waits:
        result = lua_check(sample("VolumeRevert", "Pending", reason=str(reason)))
        want = {"VolumeInUse": "Suspended", "VolumeInErrorState": "Degraded"}.get(str(reason), "Progressing")
        assert result["status"] == want, reason
        assert result["message"].startswith(f"{reason}: ")


def test_failed_message_names_the_reason_and_progress_is_shown() -> None:
    failed = lua_check(sample("ShareRestore", "Failed", reason="TargetTooSmall"))
    assert failed == {"status": "Degraded", "message": "TargetTooSmall: message for Failed"}
    running = lua_check(sample("ShareBackup", "Creating", progress=42))
    assert running == {"status": "Progressing", "message": "InProgress: message for Creating (42%)"}


def test_unknown_phase_falls_back_to_conditions() -> None:
    """A newer operator's phase: Ready=True is Healthy, Succeeded=False is Degraded, else Progressing."""
    for ready, succeeded, want in (("True", "True", "Healthy"), ("False", "False", "Degraded"),
                                   ("False", "Unknown", "Progressing")):
        obj = sample("VolumeRevert", "Succeeded")
        obj["status"]["phase"] = "Verifying"
        obj["status"]["conditions"][0]["status"] = ready
        obj["status"]["conditions"][1]["status"] = succeeded
        assert lua_check(obj)["status"] == want


def test_argocd_cm_snippet_registers_the_script_for_every_kind() -> None:
    cm = yaml.safe_load((ROOT / "manifests" / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    keys = {f"resource.customizations.health.savepoint.dev_{k.crd.kind}" for k in KINDS}
    assert set(cm["data"]) == keys
    for key in keys:
        assert cm["data"][key] == SCRIPT, f"{key} is stale: run hack/render-manifests"


def test_a_schedule_whose_last_run_failed_is_degraded() -> None:
    obj = sample("SavepointSchedule", "Active")
    obj["status"]["conditions"].append({"type": "LastRunFailed", "status": "True", "reason": "VolumeBusy",
                                        "message": "app-data-hourly-20260101-000000: locked",
                                        "lastTransitionTime": "2026-01-01T00:00:00Z"})
    parse(obj)
    assert lua_check(obj) == {"status": "Degraded",
                              "message": "LastRunFailed: VolumeBusy: app-data-hourly-20260101-000000: locked"}
    obj["status"]["conditions"][-1]["status"] = "False"
    assert lua_check(obj)["status"] == "Healthy"
