"""Pod volumes as local paths, for the pod runner.

Every volume of a pod becomes a directory (or file) on this machine that the
launcher bind-mounts at each volumeMount's mountPath:

- ``persistentVolumeClaim`` / ``ephemeral`` -> the bound PV -> ``nfs`` or the
  NFS CSI driver on the sandbox's server: the export's directory
  (``<nfs_dir>/exports/<path>``); ``hostPath`` / ``local`` PVs: that path.
- ``nfs`` in-line: the same mapping.  ``hostPath``: the path itself.
- ``emptyDir``: a directory of the pod under the state directory.
- ``secret``, ``configMap``, ``downwardAPI``, ``projected`` (including the
  service-account token from the TokenRequest API, bound to the pod): files
  written once at pod start (tokens are refreshed by the pod worker).

Anything else (RBD in-line or through a PV, CephFS, other CSI drivers, block
``volumeDevices``) raises a fatal :class:`VolumeError`: the pod fails instead
of silently running without its data.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import posixpath
import re
import time
from pathlib import Path

from sandboxlib.config import Config
from sandboxlib.podrunner_api import Api, ApiError, Obj

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LOCAL_NFS_SERVERS = {"127.0.0.1", "localhost", "::1", "[::1]"}
NFS_CSI_DRIVER = "nfs.csi.k8s.io"
CEPH_CSI_RBD = "rbd.csi.ceph.com"

UNSUPPORTED = "UnsupportedVolume"
NOT_BOUND = "VolumeNotBound"
FAILED_MOUNT = "FailedMount"


class VolumeError(Exception):
    """A volume the runner can't provide.  ``retry``: it may appear later (kubelet waits)."""

    def __init__(self, reason: str, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


@dataclasses.dataclass
class TokenFile:
    """A projected service-account token the pod worker must refresh."""

    path: Path
    service_account: str
    audience: str | None
    expiration_seconds: int
    mode: int
    refresh_at: float = 0.0  # time.time()


@dataclasses.dataclass
class Volumes:
    paths: dict[str, Path]  # volume name -> local source
    read_only: set[str]  # volumes that must be mounted read-only whatever the mount says
    tokens: list[TokenFile]


@dataclasses.dataclass
class Context:
    api: Api
    cfg: Config
    pod: Obj
    pod_dir: Path
    node_name: str

    @property
    def namespace(self) -> str:
        return self.pod["metadata"]["namespace"]

    @property
    def fs_group(self) -> int | None:
        return (self.pod["spec"].get("securityContext") or {}).get("fsGroup")


# --- downward API ----------------------------------------------------------------------

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, field_path: str) -> str:
    """The value of a downward-API ``fieldRef`` for this pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    match = _SUBSCRIPT.match(field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{_escape(v)}"' for k, v in sorted(items.items()))
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.hostIPs": "127.0.0.1",
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.podIPs": "127.0.0.1",
    }
    if field_path not in values:
        raise ValueError(f"unsupported fieldRef {field_path!r}")
    return values[field_path]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_SUFFIX = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", str(text).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_value(pod: Obj, container_name: str, resource: str, divisor: str | None,
                   node_alloc: dict[str, str]) -> str:
    """A ``resourceFieldRef``: the container's limit (node allocatable when unset) or request."""
    containers = pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
    container = next((c for c in containers if c["name"] == container_name), None)
    if container is None:
        raise ValueError(f"resourceFieldRef names unknown container {container_name!r}")
    kind, _, name = resource.partition(".")
    res = container.get("resources") or {}
    value = (res.get(kind) or {}).get(name)
    if value is None:
        value = (res.get("requests") or {}).get(name) if kind == "limits" else None
    if value is None:
        value = node_alloc.get(name, "0") if kind == "limits" else "0"
    return str(math.ceil(quantity(value) / quantity(divisor or "1")))


# --- files for secret / configMap / downwardAPI / projected -----------------------------------

def _safe_rel(path: str) -> str:
    norm = posixpath.normpath(path)
    if norm.startswith(("/", "..")) or norm == ".":
        raise ValueError(f"path {path!r} must be relative and stay inside the volume")
    return norm


def _write_file(root: Path, rel: str, content: bytes, mode: int, fs_group: int | None) -> Path:
    target = root / _safe_rel(rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, mode)
    if fs_group is not None:
        os.chown(tmp, -1, fs_group)
    os.replace(tmp, target)  # atomic, so a refreshed token is never half written
    return target


