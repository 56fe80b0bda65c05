"""Block-volume backup benchmark (issue 7): the chunk store against the rbd CLI, in one run.

On an image of ``--size-gib`` (default 4 GiB) with ``--allocated`` (25 %) of it
written, against the sandbox's real Ceph:

- full backup (``blocks-backup`` mover, no base) vs ``rbd export IMAGE@s1 FILE``;
- an incremental after rewriting ``--changed`` (1 %) of the image vs
  ``rbd export-diff --from-snap s1 IMAGE@s2 FILE``;
- restore of the full backup into a new image (``blocks-restore``) vs
  ``rbd import FILE`` of the export;
- repository size (``du``) vs the data allocated in the image.

Both sides run as a process of their own (the mover as ``python -m
savepoint.mover``, exactly as in a Job, minus Kubernetes), read from the same
snapshot and write to the same local filesystem.  The mover fsyncs every chunk
(a backup must survive a crash); ``rbd export`` does not, so its time is also
shown with an ``fsync`` of the file added.  Goals: full <= 1.2x export,
incremental <= 1.2x export-diff, restore <= 1.2x import, repository <= 1.05x
allocated.  Each step also prints the bytes it moved between client and OSD.

Sizing: the sandbox OSD is an 8 GiB memstore (RAM) shared by every test session.
At 4 GiB / 25 % the peak is the source (1 GiB) + its 1 % copy-on-write + one
restore target (1 GiB) at a time: about 2.1 GiB.  ``--size-gib 2`` halves it.
Everything the run creates (images, snapshots, files, the repository) is
removed at the end, also after a failure.

Run: ``.venv/bin/python bench/bench_blocks.py [--size-gib 4] [--allocated 0.25] [--changed 0.01]``.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "bench")]

from osdbytes import measured  # noqa: E402

from sandboxlib import ceph as sandbox_ceph  # noqa: E402
from sandboxlib import config  # noqa: E402
from savepoint.mover.request import MoverRequest  # noqa: E402
from savepoint.storage import ceph, extents, rbd  # noqa: E402

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10
OBJECT = 4 * MiB
POOL = "rbd"
NS, SOURCE = "bench", "bench-source"


def du(path: Path) -> int:
    """Bytes on disk (holes not counted), like ``du -s --block-size=1``."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum((Path(d) / f).lstat().st_blocks * 512 for d, _, files in os.walk(path) for f in files)


