"""The whole-object envelope of a Savepoint resource and its CRD metadata.

Each kind module declares one ``CustomResource`` subclass with a ``crd``
(names, short names, printer columns); ``savepoint.crdgen`` reads only these,
so adding a kind is adding a module and listing it in ``savepoint.api.KINDS``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ConfigDict, Field, model_validator

from savepoint.api.base import API_VERSION, ApiModel, StatusModel, cel
from savepoint.api.status import StatusBase
from savepoint.api.types import Count, DnsLabel


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry; ``priority=1`` shows only with ``-o wide``."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


PHASE_COLUMN = PrinterColumn("Phase", ".status.phase", description="Where the action is")
PROGRESS_COLUMN = PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent of the data step done")
SOURCE_COLUMN = PrinterColumn("Source", ".status.source", description="What the action works on")
REASON_COLUMN = PrinterColumn(
    "Reason", '.status.conditions[?(@.type=="Ready")].reason', description="Why it is in this phase"
)
MESSAGE_COLUMN = PrinterColumn("Message", ".status.message", description="Latest summary", priority=1)
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclasses.dataclass(frozen=True)
class CrdInfo:
    """Names and columns of a kind; the schema itself comes from the pydantic models."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    immutable_spec: bool = True  # one-shot actions; a controller-like kind (SavepointSchedule) is editable
    name_max_length: int = 63  # NAME_MAX_LENGTH, or less when children's names extend the name

    @property
    def singular(self) -> str:
        return self.kind.lower()


def immutable_spec_rule(kind: str) -> dict[str, str]:
    """Each resource is one action, like a Job: changing what it does means a new object."""
    return cel("self == oldSelf", f"spec is immutable: create a new {kind} instead")


NAME_MAX_LENGTH = 63
"""Resource names are DNS-1123 labels: they name mover Jobs and appear in label values (max 63)."""


class ObjectMeta(StatusModel):
    """The part of ``metadata`` the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: DnsLabel | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: Count | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


SpecT = TypeVar("SpecT", bound=ApiModel)
StatusT = TypeVar("StatusT", bound=StatusBase[Any])


class CustomResource(ApiModel, Generic[SpecT, StatusT]):
    """A whole Savepoint object as the API server returns it (``kopf`` bodies parse into this)."""

    model_config = ConfigDict(extra="ignore")

    crd: ClassVar[CrdInfo]

    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SpecT
    status: StatusT | None = None

    @model_validator(mode="after")
    def _kind_and_version(self) -> CustomResource[SpecT, StatusT]:
        if not self.kind:
            self.kind = self.crd.kind
        if self.kind != self.crd.kind or self.api_version != API_VERSION:
            raise ValueError(f"expected {API_VERSION} {self.crd.kind}, got {self.api_version} {self.kind}")
        return self
