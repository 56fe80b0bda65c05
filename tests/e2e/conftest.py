"""End-to-end fixtures: the chart installed into the sandbox, and the operator
running from this checkout with the chart's ServiceAccount token (not admin),
so a missing RBAC rule fails a test.

Tests act as a tenant, not as admin: every test namespace has an ``edit``
ServiceAccount (``tenant``, helpers/tenant.py) and the fixtures ``api``,
``apply`` and ``make_volume`` create CRs and claims as it, so a rule missing
from the chart's aggregated user roles fails a test too. ``admin_api`` and the
plain ``kubernetes`` clients (admin kubeconfig) are for what an administrator
does: PVs, StorageClasses, quotas, raw references, reading results back."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import chart as chart_helper  # noqa: E402
from helpers import tenant as tenants  # noqa: E402
from helpers import volumes  # noqa: E402
from helpers.operator_proc import OperatorProcess, free_port  # noqa: E402

# Several test sessions may share one sandbox: each runs its own operator,
# serving only namespaces named after its session id.
SESSION = uuid.uuid4().hex[:4]
NAMESPACE_PREFIX = f"sp-{SESSION}-"
# Raw rbd:/nfs: references are allowed only in namespaces matching this.
ADMIN_NAMESPACES = f"{NAMESPACE_PREFIX}admin-*"


@pytest.fixture(scope="session")
def crds(kube: Any) -> None:
    chart_helper.apply_crds(kube)


@pytest.fixture(scope="session")
def chart(kube: Any, crds: None) -> Iterator[dict[str, str]]:
    """The chart installed (no operator pod); returns the operator's env from it.

    Its user roles (aggregated into ``edit``, through which the tenants act) also get a copy of this
    session's own (helpers/chart.py, ``apply_user_roles``), which no other session's upgrade removes."""
    env = chart_helper.install(kube)
    roles = chart_helper.apply_user_roles(kube, f"sp-{SESSION}-e2e")
    yield env
    chart_helper.delete_user_roles(kube, roles)


@pytest.fixture(scope="session")
def operator(kube: Any, chart: dict[str, str]) -> Iterator[OperatorProcess]:
    from helpers.operator_sa import operator_kubeconfig

    env = dict(chart, SAVEPOINT_METRICS_PORT=str(free_port()), SAVEPOINT_WATCH_NAMESPACES=f"{NAMESPACE_PREFIX}*",
               SAVEPOINT_RAW_REFERENCE_NAMESPACES=ADMIN_NAMESPACES)
    proc = OperatorProcess(kube.venv, operator_kubeconfig(kube), kube.logs / f"operator-e2e-{SESSION}.log", env,
                           free_port())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _session_operator_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test during which the session's operator died fails with the operator's last words, and the
    operator is started again: the tests after it would otherwise each wait out their timeouts."""
    yield
    if "operator" not in request.fixturenames:
        return
    proc: OperatorProcess = request.getfixturevalue("operator")
    died = proc.death()
    if died:
        proc.start()
        pytest.fail(f"the session's operator {died}", pytrace=False)


# --- namespaces and their tenants ---------------------------------------------------------------------


@contextmanager
def fresh_namespace(kube: Any, prefix: str) -> Iterator[tenants.Tenant]:
    """A fresh namespace ``<prefix><random>`` with its ``edit`` tenant (helpers/tenant.py: Pod Security
    baseline enforced, ServiceAccount ``tenant`` bound to ``edit``); deleted afterwards."""
    from kubernetes import config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    tenant = tenants.make_namespace(kube, name)  # removes the namespace again if it fails
    try:
        yield tenant
    finally:
        tenants.forget(name)
        tenants.delete_namespaces([name])


@pytest.fixture
def tenant(kube: Any, chart: dict[str, str]) -> Iterator[tenants.Tenant]:
    """The tenant of a fresh namespace: a namespace ``edit`` ServiceAccount, the principal tests act as."""
    with fresh_namespace(kube, NAMESPACE_PREFIX) as t:
        yield t


@pytest.fixture
def namespace(tenant: tenants.Tenant) -> str:
    """A fresh namespace per test (the ``tenant``'s), deleted afterwards."""
    return tenant.namespace