def _get(ctx: Context, kind: str, name: str) -> Obj | None:
    try:
        return ctx.api.get(f"/api/v1/namespaces/{ctx.namespace}/{kind}/{name}")
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def _keyed_data(obj: Obj, kind: str) -> dict[str, bytes]:
    if kind == "secrets":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _write_keyed(ctx: Context, root: Path, vol: str, kind: str, src: Obj, default_mode: int) -> None:
    """Write a secret's or configMap's keys (or the selected items) into ``root``."""
    name = (src.get("secretName") if kind == "secrets" else src.get("name")) or ""
    obj = _get(ctx, kind, name)
    what = f'{"secret" if kind == "secrets" else "configmap"} "{name}"'
    if obj is None:
        if src.get("optional"):
            return
        raise VolumeError(FAILED_MOUNT, f'volume "{vol}": {what} not found', retry=True)
    data = _keyed_data(obj, kind)
    items = src.get("items")
    if not items:
        for key, value in data.items():
            _write_file(root, key, value, default_mode, ctx.fs_group)
        return
    for item in items:
        if item["key"] not in data:
            if src.get("optional"):
                continue
            raise VolumeError(FAILED_MOUNT, f'volume "{vol}": {what} has no key "{item["key"]}"', retry=True)
        _write_file(root, item["path"], data[item["key"]], item.get("mode", default_mode), ctx.fs_group)


def _write_downward(ctx: Context, root: Path, vol: str, items: list[Obj], default_mode: int) -> None:
    for item in items:
        try:
            if "fieldRef" in item:
                value = field_value(ctx.pod, item["fieldRef"]["fieldPath"])
            else:
                ref = item["resourceFieldRef"]
                value = resource_value(ctx.pod, ref.get("containerName", ""), ref["resource"], ref.get("divisor"),
                                       node_allocatable())
        except (ValueError, KeyError) as e:
            raise VolumeError(UNSUPPORTED, f'volume "{vol}": downwardAPI item "{item.get("path")}": {e}') from None
        _write_file(root, item["path"], value.encode(), item.get("mode", default_mode), ctx.fs_group)


def request_token(ctx: Context, service_account: str, audience: str | None,
                  expiration_seconds: int) -> tuple[str, float]:
    """A TokenRequest bound to the pod; returns the token and its lifetime in seconds."""
    meta = ctx.pod["metadata"]
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience] if audience else [],
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        },
    }
    try:
        out = ctx.api.post(f"/api/v1/namespaces/{ctx.namespace}/serviceaccounts/{service_account}/token", body)
    except ApiError as e:
        raise VolumeError(FAILED_MOUNT, f'service account token for "{service_account}": {e.message}',
                          retry=e.status in (404, 409, 429) or e.status >= 500) from None
    return out["status"]["token"], float(expiration_seconds)


def write_token(ctx: Context, token: TokenFile) -> None:
    text, ttl = request_token(ctx, token.service_account, token.audience, token.expiration_seconds)
    _write_file(token.path.parent, token.path.name, text.encode(), token.mode, ctx.fs_group)
    token.refresh_at = time.time() + 0.8 * ttl  # kubelet refreshes at 80% of the lifetime


def _write_projected(ctx: Context, root: Path, vol: str, spec: Obj, tokens: list[TokenFile]) -> None:
    default_mode = spec.get("defaultMode", 0o644)
    for source in spec.get("sources") or []:
        if "secret" in source:
            _write_keyed(ctx, root, vol, "secrets", {**source["secret"], "secretName": source["secret"].get("name")},
                         default_mode)
        elif "configMap" in source:
            _write_keyed(ctx, root, vol, "configmaps", source["configMap"], default_mode)
        elif "downwardAPI" in source:
            _write_downward(ctx, root, vol, source["downwardAPI"].get("items") or [], default_mode)
        elif "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            token = TokenFile(root / _safe_rel(sat["path"]), ctx.pod["spec"].get("serviceAccountName") or "default",
                              sat.get("audience"), sat.get("expirationSeconds", 3600), default_mode)
            write_token(ctx, token)
            tokens.append(token)
        else:
            kind = next(iter(source), "?")
            raise VolumeError(UNSUPPORTED, f'volume "{vol}": projected source "{kind}" is not supported by the '
                              'sandbox pod runner')


# --- PVCs and PVs ----------------------------------------------------------------------------

def nfs_local_dir(cfg: Config, vol: str, server: str, path: str) -> Path:
    """Map an NFS server:path of the sandbox's nfs-ganesha to the export's local directory."""
    if server not in LOCAL_NFS_SERVERS and server != cfg.host:
        raise VolumeError(UNSUPPORTED, f'volume "{vol}": NFS server "{server}" is not the sandbox\'s '
                          f'({cfg.host}); the sandbox has no NFS client and only maps its own exports')
    rel = posixpath.normpath("/" + path).lstrip("/")
    if not rel:
        raise VolumeError(UNSUPPORTED, f'volume "{vol}": NFS path "{path}" names no export')
    local = cfg.nfs_dir / "exports" / rel
    if not local.is_dir():
        raise VolumeError(FAILED_MOUNT, f'volume "{vol}": NFS export path {server}:{path} does not exist '
                          f'(no directory {local}; create exports with `hack/sandbox export NAME`)', retry=True)
    return local


