"""``hack/sandbox up`` and ``down`` on a second, private sandbox (own state dir
and ports), so the shared one the other tests use keeps running."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

PORTS = {"SAVEPOINT_ETCD_PORT": "23890", "SAVEPOINT_ETCD_PEER_PORT": "23900", "SAVEPOINT_APISERVER_PORT": "16543",
         "SAVEPOINT_KCM_PORT": "20357", "SAVEPOINT_CEPH_MON_PORT": "13400", "SAVEPOINT_NFS_PORT": "12149"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # zombies are dead, only unreaped
    except FileNotFoundError:
        return False


@pytest.fixture
def private_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, SAVEPOINT_SANDBOX_DIR=str(tmp_path / "sandbox"), SAVEPOINT_CEPH_OSD_BYTES=str(1 << 30),
               **PORTS)
    return env


def test_up_is_idempotent_and_down_leaves_no_process(private_env: dict[str, str], kube: object) -> None:
    # `kube` first: the binaries are built and cached, so this measures a warm start.
    sandbox = str(ROOT / "hack" / "sandbox")
    t0 = time.monotonic()
    subprocess.run([sandbox, "up"], env=private_env, check=True)
    first = time.monotonic() - t0
    pids = {p.stem: int(p.read_text()) for p in (Path(private_env["SAVEPOINT_SANDBOX_DIR"]) / "pids").glob("*.pid")}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "podrunner"} <= set(pids)
    assert any(name.startswith("ceph-") for name in pids) and "ganesha" in "".join(pids)
    assert all(_alive(pid) for pid in pids.values())

    t0 = time.monotonic()
    status = subprocess.run([sandbox, "up"], env=private_env, check=True, capture_output=True, text=True)
    again = time.monotonic() - t0
    assert "running" in status.stdout
    print(f"private sandbox: up {first:.1f}s, up again {again:.1f}s")
    assert again < first

    subprocess.run([sandbox, "down"], env=private_env, check=True)
    left = [f"{name}({pid})" for name, pid in pids.items() if _alive(pid)]
    assert not left, f"still running after down: {left}"
    assert not Path(private_env["SAVEPOINT_SANDBOX_DIR"]).exists()


def test_a_port_in_use_is_a_clear_one_line_error(private_env: dict[str, str], kube: Any) -> None:
    # The shared sandbox's API server holds its port: point the private one there.
    port = kube.apiserver_port
    env = dict(private_env, SAVEPOINT_APISERVER_PORT=str(port))
    out = subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "kube"], env=env, capture_output=True, text=True)
    try:
        assert out.returncode == 1
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"sandbox: error: kube-apiserver: port 127.0.0.1:{port} is already in use"), out.stderr
    finally:
        subprocess.run([str(ROOT / "hack" / "sandbox"), "down"], env=env, check=False)
