"""Bytes between clients and Ceph, as the sandbox's one OSD counts them.

``ceph daemon osd.0 perf dump``: ``op_r_out_bytes`` + ``op_rw_out_bytes`` (data the OSD
sent to clients) and ``op_w_in_bytes`` + ``op_rw_in_bytes`` (data clients sent; librbd's
copy-up during a flatten is a read-modify-write class call, counted in the ``rw`` pair).
Taken before and after a step, their difference is what that step moved
through its client -- the same measure for the rbd CLI, a mover, librbd's
server-side rollback or a flatten.  The OSD is shared: another session's
tests running at the same time add their own bytes (run benchmarks on a quiet
sandbox; the figures say "at least").
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20


@dataclass
class Moved:
    read: int = 0  # OSD -> clients
    written: int = 0  # clients -> OSD

    @property
    def total(self) -> int:
        return self.read + self.written

    def __str__(self) -> str:
        return f"read {self.read / MiB:8.1f} MiB, written {self.written / MiB:8.1f} MiB"


def counters(cfg: Any) -> tuple[int, int]:
    sock = cfg.state / "ceph" / "run" / "ceph-osd.0.asok"
    out = subprocess.run(["ceph", "--admin-daemon", str(sock), "perf", "dump"], capture_output=True, text=True,
                         check=True, env={**os.environ})
    osd = json.loads(out.stdout)["osd"]
    return (int(osd["op_r_out_bytes"]) + int(osd["op_rw_out_bytes"]),
            int(osd["op_w_in_bytes"]) + int(osd["op_rw_in_bytes"]))


@contextlib.contextmanager
def measured(cfg: Any) -> Iterator[Moved]:
    """``with measured(cfg) as moved: ...`` -- ``moved`` holds the bytes once the block is done."""
    moved = Moved()
    r0, w0 = counters(cfg)
    yield moved
    r1, w1 = counters(cfg)
    moved.read, moved.written = r1 - r0, w1 - w0
