"""ImageSnapshot benchmark (issue 8): a 10 GiB thin image with 2 GiB written, in one run:

- direct path: an ImageSnapshot with ``method: Clone`` (snapshot, clone, flatten in a mover Job, ``snap``),
  create → Succeeded;
- fallback copy: an ImageSnapshot with ``method: Copy`` (the mover the ``Auto`` fallback runs: a sparse,
  verified copy of a source snapshot into a new image), create → Succeeded;
- naive: ``rbd export POOL/IMAGE@SNAP - | rbd import - images/NEW`` (what users do today);
- for reference, the data steps alone without the operator (clone + librbd flatten, the sparse verified copy
  in-process): what the operator's Kubernetes overhead (mover pod start, Job completion, reconciles) adds.

Also the destination allocation of each against the source's (thin must stay thin), and the bytes each
moved between clients and the OSD (a flatten copies the parent's data through the client that runs it).
Goals: direct ≥ 5x faster than naive, fallback ≥ 2x faster, allocation equal to the source's.

The sandbox OSD is a memstore of 8 GiB, shared with every other test session: at peak this benchmark holds
the source's data twice (source + one destination at a time). When that would take more than
``--headroom`` of the OSD's free space, image size and data are scaled down by the same factor (printed), so
the data/size ratio (20 %) stays. The three contenders scale linearly with data (direct, fallback) and with
image size plus data (naive), so the ratios carry over; fixed costs (a mover pod start, the operator's
reconcile) weigh more on a smaller run, which makes the operator's paths look slower than at full size.

Run: ``.venv/bin/python bench/bench_imagesnapshot.py [--size-gib 10] [--data-gib 2] [--headroom 0.4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
import uuid
from typing import Any

from common import Stopwatch, ceph_env, operator_namespace, print_moved, ratio, sandbox

from helpers import volumes
from helpers.kube import phase_in, wait_custom, wait_gone
from savepoint.storage import ceph, rbd, sparse

GiB, MiB = 1 << 30, 1 << 20
CHUNK = 4 * MiB
GROUP, VERSION, PLURAL = "savepoint.dev", "v1alpha1", "imagesnapshots"


def free_bytes(cfg: Any) -> int:
    out = subprocess.run(["ceph", "df", "-f", "json"], env=ceph_env(cfg), check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout)["stats"]["total_avail_bytes"])


def fill(c: Any, ref: rbd.ImageRef, data_bytes: int, size: int, seed: int) -> None:
    """``data_bytes`` of incompressible data in 4 MiB chunks spread over the image (each chunk distinct)."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(size // CHUNK), data_bytes // CHUNK))
    block = bytearray(os.urandom(CHUNK))
    with rbd.open_ref(c, ref) as image:
        for slot in slots:
            block[:8] = slot.to_bytes(8, "big")
            image.write(bytes(block), slot * CHUNK)


def allocated(c: Any, ref: rbd.ImageRef, snap: str | None = None) -> int:
    with rbd.open_ref(c, ref, snapshot=snap, read_only=True) as image:
        return rbd.allocated_bytes(image, whole_object=True)


def image_snapshot(namespace: str, method: str) -> tuple[dict[str, Any], list[int]]:
    """Create an ImageSnapshot and watch it to the end; returns it and the progress percentages seen."""
    from kubernetes import client

    api = client.CustomObjectsApi()
    name = f"bench-{method.lower()}-{uuid.uuid4().hex[:5]}"
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ImageSnapshot", "metadata": {"name": name},
        "spec": {"source": {"persistentVolumeClaim": {"name": "disk"}}, "method": method}})
    seen: list[int] = []

    def done(obj: dict[str, Any]) -> bool:
        st = obj.get("status") or {}
        percent = (st.get("progress") or {}).get("percent")
        if percent is not None and st.get("phase") == "Creating" and (not seen or seen[-1] != percent):
            seen.append(percent)
        return phase_in("Succeeded", "Failed")(obj)

    obj = wait_custom(api, namespace, PLURAL, name, done, timeout=3600)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    return obj, seen


