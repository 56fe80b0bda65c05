"""The PVC lock and state annotations on the sandbox's real API server.

Holders are real Savepoint CRs (VolumeRevert, ShareBackup) created from the
generated CRDs; no operator runs here, so they stay inert while the test
locks and unlocks on their behalf.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import kube_config
from savepoint.kube import k8s, locks
from savepoint.api import Reason
from savepoint.kube.locks import (
    LOCK,
    LOCK_UID,
    PREVIOUS_STATE,
    STATE,
    VOLUME_SNAPSHOT,
    Acquired,
    Busy,
    Holder,
    acquire,
    holder,
    mark_snapshot,
    release,
    reset_state,
    unmark_snapshot,
)
from savepoint.kube.references import SNAPSHOT_GROUP, SNAPSHOT_VERSION, RefusedError, as_dict

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RACES = 20
RACERS = 4


@pytest.fixture(scope="module")
def api(kube: Any) -> Any:
    """The sandbox with the CRDs applied, and savepoint.kube.k8s pointed at its kubeconfig.

    The kubernetes package reads KUBECONFIG when it is imported, before the
    ``kube`` fixture sets it; ``k8s.api_client()`` loads that default.
    """
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kube.kubeconfig)
    kubectl = [str(kube.bin / "kubectl"), "--kubeconfig", str(kube.kubeconfig)]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "--field-manager=locks-test",
                    "-f", str(ROOT / "crds")], check=True, capture_output=True, timeout=120)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{plural}.{k8s.GROUP}" for plural in k8s.PLURALS.values())],
                   check=True, capture_output=True, timeout=120)
    return kube


@pytest.fixture
def ns(api: Any) -> Iterator[str]:
    name = f"locks-{uuid.uuid4().hex[:8]}"
    k8s.core().create_namespace({"metadata": {"name": name}})
    yield name
    k8s.core().delete_namespace(name)


def make_pvc(namespace: str, name: str = "data", annotations: dict[str, str] | None = None) -> str:
    """An unbound claim is enough: the lock lives in its annotations."""
    k8s.core().create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}},
    })
    return name


SPECS = {
    "VolumeRevert": lambda pvc: {"volume": {"persistentVolumeClaim": {"name": pvc}}, "snapshot": {"rbdSnapshot": "s1"}},
    "ShareBackup": lambda pvc: {"source": {"persistentVolumeClaim": {"name": pvc}}},
}


def make_owner(namespace: str, name: str, kind: str = "VolumeRevert", pvc: str = "data") -> k8s.Owner:
    """A real Savepoint CR to hold locks."""
    body = k8s.custom().create_namespaced_custom_object(k8s.GROUP, k8s.VERSION, namespace, k8s.PLURALS[kind], {
        "apiVersion": k8s.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": SPECS[kind](pvc)})
    return k8s.Owner.of(body)


def delete_owner(owner: k8s.Owner) -> None:
    k8s.custom().delete_namespaced_custom_object(k8s.GROUP, k8s.VERSION, owner.namespace, owner.plural, owner.name)


def annotations(namespace: str, name: str = "data") -> dict[str, str]:
    pvc = as_dict(k8s.core().read_namespaced_persistent_volume_claim(name, namespace))
    return {k: v for k, v in (pvc["metadata"].get("annotations") or {}).items() if k.startswith("savepoint.dev/")}


def refused(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RefusedError:
    with pytest.raises(RefusedError) as err:
        fn(*args, **kwargs)
    return err.value


# ---- mutual exclusion ---------------------------------------------------------------------------


def race_for(owners: list[k8s.Owner], namespace: str, pvc: str) -> list[Acquired | BaseException]:
    """Every owner tries to lock ``pvc`` at once, each from its own thread."""
    start = threading.Barrier(len(owners))
    results: list[Acquired | BaseException] = [RuntimeError("did not run")] * len(owners)

    def run(i: int) -> None:
        start.wait()  # all read the same unlocked version, then race to write it
        try:
            results[i] = acquire(owners[i], namespace, pvc, "reverting")
        except BaseException as exc:  # noqa: BLE001 - collected and checked by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(owners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_racing_owners_exactly_one_wins(ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conflicts: list[str] = []
    write = locks._write

    def counting_write(*args: Any) -> bool:  # a spy on our own write: the API server stays real
        done = write(*args)
        if not done:
            conflicts.append(args[2])
        return done

    monkeypatch.setattr(locks, "_write", counting_write)
    kinds = list(SPECS)
    owners = [make_owner(ns, f"racer-{i}", kinds[i % len(kinds)]) for i in range(RACERS)]
    for race in range(RACES):
        pvc = make_pvc(ns, f"data-{race}")
        results = race_for(owners, ns, pvc)
        winners = [i for i, r in enumerate(results) if isinstance(r, Acquired)]
        losers = [r for r in results if not isinstance(r, Acquired)]
        assert len(winners) == 1, f"race {race}: {results}"
        assert all(isinstance(r, Busy) and r.holder == Holder.of(owners[winners[0]]) for r in losers), losers
        assert annotations(ns, pvc)[LOCK_UID] == owners[winners[0]].uid
    # The API server refused stale writes (409) along the way: the race was real, not serialized.
    assert conflicts, "no write ever conflicted; the racers did not overlap"


def test_same_holder_acquires_again_idempotently(ns: str) -> None:
    make_pvc(ns)
    owner = make_owner(ns, "revert")
    first = acquire(owner, ns, "data", "reverting")
    again = acquire(owner, ns, "data", "reverting")
    assert first.newly_acquired and not again.newly_acquired
    assert annotations(ns) == {LOCK: "VolumeRevert/revert", LOCK_UID: owner.uid, STATE: "reverting", PREVIOUS_STATE: ""}
    pvc = as_dict(k8s.core().read_namespaced_persistent_volume_claim("data", ns))
    assert holder(pvc) == ("VolumeRevert", "revert", owner.uid)


def test_release_restores_the_previous_state(ns: str) -> None:
    make_pvc(ns, annotations={STATE: "maintenance", "team": "db"})
    owner = make_owner(ns, "backup", "ShareBackup")
    got = acquire(owner, ns, "data", "backup-creating")
    assert got.previous_state == "maintenance" and annotations(ns)[STATE] == "backup-creating"
    assert release(owner, ns, "data")
    assert annotations(ns) == {STATE: "maintenance"}
    assert not release(owner, ns, "data")  # idempotent


def test_release_to_available_removes_every_annotation(ns: str) -> None:
    make_pvc(ns)
    owner = make_owner(ns, "revert")
    acquire(owner, ns, "data", "reverting")
    assert release(owner, ns, "data")
    assert annotations(ns) == {}


def test_only_the_holder_releases(ns: str) -> None:
    make_pvc(ns)
    holder_cr, other = make_owner(ns, "holder"), make_owner(ns, "other")
    acquire(holder_cr, ns, "data", "reverting")
    assert not release(other, ns, "data", error_state="error")
    assert annotations(ns)[LOCK_UID] == holder_cr.uid and annotations(ns)[STATE] == "reverting"


def _held_here(namespace: str, pvc: str = "data") -> bool:
    """Whether this process counts the lock as its own (``savepoint_locks_held``)."""
    return (namespace, pvc) in locks._held


def test_another_owners_release_leaves_the_holders_count(ns: str) -> None:
    make_pvc(ns)
    holder_cr, waiter = make_owner(ns, "holder"), make_owner(ns, "waiter")
    acquire(holder_cr, ns, "data", "reverting")
    assert not release(waiter, ns, "data")  # e.g. a waiting action deleted: it held nothing
    assert _held_here(ns)
    assert release(holder_cr, ns, "data")
    assert not _held_here(ns)


def test_a_lock_reset_by_an_admin_is_held_no_more(ns: str) -> None:
    make_pvc(ns)
    owner = make_owner(ns, "working")
    acquire(owner, ns, "data", "reverting")
    assert reset_state(ns, "data", force=True) == "reverting"
    assert not release(owner, ns, "data")  # nothing left to give back
    assert not _held_here(ns), "a lock this process no longer holds still counts in savepoint_locks_held"
    assert ("persistentvolumeclaims", ns, "data") not in locks._written


def test_release_of_a_missing_pvc_is_fine(ns: str) -> None:
    assert not release(make_owner(ns, "revert"), ns, "never-existed")


def test_error_state_blocks_until_reset(ns: str) -> None:
    make_pvc(ns)
    failed, next_one = make_owner(ns, "failed"), make_owner(ns, "next", "ShareBackup")
    acquire(failed, ns, "data", "backup-restoring")
    assert release(failed, ns, "data", error_state="backup-restoring-error")
    assert annotations(ns) == {STATE: "backup-restoring-error"}
    err = refused(acquire, next_one, ns, "data", "backup-creating")
    assert err.reason == Reason.VOLUME_IN_ERROR_STATE and err.waiting
    assert "kubectl savepoint reset-state pvc/data" in err.message
    err = refused(acquire, failed, ns, "data", "backup-restoring")  # the failed CR itself is no exception
    assert err.reason == Reason.VOLUME_IN_ERROR_STATE
    assert reset_state(ns, "data") == "backup-restoring-error"
    assert reset_state(ns, "data") is None
    assert acquire(next_one, ns, "data", "backup-creating").newly_acquired


def test_reset_leaves_a_live_lock_unless_forced(ns: str) -> None:
    make_pvc(ns)
    owner = make_owner(ns, "working")
    acquire(owner, ns, "data", "reverting")
    assert isinstance(refused(reset_state, ns, "data"), Busy)
    assert reset_state(ns, "data", force=True) == "reverting"
    assert annotations(ns) == {}


def test_busy_names_the_live_holder(ns: str) -> None:
    make_pvc(ns)
    first, second = make_owner(ns, "first", "ShareBackup"), make_owner(ns, "second")
    acquire(first, ns, "data", "backup-creating")
    err = refused(acquire, second, ns, "data", "reverting")
    assert isinstance(err, Busy) and err.reason == Reason.VOLUME_BUSY and err.waiting
    assert "ShareBackup/first" in err.message


def test_acquire_of_a_missing_pvc_is_final(ns: str) -> None:
    err = refused(acquire, make_owner(ns, "revert"), ns, "never-existed", "reverting")
    assert err.reason == Reason.PVC_NOT_FOUND and err.final


# ---- stale locks --------------------------------------------------------------------------------


def test_lock_of_a_deleted_holder_is_taken_over(ns: str) -> None:
    make_pvc(ns)
    gone, successor = make_owner(ns, "gone", "ShareBackup"), make_owner(ns, "successor")
    acquire(gone, ns, "data", "backup-creating")
    delete_owner(gone)
    got = acquire(successor, ns, "data", "reverting")
    assert got.took_over_from == Holder.of(gone) and got.stale_state == "backup-creating"
    assert got.previous_state == ""  # what the dead holder had found, not its own state
    assert annotations(ns)[LOCK] == "VolumeRevert/successor"
    assert release(successor, ns, "data") and annotations(ns) == {}


def test_lock_of_a_recreated_namesake_is_stale(ns: str) -> None:
    make_pvc(ns)
    original = make_owner(ns, "nightly", "ShareBackup")
    acquire(original, ns, "data", "backup-creating")
    delete_owner(original)
    namesake = make_owner(ns, "nightly", "ShareBackup")  # same name, new uid: a different action
    assert namesake.uid != original.uid
    got = acquire(namesake, ns, "data", "backup-creating")
    assert got.newly_acquired and got.took_over_from == Holder.of(original)
    assert annotations(ns)[LOCK_UID] == namesake.uid


# ---- VolumeSnapshot state (the seed's snapshot "restoring") -------------------------------------


def test_volume_snapshot_restoring_state(ns: str) -> None:
    k8s.custom().create_namespaced_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, ns, "volumesnapshots", {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}", "kind": "VolumeSnapshot", "metadata": {"name": "snap"},
        "spec": {"volumeSnapshotClassName": "csi-rbdplugin-snapclass", "source": {"persistentVolumeClaimName": "data"}}})
    revert, other = make_owner(ns, "revert"), make_owner(ns, "other")
    assert mark_snapshot(revert, ns, "snap", "restoring").newly_acquired
    err = refused(acquire, other, ns, "snap", "restoring", resource=VOLUME_SNAPSHOT)
    assert isinstance(err, Busy) and "VolumeSnapshot snap" in err.message

    def snapshot_annotations() -> dict[str, str]:
        vs = k8s.custom().get_namespaced_custom_object(SNAPSHOT_GROUP, SNAPSHOT_VERSION, ns, "volumesnapshots", "snap")
        return dict(vs["metadata"].get("annotations") or {})

    assert snapshot_annotations()[STATE] == "restoring"
    assert unmark_snapshot(revert, ns, "snap")  # the seed: a failed revert leaves it available
    assert snapshot_annotations() == {}
    err = refused(acquire, other, ns, "missing", "restoring", resource=VOLUME_SNAPSHOT)
    assert err.reason == Reason.SNAPSHOT_NOT_FOUND
