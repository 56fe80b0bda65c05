"""The operator's own latency (issue 16): VolumeRevert fast path, CR created → Succeeded.

A rollback is one Ceph call; everything else is the operator: kopf noticing the CR, its
API round trips (status writes, reads, locks, Events) and the Ceph calls around the data
step.  In one run, on a small image:

- the Ceph work alone, in-process: safety snapshot, exclusive lock + rollback, snapshot
  removal (what the revert does to Ceph);
- N reverts one after another through the operator: p50/p95 from the client's watch
  (create call → Succeeded seen; the API's timestamps have whole seconds only);
- what the operator adds: p50 − Ceph work.  Goal: p50 ≤ 0.2 s (so ≤ ~0.15 s added).

Run: ``.venv/bin/python bench/bench_latency.py [--runs 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from common import operator_namespace, sandbox

from helpers import volumes
from helpers.kube import phase_in, wait_custom
from savepoint.storage import ceph, rbd

MiB = 1 << 20
GOAL_P50 = 0.2


def ceph_work(cfg: object, ref: rbd.ImageRef) -> float:
    t0 = time.perf_counter()
    with volumes.cluster(cfg) as c:
        with rbd.open_ref(c, ref) as image:
            rbd.create_snapshot(image, "savepoint-safety-bench")
        with ceph.open_ioctx(c, ref.pool, ref.namespace) as ioctx, rbd.exclusive_lock(ioctx, ref.image) as image:
            rbd.rollback(image, "base")
        with rbd.open_ref(c, ref) as image:
            rbd.remove_snapshot(image, "savepoint-safety-bench")
    return time.perf_counter() - t0


def revert_once(ns: str) -> float:
    from kubernetes import client

    api = client.CustomObjectsApi()
    name = f"lat-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    api.create_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "volumereverts", {
        "apiVersion": "savepoint.dev/v1alpha1", "kind": "VolumeRevert", "metadata": {"name": name},
        "spec": {"volume": {"persistentVolumeClaim": {"name": "data"}}, "snapshot": {"rbdSnapshot": "base"}}})
    obj = wait_custom(api, ns, "volumereverts", name, phase_in("Succeeded", "Failed"), timeout=120)
    seen = time.perf_counter() - t0
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    api.delete_namespaced_custom_object("savepoint.dev", "v1alpha1", ns, "volumereverts", name)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    cfg = sandbox()
    with operator_namespace(cfg, "bench-latency") as ns:
        vol = volumes.rbd_pvc(cfg, ns, "data", size=64 * MiB, data={0: b"A" * 4096})
        try:
            with volumes.cluster(cfg) as c, rbd.open_ref(c, vol.ref) as image:
                rbd.create_snapshot(image, "base")
            work = statistics.median(ceph_work(cfg, vol.ref) for _ in range(5))
            revert_once(ns)  # the operator's first action warms its caches and connection
            seen = [revert_once(ns) for _ in range(args.runs)]
        finally:
            volumes.delete_rbd_volume(cfg, vol)
    p50, p95 = statistics.median(seen), statistics.quantiles(seen, n=20)[-1]
    print(f"VolumeRevert fast path, {args.runs} runs one after another (64 MiB image)")
    print(f"  Ceph work alone (snapshot, lock + rollback, snapshot removal)  {work:7.3f} s")
    print(f"  CR created -> Succeeded seen: p50 {p50:7.3f} s, p95 {p95:7.3f} s, min {min(seen):.3f} s, "
          f"max {max(seen):.3f} s")
    print(f"  the operator adds (p50 - Ceph work)                            {p50 - work:7.3f} s")
    print(f"  goal p50 <= {GOAL_P50} s: {'met' if p50 <= GOAL_P50 else 'missed'}")


if __name__ == "__main__":
    main()
