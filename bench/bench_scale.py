"""Scale benchmark (issue 16): many actions at once, and many idle CRs, in one namespace served by one
operator from this checkout (the chart's ServiceAccount), the CRs created by the namespace's user
(its ``edit`` ServiceAccount, helpers/tenant.py).

1. Burst: ``--reverts`` VolumeReverts (fast path: rollback to an RBD snapshot) of as many small RBD-backed
   claims (16-64 MiB) created at once. Printed: time until all are final; per CR, creation → final, p50
   and p95, from this benchmark's watch (sub-millisecond clock: create call returned → watch event) and
   from the operator's own times (creationTimestamp → status.completionTime: both have a resolution of
   one second), and the operator's own split of that (creation → startTime: waiting for a worker;
   startTime → completionTime: in the handler); the operator's CPU time, and its RSS (VmRSS of its
   process, sampled every 50 ms) before and at its peak. The operator runs as the chart runs it, without
   ``--verbose`` (``--verbose``: with kopf's debug log; ``--count-burst``: its requests counted, through
   the hop below; ``--py-spy FILE``: sampled by py-spy while the burst runs).
   Baseline in the same run: the same rollbacks done in this process through librbd (open the image,
   ``rbd snap rollback``, close), one after the other and with a thread pool.
   Goals: all final <= 5 s, per-CR p95 <= 3 s, RSS peak <= 150 MiB.
2. Idle: the operator is restarted, its API traffic now counted (bench/common.py, ``ApiCounter``), and
   CRs that end at once are added (VolumeReverts, ShareBackups and ImageSnapshots of a claim that does
   not exist, ShareRestores of a backup that does not exist) until ``--idle`` CRs are there, the
   burst's finished reverts included. Printed: time until all settled, RSS then, and the operator's API
   requests over ``--idle-seconds`` of idleness (by kind of request), with the API server's own count of
   every client's requests over the same window beside it (apiserver_request_total, noisy: the sandbox
   is shared), then RSS and requests after one more restart with all of them present (live state, not
   the high water of settling them). Goals: RSS <= 150 MiB and no periodic work proportional to the
   number of CRs (judged by the requests addressed to single objects while idle).

Run: ``.venv/bin/python bench/bench_scale.py [--reverts 100 --idle 1000 | --quick]``. The machine has
2 cores and is shared: the figures are noisy.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import logging
import math
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from common import ApiCounter, Served, Stopwatch, sandbox, served_namespace

from helpers import volumes
from savepoint.storage import rbd

MiB = 1 << 20
GROUP, VERSION = "savepoint.dev", "v1alpha1"
KINDS = {"volumereverts": "VolumeRevert", "sharebackups": "ShareBackup", "sharerestores": "ShareRestore",
         "imagesnapshots": "ImageSnapshot"}
FINAL = {"Succeeded", "Failed", "Available"}
GOAL_ALL_FINAL, GOAL_P95, GOAL_RSS_MIB = 5.0, 3.0, 150.0
WORKERS = 16  # client threads creating CRs (and the baseline's pool): as many as the operator's workers
CHANGED = 1 * MiB  # written before the snapshot and again after it: what a rollback puts back


# --- measuring ------------------------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


START = time.monotonic()


def step(what: str) -> None:
    """A line of the timeline: where the run's minutes go (setup and cleanup included)."""
    print(f"  [{time.monotonic() - START:6.1f} s] {what}", flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """VmRSS of one process every ``interval`` seconds from a thread: ``peak`` since ``reset()``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = self.last = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.last = rss_mib(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, self.last)

    def reset(self) -> float:
        self.peak = self.last = rss_mib(self.pid)
        return self.last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Finals:
    """Watches (as admin) the namespace's CRs of ``plurals``; notes when each is first seen final."""

    def __init__(self, namespace: str, plurals: tuple[str, ...]) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi()
        self.namespace = namespace
        self.final: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(p,), name=f"watch-{p}", daemon=True)
                         for p in plurals]
        ready = [threading.Event() for _ in plurals]
        self._ready = dict(zip(plurals, ready))
        for t in self._threads:
            t.start()
        for e in ready:
            e.wait(30)

    def _note(self, plural: str, obj: dict[str, Any], now: float) -> None:
        key = (plural, obj["metadata"]["name"])
        with self.changed:
            self.seen[key] = obj
            if (obj.get("status") or {}).get("phase") in FINAL and key not in self.final:
                self.final[key] = (now, obj)
                self.changed.notify_all()

    def _watch(self, plural: str) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)
            now = time.monotonic()
            for obj in listed["items"]:
                self._note(plural, obj, now)
            self._ready[plural].set()
            w = watch.Watch()
            try:
                for event in w.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural,
                                      resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=60,
                                      allow_watch_bookmarks=False):
                    if self._stop.is_set():
                        w.stop()
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._note(plural, event["object"], time.monotonic())
            except Exception:  # noqa: BLE001 - e.g. 410 Gone: list again
                time.sleep(0.2)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        self._stop.set()


