"""Shared fixtures: the sandbox's real services, started (or reused) once per session.

Each fixture runs ``hack/sandbox up <component>``, which is idempotent and
returns in well under a second when the component already runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))

from sandboxlib import config as sandbox_config  # noqa: E402


def _up(*components: str) -> None:
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", *components], check=True)


@pytest.fixture(scope="session")
def sandbox_cfg() -> sandbox_config.Config:
    return sandbox_config.load()


@pytest.fixture(scope="session")
def ceph(sandbox_cfg: sandbox_config.Config) -> sandbox_config.Config:
    """A running single-node Ceph cluster (memstore OSD, cephx on)."""
    _up("ceph")
    os.environ.setdefault("CEPH_CONF", str(sandbox_cfg.ceph_conf))
    return sandbox_cfg


@pytest.fixture(scope="session")
def nfs(sandbox_cfg: sandbox_config.Config) -> sandbox_config.Config:
    """A running nfs-ganesha serving exports under the sandbox directory."""
    _up("nfs")
    return sandbox_cfg


@pytest.fixture(scope="session")
def apiserver(sandbox_cfg: sandbox_config.Config) -> sandbox_config.Config:
    """Only the control plane (etcd, kube-apiserver, kube-controller-manager)."""
    _up("kube")
    _use_kubeconfig(sandbox_cfg)
    return sandbox_cfg


@pytest.fixture(scope="session")
def kube(sandbox_cfg: sandbox_config.Config) -> sandbox_config.Config:
    """The whole sandbox: control plane, Ceph published into it, NFS, pod runner."""
    _up()
    _use_kubeconfig(sandbox_cfg)
    return sandbox_cfg


def _use_kubeconfig(cfg: sandbox_config.Config) -> None:
    """Admin access for the tests' own API calls (the operator gets its own, narrower one)."""
    os.environ["KUBECONFIG"] = str(cfg.kubeconfig)
    import kubernetes

    kubernetes.config.load_kube_config(str(cfg.kubeconfig))