def runs_for(rng: random.Random, size: int, target: int, taken: list[extents.Extent]) -> list[extents.Extent]:
    """About ``target`` bytes of extents, like a filesystem's: half as whole 4 MiB objects, half as
    64 KiB..1 MiB runs (64 KiB aligned) scattered elsewhere."""
    runs: list[extents.Extent] = []
    objects = size // OBJECT
    whole = rng.sample(range(objects), min(objects, target // 2 // OBJECT))
    runs += [extents.Extent(o * OBJECT, OBJECT) for o in whole]
    got = extents.total(runs)
    while got < target:
        length = min(rng.randrange(1, 17) * 64 * KiB, target - got)
        offset = rng.randrange(0, (size - length) // (64 * KiB)) * 64 * KiB
        runs.append(extents.Extent(offset, length))
        got += length
    merged = extents.merge(runs)
    return extents.subtract(merged, taken) if taken else merged


def write_runs(cluster: Any, ref: rbd.ImageRef, runs: list[extents.Extent], rng: random.Random) -> int:
    """Incompressible data into every run, with a window of aio writes; returns bytes written."""
    pattern = rng.randbytes(8 * MiB)
    written = 0
    with rbd.open_ref(cluster, ref) as image:
        pending = []
        for piece in extents.split(runs, OBJECT):
            start = rng.randrange(0, 4 * MiB)
            pending.append(image.aio_write(pattern[start:start + piece.length], piece.offset, lambda _c: None))
            written += piece.length
            if len(pending) >= 16:
                pending.pop(0).wait_for_complete_and_cb()
        for c in pending:
            c.wait_for_complete_and_cb()
        image.flush()
    return written


class Bench:
    def __init__(self, cfg: config.Config, work: Path, profile: Path | None = None) -> None:
        self.cfg = cfg
        self.work = work
        self.profile = profile
        user, key = sandbox_ceph.csi_credentials(cfg)
        self.creds = ceph.CephCredentials(monitors=sandbox_ceph.monitors(cfg), user_id=user, key=key)
        self.env = {**os.environ, **sandbox_ceph.admin_env(cfg)}
        self.times: dict[str, float] = {}
        self.figures: dict[str, Any] = {}

    @contextlib.contextmanager
    def timed(self, label: str) -> Iterator[None]:
        """Time the block and count the bytes it moved between client and OSD (``bench/osdbytes.py``)."""
        with measured(self.cfg) as moved:
            t0 = time.perf_counter()
            yield
            self.times[label] = time.perf_counter() - t0
        print(f"  {label:44s} {self.times[label]:8.2f} s   OSD {moved}", flush=True)

    def rbd_cli(self, *args: str) -> None:
        subprocess.run(["rbd", *args], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def mover(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        log = self.work / f"{action}-{uuid.uuid4().hex[:6]}.json"
        request = MoverRequest(action=action, params=params, needs_ceph=True)
        env = {**os.environ, "SAVEPOINT_MOVER_REQUEST": request.to_env(), "SAVEPOINT_TERMINATION_LOG": str(log),
               "SAVEPOINT_CEPH_MONITORS": ",".join(self.creds.monitors), "SAVEPOINT_CEPH_USER_ID": self.creds.user_id,
               "SAVEPOINT_CEPH_KEY": self.creds.key}
        profiled = ["-m", "cProfile", "-o", str(self.profile / f"{action}-{log.stem}.prof")] if self.profile else []
        out = subprocess.run([sys.executable, *profiled, "-m", "savepoint.mover"], env=env, capture_output=True,
                             text=True, check=False)
        result = json.loads(log.read_text())
        if out.returncode != 0 or not result.get("ok"):
            raise RuntimeError(f"mover {action} failed: {result}\n{out.stderr[-2000:]}")
        return result["data"]


def manifest(name: str, size: int) -> dict[str, Any]:
    return {"backup": {"name": name, "uid": str(uuid.uuid4()), "namespace": NS},
            "source": {"namespace": NS, "uid": SOURCE, "description": "bench", "sizeBytes": size},
            "created": "2026-01-01T00:00:00Z"}


def phases(result: dict[str, Any]) -> str:
    """The mover's own timing: rbd diff (plan), reading/hashing/writing (copy), directory fsyncs, total."""
    return ", ".join(f"{k} {v:.2f} s" for k, v in (result.get("seconds") or {}).items())


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=4)
    parser.add_argument("--allocated", type=float, default=0.25, help="fraction of the image holding data")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of the image rewritten after s1")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None, help="directory for the repository and rbd files")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory for a cProfile of each mover run (read with python -m pstats)")
    args = parser.parse_args()
    size = int(args.size_gib * GiB) // OBJECT * OBJECT

    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "ceph"], check=True, stdout=subprocess.DEVNULL)
    cfg = config.load()
    work = Path(tempfile.mkdtemp(prefix="bench-blocks-", dir=args.work))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    bench = Bench(cfg, work, args.profile)
    tag = uuid.uuid4().hex[:8]
    src = rbd.ImageRef(POOL, f"bench-blocks-{tag}")
    made: list[rbd.ImageRef] = [src]
    repo = work / "repo"
    repo.mkdir()
    rel = lambda name: f"{NS}/{SOURCE}/{name}"  # noqa: E731
    rng = random.Random(args.seed)
    print(f"block backup benchmark: {args.size_gib:g} GiB image, {args.allocated:.0%} allocated, "
          f"{args.changed:.0%} changed; work dir {work}", flush=True)
    try:
        with ceph.connect(bench.creds) as cluster:
            free = cluster.get_cluster_stats()["kb_avail"] * 1024
            peak = int(size * args.allocated * 2.2)  # source, its copy-on-write, one restore target at a time
            if free < peak + GiB:  # leave the other sessions on this sandbox a GiB
                raise SystemExit(f"the sandbox OSD has {free / GiB:.1f} GiB free; this run needs about "
                                 f"{(peak + GiB) / GiB:.1f} GiB: try --size-gib {args.size_gib / 2:g}, or later")
            rbd.create_image(cluster, src, size)
            data_runs = runs_for(rng, size, int(size * args.allocated), [])
            written = write_runs(cluster, src, data_runs, rng)
            with rbd.open_ref(cluster, src) as image:
                rbd.create_snapshot(image, "s1")
                allocated = rbd.allocated_bytes(image, "s1")
            print(f"  data written {written / MiB:.0f} MiB, librbd reports {allocated / MiB:.0f} MiB allocated",
                  flush=True)

            # --- full ---
            export = work / "s1.raw"
            with bench.timed("rbd export IMAGE@s1 FILE"):
                bench.rbd_cli("export", "--no-progress", f"{src.spec}@s1", str(export))
            with bench.timed("  + fsync of the exported file"):
                fsync_file(export)
            with bench.timed("full backup (blocks-backup)"):
                full = bench.mover("blocks-backup", {
                    "repository": str(repo), "backupPath": rel("full"), "snapshotName": "s1",
                    "source": {"pool": POOL, "image": src.image, "snapshot": "s1"}, "manifest": manifest("full", size)})
            repo_full = du(repo)

            # --- incremental ---
            changes = runs_for(rng, size, int(size * args.changed), [])
            changed = write_runs(cluster, src, changes, rng)
            with rbd.open_ref(cluster, src) as image:
                rbd.create_snapshot(image, "s2")
            diff = work / "s1-s2.diff"
            with bench.timed("rbd export-diff --from-snap s1 IMAGE@s2"):
                bench.rbd_cli("export-diff", "--no-progress", "--from-snap", "s1", f"{src.spec}@s2", str(diff))
            with bench.timed("  + fsync of the diff file"):
                fsync_file(diff)
            parent_uid = json.loads((repo / rel("full") / "backup.json").read_text())["backup"]["uid"]
            with bench.timed("incremental backup (blocks-backup, base s1)"):
                incr = bench.mover("blocks-backup", {
                    "repository": str(repo), "backupPath": rel("incr"), "snapshotName": "s2",
                    "source": {"pool": POOL, "image": src.image, "snapshot": "s2"},
                    "base": {"parentPath": rel("full"), "parentUid": parent_uid}, "manifest": manifest("incr", size)})
            repo_both = du(repo)

            # --- restore ---
            target = rbd.ImageRef(POOL, f"bench-blocks-{tag}-restore")
            made.append(target)
            rbd.create_image(cluster, target, size)
            with bench.timed("restore of the full backup (blocks-restore)"):
                restored = bench.mover("blocks-restore", {
                    "repository": str(repo), "backupPath": rel("full"),
                    "target": {"pool": POOL, "image": target.image}})
            with rbd.open_ref(cluster, target, read_only=True) as image:
                restored_alloc = rbd.allocated_bytes(image)
            from savepoint.storage import sparse

            with ceph.open_ioctx(cluster, POOL) as ioctx:
                same = sparse.image_checksum(ioctx, target.image) == sparse.image_checksum(ioctx, src.image, "s1")
            rbd.remove_image(cluster, target)
            imported = rbd.ImageRef(POOL, f"bench-blocks-{tag}-import")
            made.append(imported)
            with bench.timed("rbd import FILE"):
                bench.rbd_cli("import", "--no-progress", str(export), imported.spec)
            with rbd.open_ref(cluster, imported, read_only=True) as image:
                imported_alloc = rbd.allocated_bytes(image)
            rbd.remove_image(cluster, imported)
    finally:
        with contextlib.suppress(Exception), ceph.connect(bench.creds) as cluster:
            for ref in made:
                rbd.remove_image(cluster, ref, purge_snapshots=True)
        export_size = du(work / "s1.raw") if (work / "s1.raw").exists() else 0
        diff_size = du(work / "s1-s2.diff") if (work / "s1-s2.diff").exists() else 0
        shutil.rmtree(work, ignore_errors=True)

    t = bench.times
    print("\nresults")
    print(f"  full:        {t['full backup (blocks-backup)']:.2f} s vs rbd export {t['rbd export IMAGE@s1 FILE']:.2f} s "
          f"= {t['full backup (blocks-backup)'] / t['rbd export IMAGE@s1 FILE']:.2f}x (goal <= 1.2x); "
          f"vs export+fsync {t['full backup (blocks-backup)'] / (t['rbd export IMAGE@s1 FILE'] + t['  + fsync of the exported file']):.2f}x")
    print(f"               read {full['bytesRead'] / MiB:.0f} MiB, stored {full['bytesStored'] / MiB:.0f} MiB in "
          f"{full['chunkCount']} chunks; inside the mover: {phases(full)}")
    ti, te = t["incremental backup (blocks-backup, base s1)"], t["rbd export-diff --from-snap s1 IMAGE@s2"]
    print(f"  incremental: {ti:.2f} s vs rbd export-diff {te:.2f} s = {ti / te:.2f}x (goal <= 1.2x); "
          f"vs export-diff+fsync {ti / (te + t['  + fsync of the diff file']):.2f}x")
    print(f"               changed {changed / MiB:.1f} MiB; read {incr['bytesRead'] / MiB:.1f} MiB "
          f"({incr['bytesRead'] / changed:.2f}x), stored {incr['bytesStored'] / MiB:.1f} MiB "
          f"({incr['bytesStored'] / changed:.2f}x, chunk granularity), parent chunks re-read "
          f"{incr['bytesReadRepository'] / MiB:.0f} MiB; export-diff file {diff_size / MiB:.1f} MiB")
    print(f"               {incr['chunksChanged']} chunks changed, {incr['chunksInherited']} inherited unread; "
          f"inside the mover: {phases(incr)} (the rest is the process starting)")
    tr, tm = t["restore of the full backup (blocks-restore)"], t["rbd import FILE"]
    print(f"  restore:     {tr:.2f} s vs rbd import {tm:.2f} s = {tr / tm:.2f}x (goal <= 1.2x); content equal: {same}; "
          f"wrote {restored['bytesWritten'] / MiB:.0f} MiB, target allocated {restored_alloc / MiB:.0f} MiB "
          f"(rbd import: {imported_alloc / MiB:.0f} MiB)")
    print(f"  repository:  {repo_full / MiB:.0f} MiB after the full backup = {repo_full / allocated:.3f}x allocated "
          f"({allocated / MiB:.0f} MiB; {repo_full / written:.3f}x the data written), goal <= 1.05x; "
          f"+{(repo_both - repo_full) / MiB:.0f} MiB for the incremental; rbd export file {export_size / MiB:.0f} MiB")


if __name__ == "__main__":
    main()
