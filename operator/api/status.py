"""The status every Savepoint resource reports, following Kubernetes API conventions.

`conditions` are the truth (`Ready` always, `Succeeded` for one-shot
actions); `phase` is a summary for `kubectl get`. Names of temporary objects
are recorded *before* the objects are created, so an operator restarted at any
point finds and removes them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Generic, TypeVar

from pydantic import Field, StringConstraints

from savepoint.api.base import StatusModel
from savepoint.api.types import Count, Message, ObjectName, ShortText

# metav1.Condition's own constraints, so a condition written here is valid anywhere.
CONDITION_TYPE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
ConditionType = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=316,
        pattern=CONDITION_TYPE_PATTERN,
    ),
]
ConditionReason = Annotated[
    str, StringConstraints(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)
]


class ConditionStatus(StrEnum):
    """Whether a condition holds; `Unknown` while it cannot be told yet."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One observation about the resource (Kubernetes `metav1.Condition`)."""

    type: ConditionType
    """What the condition is about, in CamelCase: `Ready`, `Succeeded`."""

    status: ConditionStatus
    """`True`, `False` or `Unknown`."""

    reason: ConditionReason
    """Why, in one CamelCase word (see the reasons table): stable, for tools and alerts."""

    message: Message = ""
    """Why, for people: what happened and what to do about it."""

    observed_generation: Count | None = None
    """The `metadata.generation` this condition was computed from."""

    last_transition_time: datetime
    """When `status` last changed (not when the condition was last written)."""


class AbortStatus(StatusModel):
    """Why a flow is undoing its steps (phase Aborting); recorded first, so a restart finishes the undo."""

    reason: ShortText
    """The reason the action is failing (the final `Ready` reason)."""

    message: Message
    """What went wrong."""

    step: ShortText
    """The step that had begun when it failed (then every step's undo runs, the last step's first)."""

    data_touched: bool = False
    """Whether the data step may have half-run (then the data is put back and the volume marked `error`)."""


class Progress(StatusModel):
    """How far a data-moving step is; updated while a mover runs."""

    percent: Annotated[int, Field(ge=0, le=100)] = 0
    """Done, in percent (0-100)."""

    bytes_done: Count = 0
    """Bytes processed so far."""

    bytes_total: Count | None = None
    """Bytes to process in total, when known."""

    files: Count | None = None
    """Files processed so far, for file-tree movers."""


PhaseT = TypeVar("PhaseT", bound=StrEnum)


class StatusBase(StatusModel, Generic[PhaseT]):
    """Fields every kind's status has; each kind adds its phases and temporary objects."""

    phase: PhaseT | None = None
    """Summary of where the action is, for `kubectl get`; conditions carry the details."""

    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Current conditions: `Ready` always, `Succeeded` once the action has ended."""

    observed_generation: Count | None = None
    """The `metadata.generation` the operator last acted on."""

    start_time: datetime | None = None
    """When the operator started working on this resource."""

    completion_time: datetime | None = None
    """When the action ended (successfully or not)."""

    progress: Progress | None = None
    """Progress of the data-moving step, while there is one."""

    message: Message | None = None
    """The latest human-readable summary (same as the `Ready` condition's message)."""

    source: ShortText | None = None
    """What the action works on, resolved, for people: `pvc/NAME`, `rbd:POOL/IMAGE` or `nfs:SERVER:/PATH`."""

    step: ShortText | None = None
    """The last step of the flow that completed; an operator restarted at any point resumes after it."""

    mover_job: ObjectName | None = None
    """Name of the mover Job copying data for this resource (temporary, removed when done)."""

    running: ShortText | None = None
    """The data-moving step that has begun (set before it may write): an abort from here puts the data back."""

    abort: AbortStatus | None = None
    """While phase is Aborting: why, and at which step it failed."""


SETTLED_PHASES = frozenset({"Succeeded", "Available", "Failed"})
"""Phases in which nothing runs; a resource in any other phase is adopted after an operator restart."""


def is_settled(phase: str | None) -> bool:
    return phase in SETTLED_PHASES
