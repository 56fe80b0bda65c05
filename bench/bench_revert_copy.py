"""Generic VolumeRevert copy benchmark (issue 16): the ``rbd-copy`` mover against naive copies, in one run.

A volume of ``--size-gib`` (10 GiB) holds ``--data-gib`` (1 GiB) of data; a VolumeSnapshot is taken the way
ceph-csi takes it (``helpers.volumes.csi_snapshot_image``: a v2 clone of a snapshot that goes to the
volume's trash), then ``--changed`` (1 % of the data, whole 4 MiB objects that hold data) is rewritten on the volume.  Each method then makes
the volume read like the snapshot again (the first three on the volume itself, under its exclusive lock):

- ``rbd-copy`` mover (``python -m savepoint.mover``, a process of its own as in a Job, start-up included):
  copies only the objects that differ (object maps of the shared, trashed snapshot);
- the same mover against a *flattened* snapshot image (ceph-csi past its clone-depth limits): the sparse
  full copy, the fallback;
- the sparse full copy forced on the ceph-csi clone (``copy_between``, in-process): what rbd-copy did before;
- naive ``rbd export SNAPIMAGE@SNAP - | rbd import - NEW`` (into a new image: the CLI cannot import onto
  an existing one).

Every method is checked to leave the content equal to the snapshot's.  Bytes: the mover's own count
(``bytesRead``/``bytesWritten``) and the OSD's (``bench/osdbytes.py``), which also sees the rbd CLI.
Goals: >= 10x faster than naive, bytes written ~ bytes changed.

Sizing: the OSD is an 8 GiB memstore shared by every test session.  Peak: the volume's data, its
copy-on-write clones for the shared snapshot once the full copies rewrite it, the flattened image and the
naive copy -- about 4x ``--data-gib``, and removed images free their space only as fast as the OSD trims
snapshots (minutes).  The run refuses to start without that much free plus 1 GiB for the others.
Run: ``.venv/bin/python bench/bench_revert_copy.py [--size-gib 10] [--data-gib 0.5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests"), str(ROOT / "bench")]

from bench_blocks import write_runs  # noqa: E402
from osdbytes import MiB, measured  # noqa: E402
from sandboxlib import ceph as sandbox_ceph  # noqa: E402
from sandboxlib import config  # noqa: E402

from helpers import volumes  # noqa: E402
from savepoint.mover.request import MoverRequest  # noqa: E402
from savepoint.storage import ceph, rbd, sparse  # noqa: E402
from savepoint.storage.extents import Extent  # noqa: E402

GiB = 1 << 30
CHUNK = 4 * MiB


def fill(c: Any, ref: rbd.ImageRef, nbytes: int, size: int, seed: int, among: list[int] | None = None) -> list[int]:
    """``nbytes`` of incompressible data in 4 MiB pieces at random object slots (``among`` these, if given),
    with aio writes; returns the slots."""
    rng = random.Random(seed)
    slots = rng.sample(among or range(size // CHUNK), max(1, nbytes // CHUNK))
    write_runs(c, ref, [Extent(slot * CHUNK, CHUNK) for slot in sorted(slots)], rng)
    return slots


def mover(creds: ceph.CephCredentials, work: Path, params: dict[str, Any]) -> dict[str, Any]:
    log = work / f"rbd-copy-{uuid.uuid4().hex[:6]}.json"
    request = MoverRequest(action="rbd-copy", params=params, needs_ceph=True)
    env = {**os.environ, "SAVEPOINT_MOVER_REQUEST": request.to_env(), "SAVEPOINT_TERMINATION_LOG": str(log),
           "SAVEPOINT_CEPH_MONITORS": ",".join(creds.monitors), "SAVEPOINT_CEPH_USER_ID": creds.user_id,
           "SAVEPOINT_CEPH_KEY": creds.key}
    out = subprocess.run([sys.executable, "-m", "savepoint.mover"], env=env, capture_output=True, text=True)
    result = json.loads(log.read_text())
    if out.returncode != 0 or not result.get("ok"):
        raise RuntimeError(f"rbd-copy failed: {result}\n{out.stderr[-2000:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=10)
    parser.add_argument("--data-gib", type=float, default=0.5)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of the data rewritten")
    args = parser.parse_args()
    size = int(args.size_gib * GiB) // CHUNK * CHUNK
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "ceph"], check=True, stdout=subprocess.DEVNULL)
    cfg = config.load()
    os.environ.update(sandbox_ceph.admin_env(cfg))
    user, key = sandbox_ceph.csi_credentials(cfg)
    creds = ceph.CephCredentials(monitors=sandbox_ceph.monitors(cfg), user_id=user, key=key)
    work = Path(tempfile.mkdtemp(prefix="bench-revert-copy-"))
    tag = uuid.uuid4().hex[:6]
    vol = rbd.ImageRef("rbd", f"bench-rc-{tag}")
    naive = rbd.ImageRef("rbd", f"bench-rc-{tag}-naive")
    made: list[rbd.ImageRef] = []
    rows: list[tuple[str, float, Any, dict[str, Any] | None]] = []
    changed = max(CHUNK, int(args.data_gib * GiB * args.changed) // CHUNK * CHUNK)
    print(f"generic revert copy: {args.size_gib:g} GiB volume, {args.data_gib:g} GiB data, "
          f"{changed // MiB} MiB rewritten after the snapshot", flush=True)
    try:
        with ceph.connect(creds) as c:
            free = c.get_cluster_stats()["kb_avail"] * 1024
            peak = int(4 * args.data_gib * GiB)
            if free < peak + GiB:
                raise SystemExit(f"the sandbox OSD has {free / GiB:.1f} GiB free; this run needs about "
                                 f"{(peak + GiB) / GiB:.1f} GiB: try --data-gib {args.data_gib / 2:g}, or later")
            rbd.create_image(c, vol, size)
            made.append(vol)
            data_slots = fill(c, vol, int(args.data_gib * GiB), size, seed=1)
            snap = volumes.csi_snapshot_image(c, vol)
            made.insert(0, snap)
            flat = volumes.csi_snapshot_image(c, vol, flatten=True)
            made.insert(0, flat)
            with rbd.open_ref(c, snap, snapshot=snap.image, read_only=True) as image:
                expected = sparse.content_checksum(image)

            def same() -> bool:
                with rbd.open_ref(c, vol, read_only=True) as image:
                    return sparse.content_checksum(image) == expected

            def step(label: str, fn: Any) -> None:
                fill(c, vol, changed, size, seed=len(rows) + 2, among=data_slots)  # rewrite 1 % of the data
                with measured(cfg) as moved:
                    t0 = time.perf_counter()
                    data = fn()
                    took = time.perf_counter() - t0
                ok = same() if label != "naive" else None
                rows.append((label, took, moved, data))
                print(f"  {label:52s} {took:7.2f} s  OSD {moved}  equal: {ok}", flush=True)
                if ok is False:
                    raise SystemExit(f"{label}: the volume does not equal the snapshot")

            params = lambda src: {"source": {"pool": src.pool, "image": src.image, "snapshot": src.image},  # noqa: E731
                                  "destination": {"pool": vol.pool, "image": vol.image}, "verify": True}
            step("rbd-copy mover, ceph-csi snapshot (changed objects)", lambda: mover(creds, work, params(snap)))
            step("rbd-copy mover, flattened snapshot (full sparse copy)", lambda: mover(creds, work, params(flat)))

            def forced_full() -> dict[str, Any]:
                with ceph.open_ioctx(c, "rbd") as io, rbd.open_image(io, snap.image, snapshot=snap.image,
                                                                     read_only=True) as s, \
                        rbd.exclusive_lock(io, vol.image) as d:
                    r = sparse.copy_between(s, d)
                return {"bytes_read": r.bytes_read, "bytes_written": r.bytes_copied, "data": {"method": "full"}}

            step("full sparse copy of the ceph-csi snapshot (in-process)", forced_full)
            made.insert(0, naive)

            def naive_copy() -> None:
                subprocess.run(f"rbd export --no-progress {snap.spec}@{snap.image} - | "
                               f"rbd import --no-progress - {naive.spec}", shell=True, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            step("naive", naive_copy)
    finally:
        with contextlib.suppress(Exception), ceph.connect(creds) as c:
            for ref in made:
                rbd.remove_image(c, ref, purge_snapshots=True)
        shutil.rmtree(work, ignore_errors=True)

    base = next(t for label, t, _, _ in rows if label == "naive")
    naive_moved = next(m for label, _, m, _ in rows if label == "naive")
    print("\nresults (naive = rbd export | rbd import; bytes: the mover's count, then the OSD's)")
    for label, took, moved, data in rows:
        counted = ""
        if data:
            counted = (f"mover read {data.get('bytes_read', 0) / MiB:.0f} MiB, wrote "
                       f"{data.get('bytes_written', 0) / MiB:.0f} MiB ({data.get('data', {}).get('method')}); ")
        print(f"  {label:52s} {took:7.2f} s = {base / took:5.1f}x faster than naive; {counted}"
              f"OSD moved {moved.total / MiB:.0f} MiB ({moved.total / max(1, naive_moved.total):.3f}x naive)")
    print(f"  changed data: {changed / MiB:.0f} MiB; goal: changed-objects copy >= 10x faster than naive, "
          f"written ~ changed")


if __name__ == "__main__":
    main()