@pytest.fixture
def admin_namespace(kube: Any, chart: dict[str, str]) -> Iterator[str]:
    """A namespace where raw rbd:/nfs: references are allowed (``admin_api`` creates those CRs there)."""
    with fresh_namespace(kube, ADMIN_NAMESPACES[:-1]) as t:
        yield t.namespace


@pytest.fixture
def api(tenant: tenants.Tenant) -> Any:
    """CustomObjectsApi as the tenant of ``namespace``: refused in any other namespace."""
    return tenant.custom


@pytest.fixture
def admin_api(kube: Any) -> Any:
    """CustomObjectsApi as the cluster admin: for what only an admin does (raw references)."""
    from kubernetes import client, config

    config.load_kube_config(str(kube.kubeconfig))
    return client.CustomObjectsApi()


@pytest.fixture
def apply(tenant: tenants.Tenant) -> Callable[..., str]:
    """``apply(*objs)``: ``kubectl apply`` into ``namespace`` with the tenant's kubeconfig."""
    return tenant.apply


class VolumeMaker:
    """``make_volume(namespace, name, **kw)``: an RBD-backed claim (helpers.volumes.rbd_pvc) whose claim the
    namespace's tenant creates; image and PV removed after the test. Set ``evict_stale_watchers`` where a
    killed operator may still watch an image (a module overrides the fixture to turn it on)."""

    def __init__(self, kube: Any, default_name: str) -> None:
        self.kube = kube
        self.default_name = default_name
        self.evict_stale_watchers = False
        self.made: list[volumes.RbdVolume] = []

    def __call__(self, namespace: str, name: str | None = None, **kw: Any) -> volumes.RbdVolume:
        vol = volumes.rbd_pvc(self.kube, namespace, name or self.default_name,
                              claims=tenants.tenant_of(namespace).core, **kw)
        self.made.append(vol)
        return vol

    def cleanup(self) -> None:
        for vol in self.made:
            if self.evict_stale_watchers:
                volumes.evict_stale_watchers(self.kube, vol.ref)
            volumes.delete_rbd_volume(self.kube, vol)


@pytest.fixture
def make_volume(kube: Any) -> Iterator[VolumeMaker]:
    maker = VolumeMaker(kube, "data")
    yield maker
    maker.cleanup()


class CrashHarness:
    """An operator of its own for one namespace, started with a crash point
    (``SAVEPOINT_CRASH_AT``, see savepoint/faults.py) and restarted without one."""

    def __init__(self, kube: Any, env: dict[str, str], tenant: tenants.Tenant) -> None:
        from helpers.operator_sa import operator_kubeconfig

        self.kube = kube
        self.tenant = tenant
        self.namespace = tenant.namespace
        self.api = tenant.custom  # the namespace's tenant creates the CRs
        self.env = dict(env, SAVEPOINT_WATCH_NAMESPACES=self.namespace)
        self.kubeconfig = operator_kubeconfig(kube)
        self.procs: list[OperatorProcess] = []

    def start(self, crash_at: str | None = None, log_format: str = "plain", **settings: str) -> OperatorProcess:
        """An operator for this namespace; ``settings`` are extra SAVEPOINT_* variables."""
        env = dict(self.env, SAVEPOINT_METRICS_PORT=str(free_port()), **settings)
        if crash_at:
            env["SAVEPOINT_CRASH_AT"] = crash_at
        proc = OperatorProcess(self.kube.venv, self.kubeconfig,
                               self.kube.logs / f"operator-crash-{self.namespace}-{len(self.procs)}.log", env,
                               free_port())
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
        assert code == 137, f"the operator did not die at its crash point: it {proc.death()}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def crash_harness(kube: Any, chart: dict[str, str]) -> Iterator[CrashHarness]:
    """A namespace of its own (with its tenant: ``crash_harness.api``) and operators started for it."""
    from kubernetes import config

    config.load_kube_config(str(kube.kubeconfig))
    name = f"spc-{SESSION}-{uuid.uuid4().hex[:6]}"
    harness = CrashHarness(kube, chart, tenants.make_namespace(kube, name))
    yield harness
    # Delete while an operator still runs, so finalizers are honoured and the
    # namespace really goes.
    if not any(p.proc and p.proc.poll() is None for p in harness.procs):
        harness.start()
    tenants.forget(name)
    tenants.delete_namespaces([name])
    harness.stop()
