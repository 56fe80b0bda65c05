"""SavepointSchedule benchmark (issue 14): N schedules (default 500) in one namespace, all firing in
the same second (cron ``* * * * *``, no jitter), for a few minutes, on the sandbox.

Measured:
- slot → child-created latency: when the child's ADDED event reaches this process (a watch on the
  children), minus its slot (from its name); p50, p95, max;
- the operator's CPU seconds and RSS growth over the measured minutes (/proc of its process);
- API requests per run, from the API server's own ``apiserver_request_total`` (by verb and resource,
  before and after), for the schedules, their status and their children — and whether LIST requests
  grow with schedules × children (they must not: one label-selected list per finished run at most).

Children are VolumeSnapshots: no snapshot controller runs here, so they stay as created and nothing
else reconciles them — what is measured is the schedule controller alone. ``concurrencyPolicy:
Allow`` so every minute makes a new child of every schedule.
Goals: p95 ≤ 2 s, RSS growth ≤ 50 MiB, requests per run constant.

Run: ``.venv/bin/python bench/bench_schedules.py [--schedules 500] [--minutes 2]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import threading
import time
import uuid
from collections import Counter
from typing import Any

from common import _free_port, sandbox

from helpers import chart
from helpers.operator_proc import OperatorProcess
from helpers.operator_sa import operator_kubeconfig
from savepoint import cron

GROUP, VERSION = "savepoint.dev", "v1alpha1"
TRACKED = ("savepointschedules", "volumesnapshots")


def apiserver_requests(api_client: Any) -> Counter[tuple[str, str, str]]:
    """(verb, resource, subresource) → count, from the API server's /metrics."""
    method, url, headers, body, post = api_client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, headers, body, post)
    response.read()
    text = response.data.decode()
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("resource") in TRACKED:
            counts[(labels["verb"], labels["resource"], labels.get("subresource", ""))] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and RSS bytes of a process."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=2)
    parser.add_argument("--jitter", type=int, default=0,
                        help="spec.jitterSeconds; latency is then measured from each run's start (slot + offset)")
    args = parser.parse_args()
    cfg = sandbox()
    from kubernetes import client, watch

    env = chart.install(cfg)
    chart.apply_crds(cfg)
    from helpers.schedule_rbac import schedule_rbac

    rbac = schedule_rbac(cfg)
    rbac.__enter__()
    namespace = f"bench-sched-{uuid.uuid4().hex[:6]}"
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    core.create_namespace({"metadata": {"name": namespace}})
    env.update(SAVEPOINT_WATCH_NAMESPACES=namespace, SAVEPOINT_METRICS_PORT=str(_free_port()))
    proc = OperatorProcess(cfg.venv, operator_kubeconfig(cfg), cfg.logs / f"operator-{namespace}.log", env, _free_port())
    proc.verbose, proc.log_format = False, "json"  # as the chart runs it: kopf's debug log would be most of the cost
    proc.start()
    latencies: list[float] = []
    stop = threading.Event()

    seen: set[str] = set()
    offsets: dict[str, int] = {}  # schedule name -> its jitter offset

    def watch_children(window_start: dt.datetime) -> None:
        """ADDED events of children of slots in the window, each name once (a re-list repeats them)."""
        version = None
        while not stop.is_set():
            w = watch.Watch()
            kwargs = {"resource_version": version} if version else {}
            for event in w.stream(custom.list_namespaced_custom_object, "snapshot.storage.k8s.io", "v1", namespace,
                                  "volumesnapshots", timeout_seconds=30, **kwargs):
                version = event["object"]["metadata"].get("resourceVersion") or version
                name = event["object"]["metadata"]["name"]
                slot = cron.slot_of_child(name.rsplit("-", 2)[0], name)
                if event["type"] == "ADDED" and slot is not None and slot >= window_start and name not in seen:
                    seen.add(name)
                    offset = offsets.get(name.rsplit("-", 2)[0], 0)
                    latencies.append((dt.datetime.now(dt.UTC) - slot).total_seconds() - offset)
                if stop.is_set():
                    w.stop()

    try:
        print(f"creating {args.schedules} schedules in {namespace}", flush=True)
        for i in range(args.schedules):
            made = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "savepointschedules", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "SavepointSchedule", "metadata": {"name": f"s{i:04d}"},
                "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Allow", "jitterSeconds": args.jitter,
                         "template": {"volumeSnapshot": {"persistentVolumeClaim": {"name": "data"}}}}})
            offsets[f"s{i:04d}"] = cron.jitter_offset(made["metadata"]["uid"], args.jitter, 60)
        # Start measuring at a minute boundary that all daemons have seen coming.
        now = time.time()
        start = (int(now) // 60 + (2 if now % 60 > 30 else 1)) * 60 - 2
        while time.time() < start:
            time.sleep(0.2)
        thread = threading.Thread(target=watch_children, args=(dt.datetime.fromtimestamp(start + 2, dt.UTC),),
                                  daemon=True)
        thread.start()
        api_client = client.ApiClient()
        before = apiserver_requests(api_client)
        cpu0, rss0 = proc_stats(proc.proc.pid)  # type: ignore[union-attr]
        end = start + 2 + 60 * args.minutes - 5  # after the last measured minute's burst
        while time.time() < end:
            time.sleep(0.5)
        cpu1, rss1 = proc_stats(proc.proc.pid)  # type: ignore[union-attr]
        after = apiserver_requests(api_client)
        stop.set()
        runs = len(latencies)
        delta = after - before
        print(f"\nruns measured: {runs} ({args.schedules} schedules x {args.minutes} minute(s))")
        if latencies:
            q = statistics.quantiles(latencies, n=100)
            print(f"{'start (slot + jitter offset)' if args.jitter else 'slot'} -> child created: p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, max {max(latencies):.2f} s")
        print(f"operator CPU: {cpu1 - cpu0:.1f} s over {end - start:.0f} s; RSS {rss0 / 2**20:.0f} MiB -> "
              f"{rss1 / 2**20:.0f} MiB (growth {(rss1 - rss0) / 2**20:+.1f} MiB)")
        print("API requests per run (apiserver_request_total, schedules and their children):")
        for (verb, resource, sub), count in sorted(delta.items()):
            print(f"  {verb:7s} {resource}{'/' + sub if sub else '':28s} {count:6d}  {count / max(runs, 1):.2f}/run")
        lists = sum(c for (verb, _, _), c in delta.items() if verb == "LIST")
        print(f"  LIST in total: {lists} ({lists / max(runs, 1):.3f}/run)")
    finally:
        stop.set()
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "savepointschedules")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "savepointschedules", limit=1)["items"]:
            time.sleep(0.5)
        proc.stop()
        core.delete_namespace(namespace)
        rbac.__exit__(None, None, None)


if __name__ == "__main__":
    main()
