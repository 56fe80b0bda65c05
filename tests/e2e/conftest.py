"""End-to-end fixtures: the chart installed into the sandbox, and the operator
running from this checkout with the chart's ServiceAccount token (not admin),
so a missing RBAC rule fails a test."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import chart as chart_helper  # noqa: E402
from helpers.operator_proc import OperatorProcess  # noqa: E402

# Several test sessions may share one sandbox: each runs its own operator,
# serving only namespaces named after its session id.
SESSION = uuid.uuid4().hex[:4]
NAMESPACE_PREFIX = f"sp-{SESSION}-"
# Raw rbd:/nfs: references are allowed only in namespaces matching this.
ADMIN_NAMESPACES = f"{NAMESPACE_PREFIX}admin-*"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def crds(kube: Any) -> None:
    chart_helper.apply_crds(kube)


@pytest.fixture(scope="session")
def chart(kube: Any, crds: None) -> dict[str, str]:
    """The chart installed (no operator pod); returns the operator's env from it."""
    return chart_helper.install(kube)


@pytest.fixture(scope="session")
def operator(kube: Any, chart: dict[str, str]) -> Iterator[OperatorProcess]:
    from helpers.operator_sa import operator_kubeconfig

    env = dict(chart, SAVEPOINT_METRICS_PORT=str(_free_port()), SAVEPOINT_WATCH_NAMESPACES=f"{NAMESPACE_PREFIX}*",
               SAVEPOINT_RAW_REFERENCE_NAMESPACES=ADMIN_NAMESPACES)
    proc = OperatorProcess(kube.venv, operator_kubeconfig(kube), kube.logs / f"operator-e2e-{SESSION}.log", env,
                           _free_port())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def namespace(kube: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client, config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": name}})
    yield name
    _delete_namespace(name)


def _delete_namespace(name: str, timeout: float = 60) -> None:
    """Delete our CRs first and wait until they are gone (their finalizers run
    while the operator is still up), then the namespace."""
    from kubernetes import client

    api = client.CustomObjectsApi()
    plurals = ("volumereverts", "sharebackups", "sharerestores", "imagesnapshots")
    for plural in plurals:
        api.delete_collection_namespaced_custom_object("savepoint.dev", "v1alpha1", name, plural)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(api.list_namespaced_custom_object("savepoint.dev", "v1alpha1", name, p)["items"] for p in plurals):
            break
        time.sleep(0.2)
    client.CoreV1Api().delete_namespace(name)


@pytest.fixture
def admin_namespace(kube: Any) -> Iterator[str]:
    """A namespace where raw rbd:/nfs: references are allowed."""
    from kubernetes import client, config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"{ADMIN_NAMESPACES[:-1]}{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": name}})
    yield name
    _delete_namespace(name)


def apply(kube: Any, namespace: str, *objs: dict[str, Any]) -> None:
    chart_helper.run(kube.bin / "kubectl", "--kubeconfig", kube.kubeconfig, "-n", namespace, "apply", "-f", "-",
         input="\n---\n".join(json.dumps(o) for o in objs))


class CrashHarness:
    """An operator of its own for one namespace, started with a crash point
    (``SAVEPOINT_CRASH_AT``, see savepoint/faults.py) and restarted without one."""

    def __init__(self, kube: Any, env: dict[str, str], namespace: str) -> None:
        from helpers.operator_sa import operator_kubeconfig

        self.kube = kube
        self.namespace = namespace
        self.env = dict(env, SAVEPOINT_WATCH_NAMESPACES=namespace)
        self.kubeconfig = operator_kubeconfig(kube)
        self.procs: list[OperatorProcess] = []

    def start(self, crash_at: str | None = None, log_format: str = "plain", **settings: str) -> OperatorProcess:
        """An operator for this namespace; ``settings`` are extra SAVEPOINT_* variables."""
        env = dict(self.env, SAVEPOINT_METRICS_PORT=str(_free_port()), **settings)
        if crash_at:
            env["SAVEPOINT_CRASH_AT"] = crash_at
        proc = OperatorProcess(self.kube.venv, self.kubeconfig,
                               self.kube.logs / f"operator-crash-{self.namespace}-{len(self.procs)}.log", env,
                               _free_port())
        proc.log_format = log_format
        proc.start()
        self.procs.append(proc)
        return proc

    def wait_crashed(self, proc: OperatorProcess, timeout: float = 120) -> None:
        assert proc.proc is not None
        try:
            code = proc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the operator did not reach its crash point in {timeout}s; see {proc.log}") from None
        assert code == 137, f"operator exited {code}, not at the crash point; see {proc.log}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def crash_harness(kube: Any, chart: dict[str, str]) -> Iterator[CrashHarness]:
    from kubernetes import client, config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"spc-{SESSION}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": name}})
    harness = CrashHarness(kube, chart, name)
    yield harness
    # Delete while an operator still runs, so finalizers are honoured and the
    # namespace really goes.
    if not any(p.proc and p.proc.poll() is None for p in harness.procs):
        harness.start()
    _delete_namespace(name)
    harness.stop()
