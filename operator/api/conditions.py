"""Condition helpers: plain functions over lists of ``Condition`` (no kopf, no client).

``lastTransitionTime`` moves only when a condition's ``status`` changes, as the
API conventions require, so "since when is it failing?" stays answerable
however often the operator rewrites the reason or message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from savepoint.api.status import Condition, ConditionStatus

READY = "Ready"
"""The resource's result is usable (revert done, backup available, image made)."""

SUCCEEDED = "Succeeded"
"""Summary of a one-shot action: Unknown while running, then True or False."""


def utcnow() -> datetime:
    """Now, in UTC, to the second (what ``metav1.Time`` keeps)."""
    return datetime.now(UTC).replace(microsecond=0)


def _status(value: ConditionStatus | bool | str) -> ConditionStatus:
    if isinstance(value, bool):
        return ConditionStatus.TRUE if value else ConditionStatus.FALSE
    return ConditionStatus(value)


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.status == ConditionStatus.TRUE


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus | bool | str,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime | None = None,
) -> list[Condition]:
    """A new list with ``type_`` added or updated; the input is left untouched.

    Order is kept (a new type is appended), so a patch of the list does not
    reshuffle what ``kubectl describe`` shows.
    """
    new_status = _status(status)
    previous = find_condition(conditions, type_)
    if previous is None or previous.status != new_status:
        transition = now or utcnow()
    else:
        transition = previous.last_transition_time
    condition = Condition(
        type=type_,
        status=new_status,
        reason=str(reason),
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    if previous is None:
        return [*conditions, condition]
    return [condition if c.type == type_ else c for c in conditions]


def initial_conditions(
    reason: str, message: str = "", *, one_shot: bool = True, observed_generation: int | None = None, now: datetime | None = None
) -> list[Condition]:
    """Conditions on first sight: ``Ready`` (and ``Succeeded`` for one-shot kinds) as Unknown."""
    at = now or utcnow()
    conditions = set_condition([], READY, ConditionStatus.UNKNOWN, reason, message, observed_generation=observed_generation, now=at)
    if one_shot:
        conditions = set_condition(
            conditions, SUCCEEDED, ConditionStatus.UNKNOWN, reason, message, observed_generation=observed_generation, now=at
        )
    return conditions
