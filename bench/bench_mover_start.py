"""Mover start-up benchmark (issue 16): how long ``python -m savepoint.mover`` takes before and around its
action, on this checkout and, when given, on another checkout (``--compare /work/main``) in the same run.

- ``imports``: a process importing the entry point and the ``rbd-copy`` action module (wall time);
- ``no-op run``: the whole process for an unknown action (parse, import, verdict written): start-up alone;
- ``rbd-copy of a 4 MiB image``: the whole process including the Ceph connection and a tiny copy.

Goal: a mover starts its action in <= 0.3 s.  Each figure is the median of ``--runs`` (7).
Run: ``.venv/bin/python bench/bench_mover_start.py [--compare /work/main]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack")]

from sandboxlib import ceph as sandbox_ceph  # noqa: E402
from sandboxlib import config  # noqa: E402
from savepoint.storage import ceph, rbd  # noqa: E402

MiB = 1 << 20


def median_run(python: str, env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-m", "savepoint.mover"], env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def import_seconds(python: str, runs: int) -> float:
    """Wall time of importing the entry point and the rbd-copy action, the interpreter's own start included."""
    code = "import savepoint.mover.__main__; from savepoint.mover import registry; registry.get('rbd-copy')"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", code], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, action="append", default=[], help="another checkout (its .venv)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "ceph"], check=True, stdout=subprocess.DEVNULL)
    cfg = config.load()
    user, key = sandbox_ceph.csi_credentials(cfg)
    creds = ceph.CephCredentials(monitors=sandbox_ceph.monitors(cfg), user_id=user, key=key)
    src, dst = (rbd.ImageRef("rbd", f"bench-start-{uuid.uuid4().hex[:6]}-{n}") for n in ("src", "dst"))
    work = Path(tempfile.mkdtemp(prefix="bench-mover-start-"))
    base_env = {**os.environ, "SAVEPOINT_TERMINATION_LOG": str(work / "result.json"),
                "SAVEPOINT_CEPH_MONITORS": ",".join(creds.monitors), "SAVEPOINT_CEPH_USER_ID": creds.user_id,
                "SAVEPOINT_CEPH_KEY": creds.key}
    noop = {**base_env, "SAVEPOINT_MOVER_REQUEST": json.dumps({"action": "bench-no-such-action", "params": {}})}
    copy = {**base_env, "SAVEPOINT_MOVER_REQUEST": json.dumps({"action": "rbd-copy", "params": {
        "source": {"pool": "rbd", "image": src.image, "snapshot": "s"},
        "destination": {"pool": "rbd", "image": dst.image}, "verify": True}, "needs_ceph": True})}
    checkouts = [ROOT, *args.compare]
    print(f"mover start-up, median of {args.runs} runs")
    with ceph.connect(creds) as c:
        rbd.create_image(c, src, 4 * MiB)
        rbd.create_image(c, dst, 4 * MiB)
        with rbd.open_ref(c, src) as image:
            image.write(b"x" * MiB, 0)
            rbd.create_snapshot(image, "s")
        try:
            bare = median_run(sys.executable, {**noop, "SAVEPOINT_MOVER_REQUEST": ""}, 1)  # warm the page cache
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare = time.perf_counter() - t0
            print(f"  python -c pass (the interpreter alone)      {bare:6.3f} s")
            for checkout in checkouts:
                python = str(checkout / ".venv" / "bin" / "python")
                print(f"  {checkout}:")
                print(f"    imports (entry point + rbd-copy), wall      {import_seconds(python, args.runs):6.3f} s")
                print(f"    no-op run (start-up, verdict written)     {median_run(python, noop, args.runs):6.3f} s")
                print(f"    rbd-copy of a 4 MiB image (with Ceph)     {median_run(python, copy, args.runs):6.3f} s")
            print("  goal: a mover starts its action in <= 0.3 s (the no-op run)")
        finally:
            rbd.remove_image(c, src, purge_snapshots=True)
            rbd.remove_image(c, dst, purge_snapshots=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