def delete_image_snapshot(namespace: str, obj: dict[str, Any]) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi()
    name = obj["metadata"]["name"]
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_gone(lambda: api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name), timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=10)
    parser.add_argument("--data-gib", type=float, default=2, help="data written into the thin image")
    parser.add_argument("--headroom", type=float, default=0.4,
                        help="at most this fraction of the OSD's free space is used at peak (scales the run down)")
    args = parser.parse_args()
    cfg = sandbox()
    size, data = int(args.size_gib * GiB), int(args.data_gib * GiB)
    avail = free_bytes(cfg)
    scale = min(1.0, args.headroom * avail / (2 * data))
    if scale < 1:
        size = int(size * scale) // CHUNK * CHUNK
        data = int(data * scale) // CHUNK * CHUNK
        print(f"scaled down to {scale:.2f}x: the OSD has {avail / GiB:.1f} GiB free and this run may use "
              f"{args.headroom:.0%} of it (source + one destination = 2 x data)")
    print(f"ImageSnapshot: {size / GiB:.2f} GiB thin image, {data / GiB:.2f} GiB written "
          f"({data // CHUNK} objects of 4 MiB)")
    watch = Stopwatch(cfg)
    alloc: dict[str, int] = {}
    progress: dict[str, list[int]] = {}
    with operator_namespace(cfg, "bench-isnap") as ns:
        vol = volumes.rbd_pvc(cfg, ns, "disk", size=size)
        naive = rbd.ImageRef("images", f"bench-naive-{uuid.uuid4().hex[:6]}")
        bare = rbd.ImageRef("images", f"bench-bare-{uuid.uuid4().hex[:6]}")
        try:
            with volumes.cluster(cfg) as c:
                t0 = time.perf_counter()
                fill(c, vol.ref, data, size, seed=1)
                print(f"  (wrote {data / GiB:.2f} GiB in {time.perf_counter() - t0:.1f} s)")
                alloc["source"] = allocated(c, vol.ref)
            for label, method in (("direct path (snapshot, clone, flatten)", "Clone"),
                                  ("fallback copy (sparse, verified)", "Copy")):
                with watch.time(label):
                    obj, progress[label] = image_snapshot(ns, method)
                assert obj["status"]["method"] == method
                image = rbd.ImageRef(obj["status"]["image"]["pool"], obj["status"]["image"]["name"])
                with volumes.cluster(cfg) as c:
                    alloc[label] = allocated(c, image)
                    with rbd.open_ref(c, image, read_only=True) as handle:
                        assert rbd.image_info(handle).parent is None
                delete_image_snapshot(ns, obj)
            with volumes.cluster(cfg) as c, rbd.open_ref(c, vol.ref) as image:
                rbd.create_snapshot(image, "naive")
            with watch.time("naive rbd export | rbd import"):
                subprocess.run(f"rbd export {vol.ref.pool}/{vol.ref.image}@naive - | "
                               f"rbd import - {naive.pool}/{naive.image}", shell=True, check=True, env=ceph_env(cfg),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with volumes.cluster(cfg) as c:
                alloc["naive rbd export | rbd import"] = allocated(c, naive)
                rbd.remove_image(c, naive)
                with watch.time("(data step alone: clone + flatten)"):
                    rbd.clone(c, vol.ref, "naive", bare)
                    with rbd.open_ref(c, bare) as image:
                        rbd.flatten(image)
                alloc["(data step alone: clone + flatten)"] = allocated(c, bare)
                rbd.remove_image(c, bare)
                with watch.time("(data step alone: sparse verified copy)"):
                    rbd.create_image(c, bare, size)
                    with ceph.open_ioctx(c, vol.ref.pool) as src, ceph.open_ioctx(c, bare.pool) as dst:
                        sparse.copy_image(src, vol.ref.image, "naive", dst, bare.image, verify=True)
                alloc["(data step alone: sparse verified copy)"] = allocated(c, bare)
                rbd.remove_image(c, bare)
        finally:
            with volumes.cluster(cfg) as c:
                for leftover in (naive, bare):
                    rbd.remove_image(c, leftover, purge_snapshots=True)
            volumes.delete_rbd_volume(cfg, vol)
    r = watch.results
    base = r["naive rbd export | rbd import"]
    print()
    print(f"{'':42s} {'time':>9s} {'vs naive':>9s} {'allocated':>12s} {'vs source':>9s}")
    print(f"{'source image':42s} {'':9s} {'':9s} {alloc['source'] / MiB:9.0f} MiB {'':9s}")
    for label, seconds in r.items():
        print(f"{label:42s} {seconds:7.2f} s {ratio(base, seconds):>9s} {alloc[label] / MiB:9.0f} MiB "
              f"{alloc[label] / alloc['source']:8.2f}x")
    direct, copy = r["direct path (snapshot, clone, flatten)"], r["fallback copy (sparse, verified)"]
    print(f"direct path:   {ratio(base, direct).strip()} faster than naive (goal 5x)")
    print(f"fallback copy: {ratio(base, copy).strip()} faster than naive (goal 2x)")
    for label, seen in progress.items():
        print(f"progress seen in status during {label}: {seen or 'none (finished between two reports)'}")
    print_moved(watch, alloc["source"])


if __name__ == "__main__":
    main()
