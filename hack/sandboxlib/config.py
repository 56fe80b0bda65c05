"""Where the sandbox keeps things and which ports it uses (all on 127.0.0.1).

Override with environment variables; the defaults let a second checkout reuse
the same cache but keep its own running state.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclasses.dataclass(frozen=True)
class Config:
    root: Path  # the checkout
    state: Path  # running state: data dirs, certs, pid files, logs
    cache: Path  # build cache shared by checkouts, keyed by version
    host: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    kcm_port: int
    ceph_mon_port: int  # msgr2; msgr1 listens on ceph_mon_port + 1
    ceph_osd_bytes: int
    nfs_port: int

    @property
    def venv(self) -> Path:
        return self.root / ".venv"

    @property
    def bin(self) -> Path:
        """Where this checkout's sandbox tools (kubectl, helm, ...) are linked."""
        return self.state / "bin"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kube" / "admin.kubeconfig"

    @property
    def ceph_dir(self) -> Path:
        return self.state / "ceph"

    @property
    def ceph_conf(self) -> Path:
        return self.ceph_dir / "ceph.conf"

    @property
    def ceph_keyring(self) -> Path:
        return self.ceph_dir / "ceph.client.admin.keyring"

    @property
    def nfs_dir(self) -> Path:
        return self.state / "nfs"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def load() -> Config:
    cache = _env_path("SAVEPOINT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "savepoint")
    return Config(
        root=ROOT,
        state=_env_path("SAVEPOINT_SANDBOX_DIR", ROOT / ".sandbox"),
        cache=cache,
        host="127.0.0.1",
        etcd_port=_env_int("SAVEPOINT_ETCD_PORT", 23790),
        etcd_peer_port=_env_int("SAVEPOINT_ETCD_PEER_PORT", 23800),
        apiserver_port=_env_int("SAVEPOINT_APISERVER_PORT", 16443),
        kcm_port=_env_int("SAVEPOINT_KCM_PORT", 20257),
        ceph_mon_port=_env_int("SAVEPOINT_CEPH_MON_PORT", 13300),
        ceph_osd_bytes=_env_int("SAVEPOINT_CEPH_OSD_BYTES", 8 << 30),
        nfs_port=_env_int("SAVEPOINT_NFS_PORT", 12049),
    )
