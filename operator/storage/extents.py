"""Byte-range arithmetic for sparse images: merge, subtract, split.

Pure functions over ``(offset, length)`` pairs, kept apart from librbd so the
rules that decide what a sparse copy reads, writes and zeroes can be tested
without a cluster.  Every result is sorted, non-overlapping and has no empty
extents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Extent(NamedTuple):
    """A byte range of an image: ``length`` bytes starting at ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def merge(extents: Iterable[tuple[int, int]]) -> list[Extent]:
    """Sort and coalesce overlapping or touching extents; drop empty ones.

    librbd reports allocation per object (or per sub-object range), so a
    contiguous run of data arrives as many pieces; merged, it is one read.
    """
    result: list[Extent] = []
    for offset, length in sorted(e for e in extents if e[1] > 0):
        if result and offset <= result[-1].end:
            last = result[-1]
            result[-1] = Extent(last.offset, max(last.end, offset + length) - last.offset)
        else:
            result.append(Extent(offset, length))
    return result


def subtract(extents: Iterable[tuple[int, int]], remove: Iterable[tuple[int, int]]) -> list[Extent]:
    """The parts of ``extents`` not covered by ``remove``."""
    keep = merge(extents)
    cut = merge(remove)
    result: list[Extent] = []
    j = 0
    for ext in keep:
        start, end = ext.offset, ext.end
        while j < len(cut) and cut[j].end <= start:
            j += 1
        k = j
        while k < len(cut) and cut[k].offset < end:
            if cut[k].offset > start:
                result.append(Extent(start, cut[k].offset - start))
            start = max(start, cut[k].end)
            k += 1
        if start < end:
            result.append(Extent(start, end - start))
    return result


def clip(extents: Iterable[tuple[int, int]], limit: int) -> list[Extent]:
    """Extents cut off at ``limit`` bytes (e.g. the image size)."""
    return [Extent(o, min(o + n, limit) - o) for o, n in merge(extents) if o < limit]


def split(extents: Iterable[tuple[int, int]], chunk: int) -> Iterator[Extent]:
    """Cut extents into pieces of at most ``chunk`` bytes that never cross a ``chunk`` boundary.

    Aligned pieces map onto whole RADOS objects when ``chunk`` is the object
    size, so each read or write touches one object.
    """
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    for offset, length in extents:
        end = offset + length
        while offset < end:
            piece_end = min(end, (offset // chunk + 1) * chunk)
            yield Extent(offset, piece_end - offset)
            offset = piece_end


def total(extents: Iterable[tuple[int, int]]) -> int:
    """Sum of lengths."""
    return sum(length for _, length in extents)
