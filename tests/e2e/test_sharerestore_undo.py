"""ShareRestore after its lock: every ending goes through the undo (engine/steps.py).

A deadline passing while the restore waits for a mover slot ends it through the undo (target released,
the backup Available, "nothing was written"); deleting it while it waits for a slot writes nothing and
leaves no error state (before the step runner it left ``backup-restoring-error`` on a claim nothing had
touched); an operator killed in the middle of the undo of a half-written restore finishes it after a
restart (the error state kept and named, the backup given back).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import trees
from helpers.kube import phase_in, reason_is, wait_custom, wait_gone
from helpers.movers import OPERATOR_NAMESPACE
from kubernetes import client
from savepoint.engine import movers
from test_sharebackup import (
    Env,
    backed_up,
    create_backup,
    create_restore,
    live_jobs,
    ready_reason,
    restored,
    savepoint_annotations,
)

pytestmark = pytest.mark.e2e
G, V = "savepoint.dev", "v1alpha1"


@pytest.fixture
def crash_env(kube: Any, crash_harness: Any) -> Iterator[Env]:
    e = Env(kube, crash_harness.namespace)
    yield e
    e.cleanup()


@pytest.fixture
def full_mover_slots(crash_harness: Any) -> Iterator[None]:
    """A mover of another namespace that never gets a node: with one slot, every new mover waits."""
    occupant = f"occupant-{crash_harness.namespace}"
    batch = client.BatchV1Api()
    batch.create_namespaced_job(OPERATOR_NAMESPACE, {
        "metadata": {"name": occupant, "labels": {movers.MOVER_LABEL: "true", movers.OWNER_NAMESPACE_LABEL: "other"}},
        "spec": {"template": {"spec": {"schedulerName": "not-running", "restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "x", "command": ["true"]}]}}}})
    yield
    batch.delete_namespaced_job(occupant, OPERATOR_NAMESPACE, propagation_policy="Background")


def backup_of_changed_share(crash_harness: Any, crash_env: Env) -> tuple[Any, dict[str, Any]]:
    """A share backed up (``monday``), then changed; the operator stopped again. Returns (share, snapshot)."""
    data, _ = crash_env.share("data"), crash_env.share("repo", "4Gi")
    trees.make_tree(data.dir)
    crash_harness.start()
    create_backup(crash_harness.api, crash_harness.namespace, "monday")
    assert backed_up(crash_harness.api, crash_harness.namespace, "monday")["status"]["phase"] == "Available"
    crash_harness.stop()
    trees.change_tree(data.dir)
    return data, trees.snapshot(data.dir)


def assert_backup_available(api: Any, namespace: str) -> None:
    backup = api.get_namespaced_custom_object(G, V, namespace, "sharebackups", "monday")
    assert backup["status"]["phase"] == "Available", backup["status"]
    assert "savepoint.dev/lock" not in (backup["metadata"].get("annotations") or {}), backup["metadata"]


def test_a_deadline_passing_in_the_mover_queue_ends_through_the_undo(kube: Any, crash_harness: Any, crash_env: Env,
                                                                     full_mover_slots: None) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, changed = backup_of_changed_share(crash_harness, crash_env)
    crash_harness.start(SAVEPOINT_MOVER_CONCURRENCY="1")
    create_restore(api, namespace, "queued", "monday", deadlineSeconds=25)
    waiting = wait_custom(api, namespace, "sharerestores", "queued", reason_is("MoverLimit"), 60)
    assert waiting["status"]["phase"] == "Restoring", waiting["status"]
    held = savepoint_annotations(namespace, "data")
    assert held.get("savepoint.dev/lock") == "ShareRestore/queued", held
    assert held.get("savepoint.dev/state") == "backup-restoring", held
    out = restored(api, namespace, "queued", timeout=90)
    assert out["status"]["phase"] == "Failed" and ready_reason(out) == "DeadlineExceeded", out["status"]
    assert "nothing was written to data" in out["status"]["message"], out["status"]["message"]
    assert "abort" not in out["status"] and "moverJob" not in out["status"], out["status"]
    assert savepoint_annotations(namespace, "data") == {}, "the lock must be released, with no error state"
    assert_backup_available(api, namespace)
    assert live_jobs(namespace) == []
    assert trees.diff(changed, trees.snapshot(data.dir)) == []


def test_deleted_while_waiting_for_a_mover_slot_writes_nothing_and_leaves_no_error_state(
        kube: Any, crash_harness: Any, crash_env: Env, full_mover_slots: None) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, changed = backup_of_changed_share(crash_harness, crash_env)
    crash_harness.start(SAVEPOINT_MOVER_CONCURRENCY="1")
    create_restore(api, namespace, "queued", "monday")
    wait_custom(api, namespace, "sharerestores", "queued", reason_is("MoverLimit"), 60)
    api.delete_namespaced_custom_object(G, V, namespace, "sharerestores", "queued")
    wait_gone(lambda: api.get_namespaced_custom_object(G, V, namespace, "sharerestores", "queued"), timeout=60)
    assert savepoint_annotations(namespace, "data") == {}, "nothing was written: no lock, no error state"
    assert_backup_available(api, namespace)
    assert live_jobs(namespace) == []
    assert trees.diff(changed, trees.snapshot(data.dir)) == []


def test_killed_during_the_undo_of_a_half_written_restore_finishes_it(kube: Any, crash_harness: Any,
                                                                      crash_env: Env) -> None:
    namespace, api = crash_harness.namespace, crash_harness.api
    data, _ = backup_of_changed_share(crash_harness, crash_env)
    pinned = data.dir / "new-file.txt"  # not in the backup: deleteExtraFiles must remove it, and cannot
    subprocess.run(["chattr", "+i", str(pinned)], check=True)
    try:
        crashing = crash_harness.start(crash_at="ShareRestore:Locked:undo")  # the mover's undo ran, not the lock's
        create_restore(api, namespace, "half", "monday")
        crash_harness.wait_crashed(crashing)
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
    midway = api.get_namespaced_custom_object(G, V, namespace, "sharerestores", "half")
    assert midway["status"]["phase"] == "Aborting", midway["status"]
    assert midway["status"]["abort"]["dataTouched"] is True and midway["status"]["abort"]["reason"] == "MoverFailed"
    assert savepoint_annotations(namespace, "data")["savepoint.dev/lock"] == "ShareRestore/half"
    crash_harness.start()
    out = wait_custom(api, namespace, "sharerestores", "half", phase_in("Succeeded", "Failed"), 120)
    assert ready_reason(out) == "MoverFailed", out["status"]
    assert "backup-restoring-error" in out["status"]["message"] and "reset-state pvc/data" in out["status"]["message"]
    assert "abort" not in out["status"], out["status"]
    assert savepoint_annotations(namespace, "data") == {"savepoint.dev/state": "backup-restoring-error"}
    assert_backup_available(api, namespace)
    assert live_jobs(namespace) == []