def _describe_ceph(pv: Obj) -> str | None:
    spec = pv["spec"]
    csi = spec.get("csi") or {}
    if "rbd" in spec:
        return f'an in-tree RBD volume (pool {spec["rbd"].get("pool", "rbd")}, image {spec["rbd"].get("image")})'
    if csi.get("driver", "").endswith("rbd.csi.ceph.com"):
        attrs = csi.get("volumeAttributes") or {}
        return f'a ceph-csi RBD volume (pool {attrs.get("pool")}, image {attrs.get("imageName")})'
    if "cephfs" in spec or csi.get("driver", "").endswith("cephfs.csi.ceph.com"):
        return "a CephFS volume"
    return None


NO_RBD = ("the sandbox can't mount RBD or CephFS filesystems (no krbd, rbd-nbd or ceph kernel client on this "
          "machine); reach the image through librbd instead")


def pv_source(cfg: Config, vol: str, pv: Obj) -> Path:
    spec = pv["spec"]
    name = pv["metadata"]["name"]
    ceph = _describe_ceph(pv)
    if ceph:
        raise VolumeError(UNSUPPORTED, f'volume "{vol}": PV "{name}" is {ceph}; {NO_RBD}')
    if "nfs" in spec:
        return nfs_local_dir(cfg, vol, spec["nfs"]["server"], spec["nfs"]["path"])
    csi = spec.get("csi") or {}
    if csi.get("driver") == NFS_CSI_DRIVER:
        attrs = csi.get("volumeAttributes") or {}
        share = posixpath.join(attrs.get("share", "/"), attrs.get("subdir") or attrs.get("subDir") or "")
        return nfs_local_dir(cfg, vol, attrs.get("server", ""), share)
    for kind in ("hostPath", "local"):
        if kind in spec:
            return Path(spec[kind]["path"])
    kind = csi.get("driver") and f'CSI driver "{csi["driver"]}"' or next(
        (k for k in spec if k not in ("accessModes", "capacity", "claimRef", "persistentVolumeReclaimPolicy",
                                      "storageClassName", "volumeMode", "mountOptions", "nodeAffinity",
                                      "volumeAttributesClassName")), "unknown")
    raise VolumeError(UNSUPPORTED, f'volume "{vol}": PV "{name}" is of type {kind}, which the sandbox pod runner '
                      f'can\'t mount (it maps only NFS, NFS CSI, hostPath and local PVs)')


def claim_source(ctx: Context, vol: str, claim: str) -> Path:
    pvc = _get(ctx, "persistentvolumeclaims", claim)
    if pvc is None:
        raise VolumeError(NOT_BOUND, f'volume "{vol}": persistentvolumeclaim "{claim}" not found', retry=True)
    if (pvc["spec"].get("volumeMode") or "Filesystem") == "Block":
        raise VolumeError(UNSUPPORTED, f'volume "{vol}": PVC "{claim}" is a Block volume; the sandbox can\'t attach '
                          f'block devices')
    pv_name = pvc["spec"].get("volumeName")
    if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
        raise VolumeError(NOT_BOUND, f'volume "{vol}": PVC "{claim}" is not bound to a PV yet '
                          f'(phase {(pvc.get("status") or {}).get("phase", "Pending")})', retry=True)
    try:
        pv = ctx.api.get(f"/api/v1/persistentvolumes/{pv_name}")
    except ApiError as e:
        raise VolumeError(NOT_BOUND, f'volume "{vol}": PV "{pv_name}" of PVC "{claim}": {e.message}',
                          retry=True) from None
    return pv_source(ctx.cfg, vol, pv)


# --- all volumes of a pod ---------------------------------------------------------------------

def _host_path(vol: str, spec: Obj) -> Path:
    path = Path(spec["path"])
    kind = spec.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    checks = {"Directory": path.is_dir, "File": path.is_file, "Socket": path.is_socket,
              "CharDevice": path.is_char_device, "BlockDevice": path.is_block_device}
    if kind in checks and not checks[kind]():
        raise VolumeError(FAILED_MOUNT, f'volume "{vol}": hostPath {path} is not a {kind}', retry=True)
    if not path.exists():
        # Like a kubelet with an empty type: nothing is checked, but a bind needs a source.
        path.mkdir(parents=True, exist_ok=True)
    return path


