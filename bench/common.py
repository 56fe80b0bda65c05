"""What every benchmark needs: the sandbox, the chart, an operator from this
checkout serving one namespace, and a stopwatch.  Benchmarks print figures and
ratios against a baseline measured in the same run; they assert nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests"), str(ROOT / "bench")]

from helpers import chart  # noqa: E402
from helpers.operator_proc import OperatorProcess, free_port  # noqa: E402
from helpers.operator_sa import operator_kubeconfig  # noqa: E402
from osdbytes import measured  # noqa: E402
from sandboxlib import config  # noqa: E402


def sandbox() -> config.Config:
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up"], check=True, stdout=subprocess.DEVNULL)
    cfg = config.load()
    os.environ["KUBECONFIG"] = str(cfg.kubeconfig)
    os.environ.setdefault("CEPH_CONF", str(cfg.ceph_conf))
    from kubernetes import config as kconfig

    kconfig.load_kube_config(str(cfg.kubeconfig))
    return cfg


@contextlib.contextmanager
def operator_namespace(cfg: config.Config, prefix: str) -> Iterator[str]:
    """A namespace with its own operator (the chart's ServiceAccount); both go afterwards."""
    from kubernetes import client

    env = chart.install(cfg)
    chart.apply_crds(cfg)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": name}})
    env.update(SAVEPOINT_WATCH_NAMESPACES=name, SAVEPOINT_METRICS_PORT=str(free_port()))
    proc = OperatorProcess(cfg.venv, operator_kubeconfig(cfg), cfg.logs / f"operator-{name}.log", env, free_port())
    proc.start()
    try:
        yield name
    finally:
        api = client.CustomObjectsApi()
        for plural in chart.KINDS:
            api.delete_collection_namespaced_custom_object("savepoint.dev", "v1alpha1", name, plural)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                api.list_namespaced_custom_object("savepoint.dev", "v1alpha1", name, p)["items"] for p in chart.KINDS):
            time.sleep(0.2)
        proc.stop()
        client.CoreV1Api().delete_namespace(name)


class Stopwatch:
    """Wall time of each step and, given the sandbox's config, the bytes it moved between clients and the
    OSD (``osdbytes``: the operator, its movers and the rbd CLI alike)."""

    def __init__(self, cfg: config.Config | None = None) -> None:
        self.cfg = cfg
        self.results: dict[str, float] = {}
        self.moved: dict[str, Any] = {}

    @contextlib.contextmanager
    def time(self, label: str) -> Iterator[None]:
        counting = measured(self.cfg) if self.cfg is not None else contextlib.nullcontext(None)
        with counting as moved:
            t0 = time.perf_counter()
            yield
            self.results[label] = time.perf_counter() - t0
        self.moved[label] = moved
        print(f"  {label:40s} {self.results[label]:8.3f} s" + (f"   OSD {moved}" if moved else ""), flush=True)


def ratio(baseline: float, measured: float) -> str:
    return f"{baseline / measured:6.1f}x" if measured > 0 else "inf"


def ceph_env(cfg: config.Config) -> dict[str, Any]:
    from sandboxlib import ceph

    return {**os.environ, **ceph.admin_env(cfg)}


def print_moved(watch: Stopwatch, data_bytes: int) -> None:
    """Bytes each step moved between clients and the OSD, and as a multiple of the data it is about."""
    print(f"bytes through the clients (OSD counters; the data: {data_bytes / (1 << 20):.0f} MiB):")
    for label, moved in watch.moved.items():
        if moved is not None:
            print(f"  {label:40s} {moved}  = {moved.total / max(1, data_bytes):6.3f}x the data")
