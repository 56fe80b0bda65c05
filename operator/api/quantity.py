"""Sizes as Kubernetes quantities: parse what users write, print what ``kubectl get`` shows.

Parsing is the kubernetes client's own ``parse_quantity`` (the same rules as
the API server); formatting picks the largest binary suffix that is exact, so
a status size round-trips without loss.
"""

from __future__ import annotations

import math

_BINARY = (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def to_bytes(quantity: str | int) -> int:
    """Bytes in a quantity, rounded up (a size is a capacity: never round it down)."""
    from kubernetes.utils import parse_quantity  # imported late: the client is heavy and most callers only format

    return int(math.ceil(parse_quantity(quantity)))  # type: ignore[no-untyped-call]


def to_quantity(size_bytes: int) -> str:
    """``10737418240`` → ``"10Gi"``; sizes that no binary suffix divides stay plain bytes."""
    if size_bytes < 0:
        raise ValueError(f"a size cannot be negative: {size_bytes}")
    for suffix, unit in _BINARY:
        if size_bytes and size_bytes % unit == 0:
            return f"{size_bytes // unit}{suffix}"
    return str(size_bytes)
