"""SavepointSchedule: take ShareBackups, safe-point snapshots, VolumeSnapshots or ImageSnapshots on a
cron schedule and prune them with restic-``forget`` retention (issue 14).

Named ``SavepointSchedule`` (short ``spsched``), not ``Schedule``: ``kubectl get schedules`` would be
ambiguous in clusters that run Velero (``schedules.velero.io``) or k8up (``schedules.k8up.io``), and
``SnapshotSchedule`` is snapscheduler's. ``kubectl get savepoint`` lists it with the other kinds.

Unlike the four one-shot kinds its spec is *mutable* (suspend, resume, change the retention): a schedule
is a controller, like a CronJob, not an action.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from savepoint.api.base import ApiModel, ExactlyOne, StatusModel, cel
from savepoint.api.imagesnapshot import DeletionPolicy, ImageDestination, ImageMethod
from savepoint.api.refs import PersistentVolumeClaimRef, RepositoryRef, ShareSource, VolumeSource
from savepoint.api.resource import AGE_COLUMN, MESSAGE_COLUMN, REASON_COLUMN, CrdInfo, CustomResource, PrinterColumn
from savepoint.api.status import StatusBase
from savepoint.api.types import Count, DeadlineSeconds, Message, ObjectName, ShortText

# What `schedule` may look like; the operator parses it for real (savepoint.cron) and reports InvalidSpec.
SCHEDULE_PATTERN = (r"^(@(hourly|daily|midnight|weekly|monthly|yearly|annually)"
                    r"|@every [1-9][0-9]{0,6}(s|m|h)"
                    r"|[0-9*,/?LW#A-Za-z-]+( [0-9*,/?LW#A-Za-z-]+){4})$")
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"
DURATION_PATTERN = r"^([0-9]{1,6}[smhdwy])+$"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}

ScheduleText = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=SCHEDULE_PATTERN)]
TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN)]
Duration = Annotated[str, StringConstraints(min_length=2, max_length=32, pattern=DURATION_PATTERN)]
Keep = Annotated[int, Field(ge=0, le=10000)]

SCHEDULE_NAME_MAX_LENGTH = 47
"""Children are named ``<schedule>-<YYYYMMDD>-<HHMMSS>`` (16 more characters) and must stay DNS-1123 labels."""


def duration_seconds(text: str) -> int:
    """``"1d12h"`` → 129600 (units s, m, h, d, w, y = 365 d)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h or 1w2d")
    return sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"([0-9]+)([smhdwy])", text))


class ConcurrencyPolicy(StrEnum):
    """Forbid: a run waits while the previous child still runs (and says so); Allow: runs may overlap."""

    FORBID = "Forbid"
    ALLOW = "Allow"


class ShareBackupTemplate(ApiModel):
    """Each run creates a ShareBackup of ``source``; incrementals chain onto the previous backup of the source."""

    source: ShareSource
    """The share or volume to back up (a PVC of this namespace; raw references only where admins allow them)."""

    repository: RepositoryRef | None = None
    """Where to store the backups; unset: the operator's default repository."""

    incremental: bool | None = None
    """Store only what changed since the previous backup (each backup still restores on its own); unset: true."""

    full_every: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Make every Nth run a full backup (reads everything again, re-checks every chunk); unset: only the first."""

    verify: bool | None = None
    """Re-read both sides after copying and compare checksums; unset: false."""

    force: bool | None = None
    """Back up a block volume that is in use (from a crash-consistent snapshot); unset: false."""

    deadline_seconds: DeadlineSeconds | None = None
    """Deadline of each ShareBackup; unset: the operator's default."""


class SafePointTemplate(ApiModel):
    """Each run takes an RBD snapshot on the PVC's own image, named like the run (``<schedule>-<time>``):
    an ordinary snapshot of the volume, the newest of which VolumeRevert rolls back to (fast path)."""

    persistent_volume_claim: PersistentVolumeClaimRef
    """An RBD-backed PVC of this namespace."""