def _volume_dir(ctx: Context, vol: str) -> Path:
    path = ctx.pod_dir / "volumes" / vol
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prepare_one(ctx: Context, vol: Obj, tokens: list[TokenFile]) -> tuple[Path, bool]:
    """One volume's local source and whether it is read-only at the source."""
    name = vol["name"]
    if "emptyDir" in vol:
        path = _volume_dir(ctx, name)
        os.chmod(path, 0o777)  # as a kubelet makes it: any container user may write
        if ctx.fs_group is not None:  # and owned by the fsGroup, setgid so new files inherit it
            os.chown(path, -1, ctx.fs_group)
            os.chmod(path, 0o2777)
        return path, False
    if "hostPath" in vol:
        return _host_path(name, vol["hostPath"]), False
    if "nfs" in vol:
        return nfs_local_dir(ctx.cfg, name, vol["nfs"]["server"], vol["nfs"]["path"]), bool(vol["nfs"].get("readOnly"))
    if "persistentVolumeClaim" in vol:
        src = vol["persistentVolumeClaim"]
        return claim_source(ctx, name, src["claimName"]), bool(src.get("readOnly"))
    if "ephemeral" in vol:
        return claim_source(ctx, name, f'{ctx.pod["metadata"]["name"]}-{name}'), False
    if "secret" in vol:
        path = _volume_dir(ctx, name)
        _write_keyed(ctx, path, name, "secrets", vol["secret"], vol["secret"].get("defaultMode", 0o644))
        return path, True
    if "configMap" in vol:
        path = _volume_dir(ctx, name)
        _write_keyed(ctx, path, name, "configmaps", vol["configMap"], vol["configMap"].get("defaultMode", 0o644))
        return path, True
    if "downwardAPI" in vol:
        path = _volume_dir(ctx, name)
        spec = vol["downwardAPI"]
        _write_downward(ctx, path, name, spec.get("items") or [], spec.get("defaultMode", 0o644))
        return path, True
    if "projected" in vol:
        path = _volume_dir(ctx, name)
        _write_projected(ctx, path, name, vol["projected"], tokens)
        return path, True
    return _unsupported(vol)


def _unsupported(vol: Obj) -> tuple[Path, bool]:
    name = vol["name"]
    kind = next((k for k in vol if k != "name"), "unknown")
    if kind == "rbd":
        why = f'in-line RBD volume (pool {vol["rbd"].get("pool", "rbd")}, image {vol["rbd"].get("image")}): {NO_RBD}'
    elif kind == "csi":
        driver = vol["csi"].get("driver", "")
        why = f'CSI driver "{driver}": ' + (NO_RBD if "ceph" in driver else "the sandbox has no CSI node plugins")
    elif kind == "cephfs":
        why = f"CephFS volume: {NO_RBD}"
    else:
        why = f'volume type "{kind}" is not supported by the sandbox pod runner'
    raise VolumeError(UNSUPPORTED, f'volume "{name}": {why}')


def check_devices(pod: Obj) -> None:
    """Block ``volumeDevices`` can't be attached here; say so before anything runs."""
    for c in pod["spec"].get("initContainers", []) + pod["spec"].get("containers", []):
        for dev in c.get("volumeDevices") or []:
            raise VolumeError(UNSUPPORTED, f'volume "{dev["name"]}": container "{c["name"]}" wants it as a block '
                              f'device at {dev["devicePath"]}; the sandbox can\'t attach block devices (no krbd, '
                              f'rbd-nbd or loop attach of RBD images)')


def sa_fallback_volume(pod: Obj) -> Obj | None:
    """The kube-api-access volume the ServiceAccount admission plugin adds, when it didn't."""
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is False:
        return None
    mounted = any(m.get("mountPath", "").rstrip("/") == SA_DIR
                  for c in spec.get("initContainers", []) + spec.get("containers", [])
                  for m in c.get("volumeMounts") or [])
    if mounted:
        return None
    return {"name": "kube-api-access-sandbox", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}


def prepare(ctx: Context, volumes: list[Obj]) -> Volumes:
    """Provide every volume of the pod; raise VolumeError for the first one that can't be."""
    check_devices(ctx.pod)
    out = Volumes({}, set(), [])
    for vol in volumes:
        path, read_only = _prepare_one(ctx, vol, out.tokens)
        out.paths[vol["name"]] = path
        if read_only:
            out.read_only.add(vol["name"])
    return out


def node_allocatable() -> dict[str, str]:
    """What this machine offers, as the node reports it."""
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem_kib}Ki", "pods": "110",
            "ephemeral-storage": f"{_disk_bytes() // 1024}Ki"}


def _disk_bytes() -> int:
    st = os.statvfs("/")
    return st.f_blocks * st.f_frsize