def wait_quiet(counter: ApiCounter, quiet: float, timeout: float) -> float:
    """Until the operator has sent no request but a new watch for ``quiet`` seconds; returns when it last did."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [r.at for r in counter.between(time.monotonic() - quiet) if not r.watch]
        if not busy or time.monotonic() > deadline:
            last = [r.at for r in counter.requests if not r.watch]
            return last[-1] if last else time.monotonic()
        time.sleep(0.25)


def apiserver_requests() -> collections.Counter[str]:
    """The API server's apiserver_request_total (every client), by ``verb resource``."""
    from kubernetes import client

    api = client.ApiClient()
    text = api.call_api("GET", f"{api.configuration.host}/metrics").read().decode()
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[f"{labels.get('verb')} {labels.get('resource')}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def verdict(value: float, goal: float, unit: str) -> str:
    return f"goal <= {goal:g} {unit}: {'met' if value <= goal else 'MISSED'}"


def tenant_custom(served: Served) -> Any:
    """The tenant's CustomObjectsApi with enough pooled connections for ``WORKERS`` threads."""
    from kubernetes import client, config

    conf = client.Configuration()
    config.load_kube_config(config_file=str(served.tenant.kubeconfig), client_configuration=conf)
    conf.connection_pool_maxsize = WORKERS * 2
    return client.CustomObjectsApi(client.ApiClient(conf))


def create_all(custom: Any, namespace: str, bodies: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
    """Create ``(plural, body)`` all at once from ``WORKERS`` threads; returns when each create returned."""
    returned: dict[str, float] = {}

    def create(item: tuple[str, dict[str, Any]]) -> None:
        plural, body = item
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        returned[body["metadata"]["name"]] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(create, bodies))
    return returned


def body(plural: str, name: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return plural, {"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], "metadata": {"name": name},
                    "spec": spec}


# --- 1. the burst -----------------------------------------------------------------------------------------

def make_volumes(cfg: Any, served: Served, n: int) -> list[volumes.RbdVolume]:
    """``n`` claims of 16-64 MiB, each with snapshot ``base`` and 1 MiB rewritten after it."""
    rng = random.Random(16)
    sizes = [rng.choice((16, 32, 48, 64)) * MiB for _ in range(n)]
    before, after = os.urandom(CHANGED), os.urandom(CHANGED)

    def make(i: int) -> volumes.RbdVolume:
        return volumes.rbd_pvc(cfg, served.namespace, f"vol-{i:04d}", size=sizes[i], data={0: before},
                               claims=served.tenant.core)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(make, i) for i in range(n)]
    made = [f.result() for f in futures if not f.exception()]
    failed = [f.exception() for f in futures if f.exception()]
    if failed:
        delete_volumes(cfg, made)
        raise failed[0]  # type: ignore[misc]
    try:
        with volumes.cluster(cfg) as c:
            for vol in made:
                with rbd.open_ref(c, vol.ref) as image:
                    rbd.create_snapshot(image, "base")
                    image.write(after, 0)
    except BaseException:
        delete_volumes(cfg, made)
        raise
    return made


def delete_volumes(cfg: Any, vols: list[volumes.RbdVolume]) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(volumes.delete_rbd_volume, cfg, v) for v in vols]:
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"  cleanup: {exc}")


def baseline(cfg: Any, vols: list[volumes.RbdVolume], watch: Stopwatch) -> None:
    """The pure Ceph work: open, ``rbd snap rollback`` to base, close; each image changed again first."""
    after = os.urandom(CHANGED)
    with volumes.cluster(cfg) as c:
        def rewrite() -> None:
            for vol in vols:
                with rbd.open_ref(c, vol.ref) as image:
                    image.write(after, 0)

        def roll(vol: volumes.RbdVolume) -> None:
            with rbd.open_ref(c, vol.ref) as image:
                rbd.rollback(image, "base")

        rewrite()
        with watch.time(f"baseline: {len(vols)} rollbacks, sequential"):
            for vol in vols:
                roll(vol)
        rewrite()
        with watch.time(f"baseline: {len(vols)} rollbacks, {WORKERS} threads"):
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(roll, vols))


