"""What the operator asks a mover to do, and what the mover answers.

Shared by both sides: the operator serialises a ``MoverRequest`` into the Job,
the mover writes a ``MoverResult`` into its termination message.  No
Kubernetes imports: the mover's actions must stay testable without a cluster.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from savepoint.mover.wire import TERMINATION_MESSAGE_LIMIT, termination_message

__all__ = ["TERMINATION_MESSAGE_LIMIT", "MoverRequest", "MoverResult", "MoverVolume", "NfsSource", "Phase"]


class NfsSource(BaseModel):
    model_config = ConfigDict(frozen=True)
    server: str
    path: str


class MoverVolume(BaseModel):
    """A volume the mover's pod mounts at ``mount_path``: an NFS export (movers run in the
    operator's namespace, so they cannot mount a tenant's claim; the operator resolves the
    claim to the export behind it).  ``sub_path`` mounts only that directory of it (a
    namespace's part of a shared repository)."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    mount_path: str
    read_only: bool = False
    nfs: NfsSource
    sub_path: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", max_length=253)

    @model_validator(mode="after")
    def _safe_sub_path(self) -> "MoverVolume":
        if self.sub_path and any(part in (".", "..") for part in self.sub_path.split("/")):
            raise ValueError(f"sub_path {self.sub_path!r} must stay inside the volume")
        return self


class MoverRequest(BaseModel):
    """One data-moving step, run as one Job."""

    model_config = ConfigDict(frozen=True)
    action: str = Field(description="Registered mover action, e.g. `checksum-tree`.")
    params: dict[str, Any] = Field(default_factory=dict)
    volumes: list[MoverVolume] = Field(default_factory=list)
    needs_ceph: bool = Field(False, description="Give the mover Ceph credentials (librbd access).")
    privileged: bool = Field(False, description="Run privileged; refused unless the settings allow it.")
    run_as_root: bool = Field(False, description="Run as root with the file-ownership capabilities only "
                              "(copying file trees with their owners needs them); otherwise non-root.")

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_env(cls, raw: str) -> "MoverRequest":
        return cls.model_validate_json(raw)


class MoverResult(BaseModel):
    """The mover's answer, small enough for a termination message.

    The mover writes it with ``savepoint.mover.wire`` (no pydantic in a mover process); this model is
    what the operator parses it with.
    """

    ok: bool
    reason: str | None = None  # CamelCase, set when not ok
    message: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    bytes_read: int | None = Field(None, ge=0, description="Bytes the mover read (librbd, repository, files); "
                                   "None: not counted (an older mover).")
    bytes_written: int | None = Field(None, ge=0, description="Data bytes the mover wrote (zeroed ranges not "
                                      "counted); None: not counted.")

    def to_termination_message(self) -> str:
        return termination_message(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, text: str | None) -> "MoverResult | None":
        if not text:
            return None
        try:
            return cls.model_validate(json.loads(text))
        except (ValueError, TypeError):
            return None


Phase = Literal["Waiting", "Running", "Succeeded", "Failed"]
