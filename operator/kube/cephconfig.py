"""Ceph connection settings from an existing ceph-csi installation, read through the API.

ceph-csi keeps clusterID → monitors in a ConfigMap (key ``config.json``) and
the cephx user in a Secret (``userID``/``userKey``); the operator settings
name both as ``namespace/name``. Nothing is cached: monitors move and keys
rotate, and two small GETs per reconcile are cheap next to a Ceph connection.

Parsing is storage's (``savepoint.storage.ceph``); this module only reads
the objects and turns what is missing into ``RefusedError`` reasons.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

from savepoint.kube import k8s
from savepoint.kube.references import (
    CEPH_CLUSTER_UNKNOWN,
    CEPH_CREDENTIALS_MISSING,
    RefusedError,
    as_dict,
)
from savepoint.settings import Settings, split_ref
from savepoint.storage.ceph import CephCredentials, CsiCluster, parse_csi_clusters
from savepoint.storage.errors import ConfigError

CONFIG_KEY = "config.json"


def _refused(reason: str, message: str) -> RefusedError:
    return RefusedError(reason, message, final=True)


# Every reconcile needs these two small objects; re-reading them at most every
# few seconds keeps fast paths fast while a changed key or monitor list is
# picked up almost at once.
CACHE_SECONDS = 5.0
_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


def _read(kind: str, ref: str, setting: str, reason: str) -> dict[str, Any]:
    cached = _cache.get((kind, ref))
    if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    namespace, name = split_ref(ref)
    reader = k8s.core().read_namespaced_config_map if kind == "ConfigMap" else k8s.core().read_namespaced_secret
    try:
        obj = as_dict(reader(name, namespace))
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise _refused(reason, f"ceph-csi {kind} {ref} does not exist (operator setting {setting})") from None
        raise
    _cache[(kind, ref)] = (time.monotonic(), obj)
    return obj


def csi_clusters(settings: Settings) -> dict[str, CsiCluster]:
    """ceph-csi's clusters from the ConfigMap the settings name (``CephClusterUnknown`` when unreadable)."""
    ref = settings.ceph_config_map
    config_map = _read("ConfigMap", ref, "SAVEPOINT_CEPH_CONFIG_MAP", CEPH_CLUSTER_UNKNOWN)
    text = (config_map.get("data") or {}).get(CONFIG_KEY)
    if not text:
        raise _refused(CEPH_CLUSTER_UNKNOWN, f"ceph-csi ConfigMap {ref} has no {CONFIG_KEY} key")
    try:
        return parse_csi_clusters(text)
    except ConfigError as exc:
        raise _refused(CEPH_CLUSTER_UNKNOWN, f"ConfigMap {ref}: {exc.message}") from None


def csi_cluster(cluster_id: str, settings: Settings) -> CsiCluster:
    """One cluster of config.json (``CephClusterUnknown`` when it is not listed)."""
    clusters = csi_clusters(settings)
    try:
        return clusters[cluster_id]
    except KeyError:
        known = ", ".join(sorted(clusters)) or "none"
        raise _refused(
            CEPH_CLUSTER_UNKNOWN,
            f"clusterID {cluster_id} is not in ceph-csi's config.json (ConfigMap {settings.ceph_config_map}; "
            f"known: {known})",
        ) from None


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's ``data`` (base64) as text; undecodable entries are dropped."""
    decoded: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            decoded[key] = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return decoded


def credentials(cluster_id: str, settings: Settings) -> CephCredentials:
    """Monitors of ``cluster_id`` plus the user of the ceph-csi Secret, ready for ``storage.ceph.connect``."""
    cluster = csi_cluster(cluster_id, settings)
    ref = settings.ceph_secret
    secret = _read("Secret", ref, "SAVEPOINT_CEPH_SECRET", CEPH_CREDENTIALS_MISSING)
    try:
        return CephCredentials.from_csi_secret(cluster.monitors, decode_secret_data(secret.get("data")))
    except ConfigError:
        raise _refused(CEPH_CREDENTIALS_MISSING,
                       f"ceph-csi Secret {ref} needs the keys userID and userKey (operator setting SAVEPOINT_CEPH_SECRET)") from None


def rados_namespace(cluster_id: str, settings: Settings) -> str | None:
    """The RADOS namespace ceph-csi uses for RBD images of ``cluster_id`` (config.json ``rbd.radosNamespace``)."""
    return csi_cluster(cluster_id, settings).rbd_namespace