class VolumeSnapshotTemplate(ApiModel):
    """Each run creates a CSI VolumeSnapshot (needs a snapshot controller and a CSI driver)."""

    persistent_volume_claim: PersistentVolumeClaimRef
    """The PVC of this namespace to snapshot."""

    volume_snapshot_class_name: ObjectName | None = None
    """VolumeSnapshotClass to use; unset: the cluster's default class."""


class ImageSnapshotTemplate(ApiModel):
    """Each run creates an ImageSnapshot (snapshot, clone and flatten into the image pool)."""

    source: VolumeSource
    """The RBD volume to make images of."""

    destination_pool: Annotated[str, StringConstraints(min_length=1, max_length=250,
                                                       pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+:=-]*$")] | None = None
    """Pool of the images; unset: the operator's default image pool (image names are generated per run)."""

    method: ImageMethod | None = None
    """Auto, Clone or Copy, as in ImageSnapshot; unset: Auto."""

    deadline_seconds: DeadlineSeconds | None = None
    """Deadline of each ImageSnapshot; unset: the operator's default."""

    def destination(self) -> ImageDestination | None:
        return ImageDestination(pool=self.destination_pool) if self.destination_pool else None


class ScheduleTemplate(ExactlyOne):
    """What each run creates: exactly one of the four."""

    share_backup: ShareBackupTemplate | None = None
    """A ShareBackup per run."""

    safe_point: SafePointTemplate | None = None
    """An RBD snapshot of an RBD-backed PVC per run (VolumeRevert's fast path)."""

    volume_snapshot: VolumeSnapshotTemplate | None = None
    """A CSI VolumeSnapshot per run."""

    image_snapshot: ImageSnapshotTemplate | None = None
    """An ImageSnapshot per run."""


class Retention(ApiModel):
    """Which successful runs to keep, with restic ``forget`` semantics (docs/schedules.md): a run is kept if
    any rule keeps it; the newest successful run is always kept, and so is anything a kept or running item
    still needs. Unset entirely: nothing is ever pruned."""

    cel_rules = (cel("has(self.keepLast) || has(self.keepHourly) || has(self.keepDaily) || has(self.keepWeekly)"
                     " || has(self.keepMonthly) || has(self.keepYearly) || has(self.maxAge)",
                     "retention needs at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, "
                     "keepYearly or maxAge (leave retention out to keep everything)"),)

    keep_last: Keep | None = None
    """Keep the N newest successful runs."""

    keep_hourly: Keep | None = None
    """For the N most recent hours that have a run, keep the newest run of each hour."""

    keep_daily: Keep | None = None
    """For the N most recent days (in timeZone) that have a run, keep the newest run of each."""

    keep_weekly: Keep | None = None
    """For the N most recent ISO weeks that have a run, keep the newest run of each."""

    keep_monthly: Keep | None = None
    """For the N most recent months that have a run, keep the newest run of each."""

    keep_yearly: Keep | None = None
    """For the N most recent years that have a run, keep the newest run of each."""

    max_age: Duration | None = None
    """Prune runs older than this (e.g. `30d`, `12h`, `1w`), whatever the keep rules say — except the newest."""

    keep_failed: Keep | None = None
    """How many of the newest failed runs to keep for inspection (older failed ones are pruned); unset: 1."""

    @model_validator(mode="after")
    def _some_rule(self) -> Retention:
        if all(getattr(self, f) is None for f in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                                                  "keep_monthly", "keep_yearly", "max_age")):
            raise ValueError(self.cel_rules[0]["message"])
        return self

    @field_validator("max_age")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value


class SavepointScheduleSpec(ApiModel):
    """When to run, what each run creates, and how many to keep. Mutable: suspend, resume, retune."""

    schedule: ScheduleText
    """5-field cron (`30 2 * * *`), `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, or
    `@every N{s,m,h}` (e.g. `@every 30s`: every 30 seconds from the Unix epoch)."""

    time_zone: TimeZone = "UTC"
    """IANA time zone the cron fields and the retention buckets are read in (e.g. `Europe/Berlin`)."""

    jitter_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    """Spread: each run starts up to this many seconds after its slot, a fixed offset per schedule (from its
    uid), so that many schedules do not fire in the same second; at most half the period is used."""

    template: ScheduleTemplate
    """What each run creates."""

    retention: Retention | None = None
    """What to keep; unset: everything is kept."""

    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    """Forbid: a slot waits while the previous child still runs; Allow: children may overlap."""

    starting_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """A slot missed (operator down, Forbid waiting) by more than this is skipped and counted as missed;
    unset: the most recent missed slot is always caught up — once, however many were missed."""

    suspend: bool = False
    """No new runs while true (retention still prunes); missed slots are not caught up on resume."""

    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    """Deleting the schedule: Delete removes its children (each through its own finalizer); Retain keeps them
    (they lose the owner reference, keep the labels)."""


