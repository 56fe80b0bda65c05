"""Connecting to a Ceph cluster the way ceph-csi does: monitors plus a cephx user.

Savepoint reuses an existing ceph-csi installation's configuration instead of
asking for a ceph.conf: the ``config.json`` ConfigMap (clusterID -> monitors)
and the ``userID``/``userKey`` Secret.  Everything librados needs is passed as
config options, so no file is written and nothing on the host is read.

No Kubernetes here: callers read the ConfigMap/Secret and hand over strings.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import rados
import rbd
from savepoint.storage.errors import (
    ConfigError,
    NotFound,
    PermissionDenied,
    StorageError,
    Unreachable,
    ceph_errors,
    from_ceph,
)

DEFAULT_TIMEOUT = 10.0  # seconds: long enough for a busy mon, short enough to report a dead cluster quickly


@dataclass(frozen=True)
class CephCredentials:
    """Where the cluster is and who we are: ceph-csi's monitors list and Secret.

    ``user_id`` is the bare cephx id as ceph-csi stores it (``savepoint``, not
    ``client.savepoint``); ``key`` is the base64 cephx secret.
    """

    monitors: list[str]
    user_id: str
    key: str = field(repr=False)  # never printed in logs or tracebacks

    def __post_init__(self) -> None:
        if not self.monitors:
            raise ConfigError("Ceph credentials: no monitors given")
        if not self.user_id:
            raise ConfigError("Ceph credentials: empty user id")
        if not self.key:
            raise ConfigError(f"Ceph credentials for client.{self.user_id}: empty key")

    @classmethod
    def from_csi_secret(cls, monitors: list[str], data: Mapping[str, str | bytes]) -> CephCredentials:
        """Build from a ceph-csi Secret's decoded data (``userID``/``userKey``, or ``adminID``/``adminKey``).

        ceph-csi's RBD secrets carry ``userID``/``userKey``; CephFS provisioner
        secrets carry ``adminID``/``adminKey``.  Accepting both lets an
        existing Secret be referenced as it is.
        """

        def get(name: str) -> str:
            value = data.get(name, "")
            return (value.decode() if isinstance(value, bytes) else value).strip()

        user_id, key = get("userID"), get("userKey")
        if not user_id and not key:
            user_id, key = get("adminID"), get("adminKey")
        if not user_id or not key:
            raise ConfigError("ceph-csi Secret: needs userID and userKey (or adminID and adminKey)")
        return cls(monitors=list(monitors), user_id=user_id.removeprefix("client."), key=key)

    @property
    def entity(self) -> str:
        """The cephx entity name, e.g. ``client.savepoint``."""
        return f"client.{self.user_id}"


@dataclass(frozen=True)
class CsiCluster:
    """One entry of ceph-csi's config.json."""

    cluster_id: str
    monitors: list[str]
    rbd_namespace: str | None = None  # ceph-csi's "rbd": {"radosNamespace": ...}: where its images live


def parse_csi_clusters(text: str) -> dict[str, CsiCluster]:
    """Parse ceph-csi's ``config.json`` (a JSON list of clusters) into clusterID -> CsiCluster.

    Strict on purpose: a typo in the ConfigMap should fail with a message
    that names the entry, not later as "cluster not found".
    """
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ceph-csi config.json is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ConfigError("ceph-csi config.json must be a JSON list of {clusterID, monitors}")
    clusters: dict[str, CsiCluster] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"ceph-csi config.json entry {i} is not an object")
        cluster_id = entry.get("clusterID")
        monitors = entry.get("monitors")
        if not isinstance(cluster_id, str) or not cluster_id:
            raise ConfigError(f"ceph-csi config.json entry {i}: clusterID missing")
        if not isinstance(monitors, list) or not monitors or not all(isinstance(m, str) and m for m in monitors):
            raise ConfigError(
                f"ceph-csi config.json cluster {cluster_id!r}: monitors must be a non-empty list of strings"
            )
        if cluster_id in clusters:
            raise ConfigError(f"ceph-csi config.json: clusterID {cluster_id!r} listed twice")
        rbd_section = entry.get("rbd") or {}
        namespace = rbd_section.get("radosNamespace") if isinstance(rbd_section, dict) else None
        clusters[cluster_id] = CsiCluster(cluster_id, [m.strip() for m in monitors], namespace or None)
    return clusters


def parse_csi_config(text: str) -> dict[str, list[str]]:
    """ceph-csi ``config.json`` text -> {clusterID: monitors}."""
    return {cid: c.monitors for cid, c in parse_csi_clusters(text).items()}


def rados_conf(
    creds: CephCredentials, timeout: float = DEFAULT_TIMEOUT, op_timeout: float | None = None
) -> dict[str, str]:
    """librados options for a file-less client: monitors, key, cephx, short timeouts.

    ``client_mount_timeout`` bounds the monitor handshake and
    ``rados_mon_op_timeout`` every monitor command, so an unreachable cluster
    fails in ``timeout`` seconds instead of hanging a handler.  ``op_timeout``
    bounds each single OSD request (not a whole flatten or copy, which is
    many requests); None keeps librados' default of waiting for ever, which
    is what a mover that must not give up on a slow cluster wants.
    """
    seconds = str(max(1, int(timeout)))
    extra = {"rados_osd_op_timeout": str(max(1, int(op_timeout)))} if op_timeout else {}
    return {
        **extra,
        "mon_host": ",".join(creds.monitors),
        "key": creds.key,
        "keyring": "",  # never fall back to a host keyring
        "auth_client_required": "cephx",
        "client_mount_timeout": seconds,
        "rados_mon_op_timeout": seconds,
        "log_file": "",  # clients log nowhere on disk
    }


