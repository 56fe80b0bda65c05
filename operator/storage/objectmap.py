"""librbd's object maps, read directly: which objects of an image may have changed since a snapshot.

``diff_iterate`` names its starting snapshot by name in the *user* namespace
only (Ceph 16.2 has no ``rbd_diff_iterate3`` taking a snapshot id), but the
snapshot a ceph-csi VolumeSnapshot shares with its volume is in the volume's
snapshot *trash* (ceph-csi clones it with clone format 2, then removes it).
librbd keeps that snapshot's object map all the same, so the answer
``diff_iterate`` would give with fast-diff can be computed from the maps:
this module decodes them (pure functions; ``savepoint.storage.rbd`` reads the
RADOS objects).  Only their existence bits are used, to know which objects to
look at; whether one changed is decided by its RADOS version
(``rbd.changed_since``), which is exact.

Format (Ceph ``src/common/bit_vector.hpp``, ``BitVector<2>::encode``): a
length-prefixed header (``ENCODE_START(1, 1)``, then the element count as
u64), then the data, two bits per object, the first object in the highest
bits of the first byte, then a footer with CRCs (not needed here).
States (``src/include/rbd/object_map_types.h``): 0 nonexistent, 1 exists
(written since the previous snapshot), 2 pending (being removed), 3 exists
and clean (unchanged since the previous snapshot; set for every existing
object when a snapshot is taken, with fast-diff).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

OBJECT_NONEXISTENT = 0
OBJECT_EXISTS = 1
OBJECT_PENDING = 2
OBJECT_EXISTS_CLEAN = 3

MAX_OBJECTS = 1 << 28  # 1 PiB of 4 MiB objects: more is not an object map Savepoint will trust


class BadObjectMap(ValueError):
    """Bytes that are not an encoded object map (or one larger than ``MAX_OBJECTS``)."""


def object_map_name(image_id: str, snap_id: int | None = None) -> str:
    """The RADOS object holding the map of the head (``snap_id`` None) or of a snapshot (any namespace)."""
    return f"rbd_object_map.{image_id}" + ("" if snap_id is None else f".{snap_id:016x}")


def encoded_size(objects: int) -> int:
    """An upper bound on the encoded size of a map of ``objects`` objects (what to read)."""
    data = (objects + 3) // 4
    return 4 + 14 + data + 4 + 6 + 4 + 4 + 4 * (data // 4096 + 2)


def decode(raw: bytes) -> bytes:
    """Encoded ``BitVector<2>`` -> one byte per object holding its state (0-3)."""
    if len(raw) < 4:
        raise BadObjectMap("object map shorter than its header")
    (header_len,) = struct.unpack_from("<I", raw, 0)
    if header_len < 14 or len(raw) < 4 + header_len:
        raise BadObjectMap(f"object map header of {header_len} bytes in {len(raw)}")
    version, compat, body_len = struct.unpack_from("<BBI", raw, 4)
    if compat > 1 or body_len < 8 or body_len + 6 > header_len:
        raise BadObjectMap(f"object map header version {version} (compat {compat}, {body_len} bytes) not known")
    (count,) = struct.unpack_from("<Q", raw, 10)
    if count > MAX_OBJECTS:
        raise BadObjectMap(f"object map of {count} objects")
    start = 4 + header_len
    data = raw[start:start + (count + 3) // 4]
    if len(data) != (count + 3) // 4:
        raise BadObjectMap(f"object map of {count} objects has only {len(data)} data bytes")
    states = bytearray(count)
    for i in range(count):
        states[i] = (data[i >> 2] >> ((3 - (i & 3)) * 2)) & 3
    return bytes(states)


def existing(*maps: Sequence[int]) -> list[int]:
    """Objects that exist (or are being removed) in any of ``maps``: the only ones whose content can differ
    between them.  Existence is all that is taken from a map: after a rollback the head's map is a copy of
    the snapshot's, whose "clean" marks then describe the wrong snapshot (librbd 16.2's own fast-diff
    misses such changes), while existence stays right."""
    if len({len(m) for m in maps}) > 1:
        raise BadObjectMap(f"object maps of {sorted({len(m) for m in maps})} objects")
    return [i for i, states in enumerate(zip(*maps)) if any(state != OBJECT_NONEXISTENT for state in states)]
