"""Constrained scalar types shared by the models.

Each constraint is written once, as a pattern/length/minimum that pydantic
checks and that the CRD schema carries to the API server (Go RE2 and Rust
regex agree on these patterns: no look-around, no back-references).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from savepoint.api.base import cel

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Pools, images, snapshots and RADOS namespaces: a safe subset of what Ceph
# allows. No '/' or '@' (the rbd CLI's separators), no leading '-' (would read
# as an option to a tool), no whitespace.
CEPH_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.+:=-]*$"

# An NFS server: a host name, IPv4 or IPv6 address (optionally in brackets).
NFS_SERVER = r"^[A-Za-z0-9.:\[\]][A-Za-z0-9.:\[\]-]*$"

# An absolute export path without '..' segments (RE2 has no look-ahead, so a
# segment is spelled out as "anything but exactly two dots").
_SEGMENT = r"(\.|[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
NFS_PATH = rf"^/({_SEGMENT}/)*({_SEGMENT})?$"

# A Kubernetes quantity as a size: no sign, no milli/micro/nano units.
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE][0-9]+)?$"
# Matches exactly the well-formed quantities whose value is zero (mantissa of 0s and dots).
_ZERO_QUANTITY = r"^[0.]*([^0-9.].*)?$"
SIZE_POSITIVE_MESSAGE = "size must be greater than zero"


def _positive_quantity(value: str) -> str:
    if re.match(_ZERO_QUANTITY, value):
        raise ValueError(SIZE_POSITIVE_MESSAGE)
    return value


DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
"""A DNS-1123 label: lower case letters, digits and '-', at most 63 characters."""

ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
"""A Kubernetes object name (DNS-1123 subdomain), at most 253 characters."""

CephName = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=CEPH_NAME)]
"""A Ceph pool, image, snapshot or RADOS namespace name."""

ClusterId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=CEPH_NAME)]
"""A ceph-csi clusterID: the key of the cluster in ceph-csi's config.json."""

NfsServer = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=NFS_SERVER)]
NfsPath = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=NFS_PATH)]

Quantity = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=QUANTITY),
    AfterValidator(_positive_quantity),
    Field(json_schema_extra={"x-kubernetes-validations": [cel(f"!self.matches('{_ZERO_QUANTITY}')", SIZE_POSITIVE_MESSAGE)]}),
]
"""A positive size as a Kubernetes quantity, e.g. ``10Gi`` or ``500M``."""

MAX_DEADLINE_SECONDS = 30 * 24 * 3600
DeadlineSeconds = Annotated[int, Field(ge=1, le=MAX_DEADLINE_SECONDS)]
"""A positive number of seconds, at most 30 days (the operator's ``max_deadline_seconds`` may cap it lower)."""

Count = Annotated[int, Field(ge=0)]
"""A non-negative counter (bytes, files, chunks, generations)."""

Message = Annotated[str, StringConstraints(max_length=32768)]
"""Free text for people, bounded so CEL cost estimates stay small."""

ShortText = Annotated[str, StringConstraints(max_length=1024)]
"""A short free text: a resolved source, a location, a path."""