@contextmanager
def connect(
    creds: CephCredentials,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    op_timeout: float | None = None,
    conf: Mapping[str, str] | None = None,
) -> Iterator[rados.Rados]:
    """A connected ``rados.Rados`` for ``creds``; shut down on exit.

    ``op_timeout`` (seconds per OSD request, see ``rados_conf``) suits the
    operator's single-call fast paths; ``conf`` adds or overrides librados options (e.g. ``{"debug_ms": "1"}``
    while chasing a connection problem).  Raises ``Unreachable`` when no monitor answers within ``timeout`` and
    ``PermissionDenied`` when cephx refuses the key.
    """
    where = f"connecting to Ceph monitors {','.join(creds.monitors)} as {creds.entity}"
    try:
        cluster = rados.Rados(rados_id=creds.user_id, conf={**rados_conf(creds, timeout, op_timeout), **(conf or {})})
    except rados.Error as exc:
        raise from_ceph(exc, where) from exc
    try:
        try:
            cluster.connect(timeout=max(1, int(timeout)))
        except rados.Error as exc:
            err = from_ceph(exc, where)
            if isinstance(err, Unreachable) or type(err) is StorageError:
                err = Unreachable(f"{where}: {_why_unreachable(creds, timeout)}", errno=err.errno)
            elif isinstance(err, PermissionDenied):  # msgr1 monitors say so at once (msgr2 ones time out)
                err = PermissionDenied(f"{where}: cephx refused {creds.entity}; check the userID/userKey of the "
                                       "Secret it comes from", errno=err.errno)
            raise err from exc
        yield cluster
    finally:
        cluster.shutdown()


_MON_ADDR = re.compile(
    r"\[(?P<h6>[^\]]+)\](?::(?P<p6>\d+))?"  # [ipv6]:port
    r"|(?P<h>[^:]+)(?::(?P<p>\d+))?"  # host:port, ipv4:port, host
    r"|(?P<bare6>[0-9a-fA-F:]+)"  # ipv6 without port
)


def monitor_endpoints(monitors: list[str]) -> list[tuple[str, int]]:
    """(host, port) pairs of monitor addresses in any form ``mon_host`` accepts.

    Handles ``host:port``, ``v1:``/``v2:`` prefixes, address vectors
    ``[v2:a:3300,v1:a:6789]``, ``/nonce`` suffixes, bracketed IPv6 and a
    missing port (both default ports then).
    """
    endpoints: list[tuple[str, int]] = []
    for entry in monitors:
        entry = entry.strip()
        if entry.startswith("[") and entry.endswith("]") and re.search(r"v[12]:|,", entry):
            entry = entry[1:-1]  # an address vector, not a bracketed IPv6 address
        for item in re.split(r"[,\s]+", entry):
            addr = re.sub(r"^v[12]:", "", item).split("/")[0]
            if not addr:
                continue
            match = _MON_ADDR.fullmatch(addr)
            if not match:
                continue
            host = match["h6"] or match["h"] or match["bare6"]
            port = match["p6"] or match["p"]
            for p in [int(port)] if port else [3300, 6789]:
                if (host, p) not in endpoints:
                    endpoints.append((host, p))
    return endpoints


def _why_unreachable(creds: CephCredentials, timeout: float) -> str:
    """Tell "nothing listens" from "a monitor listens but no session came up" for the error message.

    librados reports both as ETIMEDOUT: with a wrong cephx key or user the
    monitor refuses the ticket and the client keeps hunting until the timeout.
    """
    listening = []
    for host, port in monitor_endpoints(creds.monitors):
        try:
            with socket.create_connection((host, port), timeout=min(1.0, timeout)):
                listening.append(f"{host}:{port}")
        except OSError:
            continue
    if not listening:
        return f"no monitor reachable within {timeout:.0f}s (check the monitors in config.json and the network)"
    return (
        f"monitor {', '.join(listening)} accepts connections but no session as {creds.entity} came up "
        f"within {timeout:.0f}s: wrong userID/userKey, or the monitors have no quorum"
    )


def cluster_fsid(cluster: rados.Rados) -> str:
    """The cluster's fsid: the identity in ImageSnapshot's ``rbd://<fsid>/...`` location."""
    with ceph_errors("reading cluster fsid"):
        return str(cluster.get_fsid())


def client_id(cluster: rados.Rados) -> int:
    """This connection's global client id: what ``watchers`` report as ``client_id`` for our own handles."""
    with ceph_errors("reading client id"):
        return int(cluster.get_instance_id())


@contextmanager
def open_ioctx(cluster: rados.Rados, pool: str, namespace: str | None = None) -> Iterator[rados.Ioctx]:
    """An I/O context on ``pool`` (and RADOS ``namespace``), closed on exit.

    A missing pool or namespace raises ``NotFound`` naming it: librbd itself
    would report a missing namespace only later, as a confusing "image not found".
    """
    where = f"pool {pool}" + (f" namespace {namespace}" if namespace else "")
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.Error as exc:
        raise from_ceph(exc, f"opening {where}") from exc
    try:
        if namespace:
            with ceph_errors(f"opening {where}"):
                if not rbd.RBD().namespace_exists(ioctx, namespace):
                    raise NotFound(f"{where}: namespace does not exist")
                ioctx.set_namespace(namespace)
        yield ioctx
    finally:
        ioctx.close()