class SavepointSchedulePhase(StrEnum):
    """Active, Suspended, Invalid (the spec cannot be run; the Ready condition says why)."""

    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    INVALID = "Invalid"


class PendingRun(StatusModel):
    """A run recorded before its child is created: a restarted operator creates exactly that child."""

    name: ObjectName
    """Name of the child (`<schedule>-<YYYYMMDD>-<HHMMSS>`, the slot in UTC)."""

    slot: ShortText
    """The slot (RFC 3339, UTC)."""

    incremental: bool | None = None
    """For ShareBackup runs: whether this run is incremental (fullEvery)."""


class SavepointScheduleStatus(StatusBase[SavepointSchedulePhase]):
    """When it ran, what it made, and what it kept."""

    last_schedule_time: ShortText | None = None
    """The slot of the most recent run (RFC 3339, UTC)."""

    last_successful_time: ShortText | None = None
    """When the most recent successful run's child finished (RFC 3339, UTC)."""

    next_schedule_time: ShortText | None = None
    """The next slot (RFC 3339, UTC); unset while suspended."""

    active: ObjectName | None = None
    """The child of the latest run while it is still running."""

    last_child: ObjectName | None = None
    """The child of the latest run."""

    pending_run: PendingRun | None = None
    """A run being started (recorded before its child exists)."""

    runs: Count | None = None
    """Runs started since the schedule was created."""

    runs_since_full: Count | None = None
    """ShareBackup runs since the last full backup (fullEvery)."""

    kept: Count | None = None
    """Successful children kept after the last retention pass."""

    pruned: Count | None = None
    """Children pruned since the schedule was created."""

    missed_runs: Count | None = None
    """Slots skipped since the schedule was created (an outage, Forbid waiting, startingDeadlineSeconds)."""

    run_now_handled: ShortText | None = None
    """The last `savepoint.dev/run-now` annotation value acted on (each new value runs once)."""

    skip_until: ShortText | None = None
    """Slots up to this time are not caught up (the schedule was suspended until then)."""

    retention_blocked: Message | None = None
    """Children retention would prune but cannot yet (locked, in use, needed by another), and why; retried."""


class SavepointSchedule(CustomResource[SavepointScheduleSpec, SavepointScheduleStatus]):
    """Runs ShareBackups, safe-point snapshots, VolumeSnapshots or ImageSnapshots on a schedule, and prunes them."""

    crd = CrdInfo(
        kind="SavepointSchedule",
        plural="savepointschedules",
        short_names=("spsched",),
        printer_columns=(
            PrinterColumn("Schedule", ".spec.schedule", description="When it runs"),
            PrinterColumn("Suspended", ".spec.suspend", "boolean", "No new runs while true"),
            PrinterColumn("Last Success", ".status.lastSuccessfulTime", "date", "When the latest successful run ended"),
            PrinterColumn("Next Run", ".status.nextScheduleTime", description="The next slot (UTC)"),
            PrinterColumn("Kept", ".status.kept", "integer", "Successful children kept"),
            REASON_COLUMN,
            AGE_COLUMN,
            PrinterColumn("Active", ".status.active", description="The child still running", priority=1),
            PrinterColumn("Pruned", ".status.pruned", "integer", "Children pruned so far", priority=1),
            PrinterColumn("Time Zone", ".spec.timeZone", description="Zone of the cron fields", priority=1),
            MESSAGE_COLUMN,
        ),
        immutable_spec=False,
        name_max_length=SCHEDULE_NAME_MAX_LENGTH,
    )

    spec: SavepointScheduleSpec
    status: SavepointScheduleStatus | None = None
