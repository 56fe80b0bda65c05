"""What every benchmark needs: the sandbox, the chart, an operator from this
checkout serving one namespace, and a stopwatch.  Benchmarks print figures and
ratios against a baseline measured in the same run; they assert nothing."""

from __future__ import annotations

import contextlib
import dataclasses
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
    with served_namespace(cfg, prefix) as served:
        yield served.namespace


@dataclasses.dataclass
class Served:
    """A namespace, its tenant (with ``tenant=True``) and the operator process serving it."""

    namespace: str
    tenant: Any
    proc: OperatorProcess


@contextlib.contextmanager
def served_namespace(cfg: config.Config, prefix: str, *, tenant: bool = False, verbose: bool = False,
                     cleanup_timeout: float = 60) -> Iterator[Served]:
    """``operator_namespace`` that also hands out the operator process (to sample it or restart it) and, with
    ``tenant``, makes the namespace as a cluster gives it to a team (helpers/tenant.py: its ``edit``
    ServiceAccount, through a copy of the chart's user roles of this run's own). The operator runs as the chart
    runs it, JSON logs without kopf's debug log (which logs every request and whole bodies, and would be part of
    what is measured); ``verbose=True`` adds that log for a closer look.

    Afterwards the CRs are deleted while the operator still runs (their finalizers are honoured) for up to
    ``cleanup_timeout`` seconds; what is left then loses its finalizers, so the namespace really goes."""
    from kubernetes import client

    from helpers import tenant as tenants

    env = chart.install(cfg)
    chart.apply_crds(cfg)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    roles: list[str] = []
    if tenant:
        roles = chart.apply_user_roles(cfg, name)
        who = tenants.make_namespace(cfg, name)
    else:
        client.CoreV1Api().create_namespace({"metadata": {"name": name}})
        who = None
    env.update(SAVEPOINT_WATCH_NAMESPACES=name, SAVEPOINT_METRICS_PORT=str(free_port()))
    proc = OperatorProcess(cfg.venv, operator_kubeconfig(cfg), cfg.logs / f"operator-{name}.log", env, free_port())
    proc.verbose, proc.log_format = verbose, "plain" if verbose else "json"
    try:
        proc.start()
        yield Served(name, who, proc)
    finally:
        api = client.CustomObjectsApi()
        if proc.proc is None or proc.proc.poll() is not None:
            with contextlib.suppress(RuntimeError):  # e.g. it never started: then it made nothing
                proc.start()
        for plural in chart.KINDS:
            api.delete_collection_namespaced_custom_object("savepoint.dev", "v1alpha1", name, plural)
        deadline = time.monotonic() + cleanup_timeout
        while time.monotonic() < deadline and any(
                api.list_namespaced_custom_object("savepoint.dev", "v1alpha1", name, p)["items"] for p in chart.KINDS):
            time.sleep(0.5)
        for plural in chart.KINDS:
            for obj in api.list_namespaced_custom_object("savepoint.dev", "v1alpha1", name, plural)["items"]:
                with contextlib.suppress(client.ApiException):
                    api.patch_namespaced_custom_object("savepoint.dev", "v1alpha1", name, plural,
                                                       obj["metadata"]["name"], {"metadata": {"finalizers": None}})
        proc.stop()
        if who is not None:
            tenants.forget(name)
        client.CoreV1Api().delete_namespace(name)
        if roles:
            chart.delete_user_roles(cfg, roles)


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


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    at: float  # time.monotonic() when the request's head went through
    method: str
    path: str  # with the query
    agent: str  # User-Agent

    @property
    def watch(self) -> bool:
        return "watch=true" in self.path or "watch=1" in self.path


class ApiCounter:
    """Counts one client's Kubernetes API requests: a plain-HTTP listener on 127.0.0.1 that passes every
    connection on through TLS to the sandbox's API server and notes each request's line and User-Agent.

    ``kubeconfig(path)`` is a copy of a kubeconfig whose server is this listener (the token is the one in
    it: the API server still authenticates and authorizes the client). Counting costs a hop, so figures
    of latency measured through it are not the operator's own."""

    def __init__(self, cfg: config.Config) -> None:
        import asyncio
        import ssl
        import threading

        self.upstream = (cfg.host, cfg.apiserver_port)
        self.tls = ssl.create_default_context(cafile=str(cfg.state / "kube" / "pki" / "ca.crt"))
        self.requests: list[ApiRequest] = []
        self._tasks: set[Any] = set()
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="api-counter", daemon=True)
        self.thread.start()
        started.wait(10)

    def kubeconfig(self, path: Path) -> Path:
        import yaml

        doc = yaml.safe_load(path.read_text())
        for entry in doc["clusters"]:
            entry["cluster"] = {"server": f"http://127.0.0.1:{self.port}"}
        out = path.with_name(f"{path.stem}-counted.kubeconfig")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f)
        return out

    def between(self, start: float, end: float = float("inf")) -> list[ApiRequest]:
        return [r for r in list(self.requests) if start <= r.at < end]

    def close(self) -> None:
        import asyncio

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _client(self, reader: Any, writer: Any) -> None:
        import asyncio

        me = asyncio.current_task()
        self._tasks.add(me)  # the loop keeps only weak references to tasks
        me.add_done_callback(self._tasks.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, ssl=self.tls,
                                                                 server_hostname=self.upstream[0])
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._requests(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)

    @staticmethod
    async def _pump(reader: Any, writer: Any) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _requests(self, reader: Any, writer: Any) -> None:
        """Client to server, one request at a time: the head (noted), then its body by length or chunks."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = (lines[0].split(" ") + ["", ""])[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                self.requests.append(ApiRequest(time.monotonic(), method, path, headers.get("user-agent", "")))
                writer.write(head)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        writer.write(size_line + await reader.readexactly(size + 2))
                        if size == 0:
                            break
                elif int(headers.get("content-length") or 0):
                    writer.write(await reader.readexactly(int(headers["content-length"])))
                await writer.drain()
        except Exception:  # noqa: BLE001 - the client closed (or spoke something else): end the connection
            pass
        finally:
            writer.close()
