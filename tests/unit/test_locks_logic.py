"""Lock and state decisions, pure: annotations in, the annotation patch (or a refusal) out."""

from __future__ import annotations

import pytest
from savepoint.api import Reason
from savepoint.kube.locks import (
    LOCK,
    LOCK_UID,
    PREVIOUS_STATE,
    STATE,
    VOLUME_SNAPSHOT,
    Busy,
    Holder,
    InErrorState,
    holder,
    holder_from,
    is_error_state,
    plan_acquire,
    plan_release,
    plan_reset,
    state_of,
)
from savepoint.kube.references import RefusedError

pytestmark = pytest.mark.unit

ME = Holder("VolumeRevert", "revert-1", "uid-me")
OTHER = Holder("ShareBackup", "nightly", "uid-other")


def locked_by(h: Holder, state: str = "backup-creating", previous: str = "") -> dict[str, str]:
    return {LOCK: f"{h.kind}/{h.name}", LOCK_UID: h.uid, STATE: state, PREVIOUS_STATE: previous}


def alive(_: Holder) -> bool:
    return True


def dead(_: Holder) -> bool:
    return False


def never_asked(h: Holder) -> bool:
    raise AssertionError(f"liveness of {h} must not be checked")


def test_free_volume_is_taken_and_remembers_available() -> None:
    changes, got = plan_acquire({"unrelated": "x"}, ME, "reverting", never_asked)
    assert changes == {LOCK: "VolumeRevert/revert-1", LOCK_UID: "uid-me", STATE: "reverting", PREVIOUS_STATE: ""}
    assert got.newly_acquired and got.previous_state == "" and got.took_over_from is None


def test_same_holder_again_is_idempotent() -> None:
    annotations = locked_by(ME, "reverting")
    changes, got = plan_acquire(annotations, ME, "reverting", never_asked)
    assert changes is None and not got.newly_acquired
    changes, _ = plan_acquire(annotations, ME, "backup-creating", never_asked)
    assert changes == {STATE: "backup-creating"}  # only the state moves, the remembered state stays


def test_live_other_holder_means_busy() -> None:
    with pytest.raises(Busy) as err:
        plan_acquire(locked_by(OTHER), ME, "reverting", alive, name="data")
    assert err.value.reason == Reason.VOLUME_BUSY and err.value.waiting
    assert err.value.holder == OTHER and "ShareBackup/nightly" in err.value.message


def test_same_name_other_uid_is_another_holder() -> None:
    older = Holder(ME.kind, ME.name, "uid-of-a-deleted-namesake")
    asked: list[Holder] = []
    changes, got = plan_acquire(locked_by(older, "reverting"), ME, "reverting", lambda h: asked.append(h) or False)
    assert asked == [older] and got.took_over_from == older and changes is not None


def test_stale_lock_is_taken_over_and_reported() -> None:
    changes, got = plan_acquire(locked_by(OTHER, "backup-creating", previous=""), ME, "reverting", dead)
    assert changes == {LOCK: "VolumeRevert/revert-1", LOCK_UID: "uid-me", STATE: "reverting", PREVIOUS_STATE: ""}
    assert got.took_over_from == OTHER and got.stale_state == "backup-creating" and got.newly_acquired


@pytest.mark.parametrize("state", ["error", "backup-restoring-error", "backup-creating-error"])
def test_error_state_blocks_until_reset(state: str) -> None:
    with pytest.raises(InErrorState) as err:
        plan_acquire({STATE: state}, ME, "reverting", never_asked, name="data")
    assert err.value.reason == Reason.VOLUME_IN_ERROR_STATE and err.value.waiting and err.value.state == state
    assert "kubectl savepoint reset-state pvc/data" in err.value.message
    assert f"kubectl annotate pvc data {STATE}-" in err.value.message


def test_error_state_under_a_stale_lock_still_blocks() -> None:
    with pytest.raises(RefusedError) as err:
        plan_acquire(locked_by(OTHER, "reverting", previous="error"), ME, "reverting", dead)
    assert err.value.reason == Reason.VOLUME_IN_ERROR_STATE


def test_snapshot_messages_name_the_snapshot() -> None:
    with pytest.raises(RefusedError) as err:
        plan_acquire({STATE: "error"}, ME, "restoring", never_asked, resource=VOLUME_SNAPSHOT, name="snap-1")
    assert "VolumeSnapshot snap-1" in err.value.message and "reset-state volumesnapshot/snap-1" in err.value.message


def test_hand_written_lock_is_never_stolen_and_says_how_to_clear_it() -> None:
    annotations = {LOCK: "maintenance"}
    assert holder_from(annotations) == Holder("", "maintenance", "")
    with pytest.raises(Busy) as err:
        plan_acquire(annotations, ME, "reverting", alive, name="data")
    assert f"kubectl annotate pvc data {LOCK}-" in err.value.message


def test_release_restores_the_previous_state() -> None:
    assert plan_release(locked_by(ME, "reverting", previous=""), ME) == {
        LOCK: None, LOCK_UID: None, PREVIOUS_STATE: None, STATE: None}
    assert plan_release(locked_by(ME, "reverting", previous="maintenance"), ME)[STATE] == "maintenance"  # type: ignore[index]


def test_release_with_error_leaves_the_error_state() -> None:
    assert plan_release(locked_by(ME, "backup-restoring"), ME, "backup-restoring-error") == {
        LOCK: None, LOCK_UID: None, PREVIOUS_STATE: None, STATE: "backup-restoring-error"}
    with pytest.raises(ValueError):
        plan_release(locked_by(ME), ME, "broken")


def test_release_by_a_non_holder_does_nothing() -> None:
    assert plan_release(locked_by(OTHER), ME) is None
    assert plan_release({}, ME, "error") is None
    assert plan_release({STATE: "error"}, ME) is None


def test_reset_clears_state_and_stale_locks_but_not_live_ones() -> None:
    assert plan_reset({STATE: "error", "keep": "me"}, never_asked) == {STATE: None}
    assert plan_reset({}, never_asked) is None
    stale = locked_by(OTHER, "reverting")
    assert plan_reset(stale, dead) == {LOCK: None, LOCK_UID: None, STATE: None, PREVIOUS_STATE: None}
    with pytest.raises(Busy):
        plan_reset(stale, alive)
    assert plan_reset(stale, never_asked, force=True) == {LOCK: None, LOCK_UID: None, STATE: None, PREVIOUS_STATE: None}


def test_helpers() -> None:
    obj = {"metadata": {"annotations": locked_by(OTHER, "backup-creating")}}
    assert holder(obj) == OTHER and tuple(holder(obj)) == ("ShareBackup", "nightly", "uid-other")  # type: ignore[arg-type]
    assert str(OTHER) == "ShareBackup/nightly"
    assert state_of(obj) == "backup-creating" and state_of({"metadata": {}}) == ""
    assert holder({"metadata": {"annotations": None}}) is None
    assert is_error_state("error") and is_error_state("backup-restoring-error")
    assert not is_error_state("") and not is_error_state(None) and not is_error_state("reverting")