def burst(cfg: Any, served: Served, n: int, watch: Stopwatch, profile: Path | None,
          counter: ApiCounter | None) -> dict[str, Any]:
    step("namespace, tenant and operator ready")
    vols = make_volumes(cfg, served, n)
    step(f"{n} claims of 16-64 MiB ready (snapshot base, {CHANGED // MiB} MiB rewritten after it)")
    try:
        custom = tenant_custom(served)
        pid = served.proc.proc.pid
        sampler = RssSampler(pid)
        finals = Finals(served.namespace, ("volumereverts",))
        time.sleep(2)  # let the operator settle after seeing the claims
        rss_before = sampler.reset()
        spy = None
        if profile:
            spy = subprocess.Popen([str(Path(cfg.venv) / "bin" / "py-spy"), "record", "--pid", str(pid), "--rate",
                                    "50", "--format", "raw", "--output", str(profile), "--threads"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        server_before = apiserver_requests()
        cpu_before = cpu_seconds(pid)
        names = [f"revert-{i:04d}" for i in range(n)]
        bodies = [body("volumereverts", name, {"volume": {"persistentVolumeClaim": {"name": vol.pvc}},
                                               "snapshot": {"rbdSnapshot": "base"}}) for name, vol in zip(names, vols)]
        t0 = time.monotonic()
        returned = create_all(custom, served.namespace, bodies)
        created_in = time.monotonic() - t0
        all_done = finals.wait(lambda: all(("volumereverts", m) in finals.final for m in names), timeout=600)
        t_all = max((finals.final[("volumereverts", m)][0] for m in names if ("volumereverts", m) in finals.final),
                    default=time.monotonic()) - t0
        t_end = time.monotonic()
        cpu = cpu_seconds(pid) - cpu_before
        time.sleep(1)
        rss_peak = sampler.peak
        counted = counter.between(t0, t_end + 0.5) if counter else None
        server_after = apiserver_requests()
        if spy:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(60)
        finals.stop()
        sampler.stop()
        watched = [finals.final[("volumereverts", m)][0] - returned[m] for m in names if ("volumereverts", m) in finals.final]
        objs = [finals.final[("volumereverts", m)][1] for m in names if ("volumereverts", m) in finals.final]
        recorded = [ts(o["status"]["completionTime"]) - ts(o["metadata"]["creationTimestamp"]) for o in objs
                    if o["status"].get("completionTime")]
        reaction = [ts(o["status"]["startTime"]) - ts(o["metadata"]["creationTimestamp"]) for o in objs
                    if o["status"].get("startTime")]
        handling = [ts(o["status"]["completionTime"]) - ts(o["status"]["startTime"]) for o in objs
                    if o["status"].get("startTime") and o["status"].get("completionTime")]
        outcomes = collections.Counter(f"{o['status']['phase']}/{_reason(o)}" for o in objs)
        step("burst over")
        baseline(cfg, vols, watch)
    finally:
        delete_volumes(cfg, vols)
        step("claims' images and PVs deleted")
    delta = server_after - server_before
    return dict(n=n, all_done=all_done, created_in=created_in, t_all=t_all, watched=watched, recorded=recorded,
                reaction=reaction, handling=handling, cpu=cpu, outcomes=outcomes, rss_before=rss_before, rss_peak=rss_peak,
                server_delta=delta, counted=counted)


def _reason(obj: dict[str, Any]) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason"))
    return "?"


def print_burst(r: dict[str, Any], watch: Stopwatch) -> None:
    n = r["n"]
    seq = watch.results[f"baseline: {n} rollbacks, sequential"]
    par = watch.results[f"baseline: {n} rollbacks, {WORKERS} threads"]
    print(f"\n1. {n} VolumeReverts (rollback) created at once by the namespace's user "
          f"(creates took {r['created_in']:.2f} s from {WORKERS} threads)")
    print(f"   outcomes: {dict(r['outcomes'])}{'' if r['all_done'] else '  (NOT all final after 600 s)'}")
    print(f"   all final:            {r['t_all']:7.2f} s   ({verdict(r['t_all'], GOAL_ALL_FINAL, 's')})")
    w = r["watched"]
    print(f"   per CR, watched:      p50 {percentile(w, 50):6.2f} s   p95 {percentile(w, 95):6.2f} s   "
          f"max {max(w, default=float('nan')):6.2f} s   (p95 {verdict(percentile(w, 95), GOAL_P95, 's')})")
    rec = r["recorded"]
    print(f"   per CR, operator's:   p50 {percentile(rec, 50):6.0f} s   p95 {percentile(rec, 95):6.0f} s   "
          "(creationTimestamp -> completionTime, both to the second)")
    re_ = r["reaction"]
    print(f"   first status write:   p50 {percentile(re_, 50):6.0f} s   p95 {percentile(re_, 95):6.0f} s   "
          "(creationTimestamp -> startTime, to the second)")
    h = r["handling"]
    print(f"   in its handler:       p50 {percentile(h, 50):6.0f} s   p95 {percentile(h, 95):6.0f} s   "
          "(startTime -> completionTime, to the second)")
    print(f"   operator CPU:         {r['cpu']:.2f} s user+system while they ran ({r['cpu'] / max(r['t_all'], 1e-9):.2f} "
          f"cores on average)")
    print(f"   operator RSS:         before {r['rss_before']:6.1f} MiB   peak {r['rss_peak']:6.1f} MiB   "
          f"({verdict(r['rss_peak'], GOAL_RSS_MIB, 'MiB')})")
    print(f"   baseline (librbd in this process): sequential {seq:.3f} s ({seq / n * 1000:.1f} ms each), "
          f"{WORKERS} threads {par:.3f} s")
    print(f"   all final / the Ceph work: {r['t_all'] / seq:.1f}x the sequential, {r['t_all'] / par:.1f}x the "
          f"threaded baseline; per CR p50 {percentile(w, 50) / (seq / n):.0f}x one sequential rollback")
    d = r["server_delta"]
    top = ", ".join(f"{k} {v}" for k, v in d.most_common(8))
    print(f"   API server, every client, during the burst: {sum(d.values())} requests "
          f"({sum(d.values()) / n:.1f} per revert, noisy: shared sandbox); top: {top}")
    if r["counted"] is not None:
        c = r["counted"]
        print(f"   the operator's own requests (--count-burst: through the counting hop, so the times above include "
              f"it): {len(c)} = {len(c) / n:.1f} per revert: {describe(c, 14)}; by client: {agents(c)}")


# --- 2. idle CRs ------------------------------------------------------------------------------------------

def idle_bodies(count: int) -> list[tuple[str, dict[str, Any]]]:
    """CRs that end at once: a claim, or a backup, that does not exist."""
    makers = [
        lambda i: body("volumereverts", f"idle-vr-{i:04d}",
                       {"volume": {"persistentVolumeClaim": {"name": f"missing-{i}"}},
                        "snapshot": {"rbdSnapshot": "base"}}),
        lambda i: body("sharebackups", f"idle-sb-{i:04d}", {"source": {"persistentVolumeClaim": {"name": f"missing-{i}"}}}),
        lambda i: body("imagesnapshots", f"idle-is-{i:04d}", {"source": {"persistentVolumeClaim": {"name": f"missing-{i}"}}}),
        lambda i: body("sharerestores", f"idle-sr-{i:04d}", {"backup": {"name": f"missing-{i}"}}),
    ]
    return [makers[i % len(makers)](i) for i in range(count)]


def describe(requests: list[Any], top: int = 8) -> str:
    kinds = collections.Counter(_kind(r) for r in requests)
    return ", ".join(f"{k} {v}" for k, v in kinds.most_common(top)) or "none"


def agents(requests: list[Any]) -> str:
    """Requests by client library: kopf's own (watches, finalizers, its annotations) and the operator's."""
    return ", ".join(f"{k} {v}" for k, v in collections.Counter(r.agent.split("/")[0] for r in requests).most_common())


def _kind(request: Any) -> str:
    """``PATCH volumereverts/*/status``, ``LIST pods``, ``WATCH persistentvolumeclaims``, ``GET /api``, ..."""
    parts = [p for p in request.path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"] and len(parts) > 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        rest = parts[3:]
    else:
        return f"{request.method} {request.path.split('?')[0]}"  # discovery
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    verb = request.method
    if verb == "GET" and len(rest) == 1:
        verb = "WATCH" if request.watch else "LIST"
    return f"{verb} " + "/".join("*" if i == 1 else p for i, p in enumerate(rest))


def idle(cfg: Any, served: Served, total: int, seconds: float, counter: ApiCounter) -> dict[str, Any]:
    proc = served.proc
    try:
        t_start = count_through(proc, counter)
        step("operator restarted through the counter")
        sampler = RssSampler(proc.proc.pid)
        existing = sum(len(served.tenant.custom.list_namespaced_custom_object(GROUP, VERSION, served.namespace, p)["items"])
                       for p in KINDS)
        resumed_at = wait_quiet(counter, quiet=3, timeout=300)
        resumed = counter.between(t_start, resumed_at + 0.001)
        rss_resumed = sampler.last
        bodies = idle_bodies(max(0, total - existing))
        finals = Finals(served.namespace, tuple(KINDS))
        custom = tenant_custom(served)
        t0 = time.monotonic()
        create_all(custom, served.namespace, bodies)
        created_in = time.monotonic() - t0
        keys = [(plural, b["metadata"]["name"]) for plural, b in bodies]
        all_final = finals.wait(lambda: all(k in finals.final for k in keys), timeout=900)
        t_final = max((finals.final[k][0] for k in keys if k in finals.final), default=time.monotonic()) - t0
        settled_at = wait_quiet(counter, quiet=5, timeout=300)
        settle = counter.between(t0, settled_at + 0.001)
        outcomes = collections.Counter(f"{KINDS[k[0]]} {finals.final[k][1]['status']['phase']}/"
                                       f"{_reason(finals.final[k][1])}" for k in keys if k in finals.final)
        waiting = collections.Counter(f"{KINDS[k[0]]} {(finals.seen.get(k) or {}).get('status', {}).get('phase')}/"
                                      f"{_reason(finals.seen.get(k) or {})}" for k in keys if k not in finals.final)
        finals.stop()
        present = sum(len(served.tenant.custom.list_namespaced_custom_object(GROUP, VERSION, served.namespace, p)["items"])
                      for p in KINDS)
        step(f"{len(bodies)} idle CRs settled")
        rss_settled = sampler.last
        peak_to_settle = sampler.peak
        sampler.reset()
        server_before = apiserver_requests()
        i0 = time.monotonic()
        time.sleep(seconds)
        i1 = time.monotonic()
        server_after = apiserver_requests()
        quiet = counter.between(i0, i1)
        rss_idle_end, rss_idle_peak = sampler.last, sampler.peak
        sampler.stop()
        t_restart = count_through(proc, counter)  # a restart with them all present: live state, not high water
        again_at = wait_quiet(counter, quiet=3, timeout=300)
        again = counter.between(t_restart, again_at + 0.001)
        rss_again = rss_mib(proc.proc.pid)
    finally:
        count_through(proc, None)  # back to the API server directly: the counter goes
    return dict(existing=existing, resumed=resumed, resume_s=resumed_at - t_start, rss_resumed=rss_resumed,
                new=len(bodies), created_in=created_in, all_final=all_final, t_final=t_final,
                settle_s=settled_at - t0, settle=settle, outcomes=outcomes, waiting=waiting, present=present,
                rss_settled=rss_settled, rss_peak_settle=peak_to_settle, quiet=quiet, seconds=i1 - i0,
                rss_idle_end=rss_idle_end, rss_idle_peak=rss_idle_peak, server_delta=server_after - server_before,
                again=again, again_s=again_at - t_restart, rss_again=rss_again)


def print_idle(r: dict[str, Any]) -> None:
    print(f"\n2. {r['present']} idle CRs in the namespace ({r['existing']} from the burst, {r['new']} added that end at "
          "once); the operator restarted, its API traffic counted through a hop")
    print(f"   restart with {r['existing']} CRs: last request {r['resume_s']:.2f} s after the process started, "
          f"{len(r['resumed'])} requests "
          f"({describe(r['resumed'])}); RSS then {r['rss_resumed']:.1f} MiB")
    print(f"   {r['new']} created in {r['created_in']:.2f} s; all final after {r['t_final']:.2f} s"
          f"{'' if r['all_final'] else ' (NOT all final after 900 s)'}; the operator quiet after {r['settle_s']:.2f} s")
    print(f"   outcomes: {dict(r['outcomes'])}")
    if r["waiting"]:
        print(f"   not final: {dict(r['waiting'])}")
    per = len(r["settle"]) / r["new"] if r["new"] else float("nan")
    print(f"   operator requests to settle them: {len(r['settle'])} ({per:.1f} per CR): {describe(r['settle'], 10)}; "
          f"by client: {agents(r['settle'])}")
    print(f"   operator RSS settled: {r['rss_settled']:6.1f} MiB   (peak while they came {r['rss_peak_settle']:.1f} MiB; "
          f"{verdict(r['rss_settled'], GOAL_RSS_MIB, 'MiB')})")
    q, s = r["quiet"], r["seconds"]
    print(f"   idle {s:.0f} s: operator requests {len(q)} = {len(q) / s:.3f}/s "
          f"({len([x for x in q if not x.watch])} not new watches; {describe(q)}); "
          f"RSS {r['rss_idle_end']:.1f} MiB at the end (peak {r['rss_idle_peak']:.1f})")
    d = r["server_delta"]
    print(f"   API server, every client, same window: {sum(d.values())} requests = {sum(d.values()) / s:.1f}/s "
          f"(the shared sandbox's other users included): top {', '.join(f'{k} {v}' for k, v in d.most_common(5))}")
    print(f"   restart with all {r['present']} present: last request {r['again_s']:.2f} s after the process started, "
          f"{len(r['again'])} requests ({describe(r['again'])}); RSS then {r['rss_again']:.1f} MiB")
    per_object = [x for x in q if "/*" in _kind(x)]
    print(f"   goal: no periodic work proportional to {r['present']} CRs: "
          f"{'met' if len(per_object) < max(1, r['present'] // 100) else 'MISSED'}: {len(per_object)} requests to "
          f"single objects in {s:.0f} s ({describe(per_object)}); discovery and new watches are per kind, not per CR "
          "(kopf looks again when a CRD changes: other sessions apply the CRDs of the shared sandbox)")


def count_through(proc: Any, counter: ApiCounter | None) -> float:
    """Restart the operator talking through ``counter`` (None: directly to the API server again); returns
    when the new process was started."""
    direct = getattr(proc, "direct_kubeconfig", proc.kubeconfig)
    proc.direct_kubeconfig = direct
    proc.stop()
    proc.kubeconfig = counter.kubeconfig(direct) if counter else direct
    started = time.monotonic()
    proc.start(timeout=300)
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reverts", type=int, default=100, help="VolumeReverts created at once (default 100)")
    parser.add_argument("--idle", type=int, default=1000, help="idle CRs present, the reverts included (default 1000)")
    parser.add_argument("--idle-seconds", type=float, default=60, help="idle window for counting requests (60)")
    parser.add_argument("--quick", action="store_true", help="10 reverts and 100 idle CRs")
    parser.add_argument("--py-spy", type=Path, help="record the operator with py-spy during the burst into this file")
    parser.add_argument("--verbose", action="store_true", help="run the operator with --verbose (kopf's debug log)")
    parser.add_argument("--count-burst", action="store_true",
                        help="count the operator's API requests during the burst too (its times then include the hop)")
    args = parser.parse_args()
    if args.quick:
        args.reverts, args.idle = 10, 100
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # "pool is full": the creating threads
    cfg = sandbox()
    watch = Stopwatch()
    print(f"Scale: {args.reverts} reverts at once, then {args.idle} idle CRs "
          f"({os.cpu_count()} CPUs, shared machine: figures are noisy); operator "
          f"{'with' if args.verbose else 'without'} --verbose", flush=True)
    with served_namespace(cfg, "bench-scale", tenant=True, verbose=args.verbose,
                          cleanup_timeout=max(120, args.idle)) as served:
        counter = ApiCounter(cfg)
        try:
            if args.count_burst:
                count_through(served.proc, counter)
            burst_result = burst(cfg, served, args.reverts, watch, args.py_spy,
                                 counter if args.count_burst else None)
            print_burst(burst_result, watch)
            idle_result = idle(cfg, served, args.idle, args.idle_seconds, counter)
            print_idle(idle_result)
        finally:
            if served.proc.kubeconfig != getattr(served.proc, "direct_kubeconfig", served.proc.kubeconfig):
                count_through(served.proc, None)
            counter.close()
        step("cleaning up: deleting the CRs while the operator runs, then the namespace")
    step("done")


if __name__ == "__main__":
    main()
