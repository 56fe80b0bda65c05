"""VolumeRevert benchmark (issue 5): on a 10 GiB image with 1 % rewritten after
the snapshot, in one run:

- fast path: a VolumeRevert to an RBD snapshot (rollback), create → Succeeded;
- generic path: a VolumeRevert to a CSI VolumeSnapshot (mover Job, sparse copy);
- naive: ``rbd export IMAGE@SNAP - | rbd import - NEW`` (what users do today).

Goals: fast path < 1 s and >= 50x faster than naive; generic >= 3x faster.  Each step also prints the bytes it
moved between clients and the OSD (rollback: ~0; naive: 2x the data).  The generic path runs in a mover
pod, which the sandbox's pod runner starts from the checkout the sandbox was brought up from.
Run: ``.venv/bin/python bench/bench_revert.py [--size-gib 10] [--data-gib 1]``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import uuid

from common import Stopwatch, ceph_env, operator_namespace, print_moved, ratio, sandbox

from helpers import volumes
from helpers.kube import phase_in, wait_custom
from savepoint.storage import rbd

GiB, MiB = 1 << 30, 1 << 20
CHUNK = 4 * MiB


def fill(c: object, ref: rbd.ImageRef, data_bytes: int, size: int, seed: int) -> None:
    """``data_bytes`` of incompressible data in 4 MiB chunks spread over the image."""
    rng = random.Random(seed)
    slots = rng.sample(range(size // CHUNK), data_bytes // CHUNK)
    block = os.urandom(CHUNK)
    with rbd.open_ref(c, ref) as image:
        for slot in slots:
            image.write(block, slot * CHUNK)


def revert_and_wait(namespace: str, snapshot: dict) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi()
    name = f"bench-{uuid.uuid4().hex[:6]}"
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", namespace, "volumereverts", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": snapshot}})
    obj = wait_custom(api, namespace, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout=1800)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=10)
    parser.add_argument("--data-gib", type=float, default=1, help="data in the image before the snapshot")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of the image rewritten")
    args = parser.parse_args()
    size = int(args.size_gib * GiB)
    changed = max(CHUNK, int(size * args.changed) // CHUNK * CHUNK)
    cfg = sandbox()
    watch = Stopwatch(cfg)
    print(f"VolumeRevert: {args.size_gib:g} GiB image, {args.data_gib:g} GiB data, "
          f"{changed // MiB} MiB rewritten after the snapshot")
    with operator_namespace(cfg, "bench-revert") as ns:
        vol = volumes.rbd_pvc(cfg, ns, "data", size=size)
        naive = rbd.ImageRef(vol.ref.pool, f"bench-naive-{uuid.uuid4().hex[:6]}")
        snap = None
        try:
            with volumes.cluster(cfg) as c:
                fill(c, vol.ref, int(args.data_gib * GiB), size, seed=1)
                with rbd.open_ref(c, vol.ref) as image:
                    rbd.create_snapshot(image, "base")
            snap = volumes.csi_snapshot(cfg, vol, "base-vs")
            with volumes.cluster(cfg) as c:
                fill(c, vol.ref, changed, size, seed=2)
            with watch.time("fast path (rollback via operator)"):
                revert_and_wait(ns, {"rbdSnapshot": "base"})
            with volumes.cluster(cfg) as c:
                fill(c, vol.ref, changed, size, seed=3)
            with watch.time("generic path (mover copy via operator)"):
                revert_and_wait(ns, {"volumeSnapshot": {"name": "base-vs"}})
            with volumes.cluster(cfg) as c:
                fill(c, vol.ref, changed, size, seed=4)
            env = ceph_env(cfg)
            with watch.time("naive rbd export | rbd import"):
                subprocess.run(f"rbd export {vol.ref.pool}/{vol.ref.image}@base - | "
                               f"rbd import - {naive.pool}/{naive.image}", shell=True, check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            with volumes.cluster(cfg) as c:
                rbd.remove_image(c, naive)
            if snap:
                volumes.delete_csi_snapshot(cfg, snap)
            volumes.delete_rbd_volume(cfg, vol)
    r = watch.results
    base = r["naive rbd export | rbd import"]
    fast = r["fast path (rollback via operator)"]
    generic = r["generic path (mover copy via operator)"]
    print(f"fast path:    {fast:.3f} s ({'<' if fast < 1 else '>='} 1 s goal), {ratio(base, fast)} faster than naive (goal 50x)")
    print(f"generic path: {generic:.3f} s, {ratio(base, generic)} faster than naive (goal 3x; 10x with 1 % changed)")
    print_moved(watch, int(args.data_gib * GiB))


if __name__ == "__main__":
    main()
