"""The pod runner: the sandbox's stand-in for a kubelet (see docs/sandbox.md).

No container runtime or kubelet can run here, so a daemon
(``podrunner_daemon``) registers Node ``sandbox-node``, binds pending pods to
it and runs each container's command as a local process in private mount and
UTS namespaces, with the pod's volumes bind-mounted at their mountPaths.

This module is the sandbox component (``up``/``down``/``status``) and the
layout of the runner's state, which tests use to find container logs.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sandboxlib import proc
from sandboxlib.config import Config

NAME = "podrunner"
NODE_NAME = "sandbox-node"


# --- where things live ---------------------------------------------------------------------

def state_dir(cfg: Config) -> Path:
    return cfg.state / NAME


def pods_dir(cfg: Config) -> Path:
    """Per-pod runtime files: emptyDirs, secret/configMap files, container roots, pid records."""
    return state_dir(cfg) / "pods"


def logs_dir(cfg: Config) -> Path:
    return state_dir(cfg) / "logs"


def ready_file(cfg: Config) -> Path:
    return state_dir(cfg) / "ready"


def pod_key(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}_{name}_{uid}"  # the kubelet's /var/log/pods naming


def container_log(cfg: Config, namespace: str, pod: str, uid: str, container: str, restart: int = 0) -> Path:
    """A container's stdout+stderr for one run (``restart`` = its restartCount then)."""
    return logs_dir(cfg) / pod_key(namespace, pod, uid) / container / f"{restart}.log"


# --- processes of containers ----------------------------------------------------------------

def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def pids_in_mntns(mntns: str) -> list[int]:
    """Every process in the mount namespace ``mntns`` (e.g. ``mnt:[4026532]``): one container's processes."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == mntns:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def signal_container(pid: int | None, mntns: str | None, sig: int) -> None:
    """Signal a container's process group and anything else left in its mount namespace."""
    targets = pids_in_mntns(mntns) if mntns else []
    if pid is not None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for other in targets:
        try:
            os.kill(other, sig)
        except ProcessLookupError:
            pass


def kill_recorded(cfg: Config) -> int:
    """SIGKILL every container process a runner recorded and that still lives; returns how many."""
    killed = 0
    for record in pods_dir(cfg).glob("*/containers/*/pid"):
        try:
            pid_text, start = record.read_text().split()
        except (OSError, ValueError):
            continue
        mntns_file = record.with_name("mntns")
        mntns = mntns_file.read_text().strip() if mntns_file.exists() else None
        pid = int(pid_text)
        alive = proc_start_time(pid) == start
        members = pids_in_mntns(mntns) if mntns else []
        if alive or members:
            signal_container(pid if alive else None, mntns, signal.SIGKILL)
            killed += 1
        record.unlink(missing_ok=True)
    return killed


# --- the sandbox component ------------------------------------------------------------------

def _ready(cfg: Config) -> bool:
    pid = proc.read_pid(cfg, NAME)
    try:
        return pid is not None and ready_file(cfg).read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def up(cfg: Config) -> None:
    """Start the daemon (once) and wait until it reports the node Ready."""
    if not proc.running(cfg, NAME):
        state_dir(cfg).mkdir(parents=True, exist_ok=True)
        ready_file(cfg).unlink(missing_ok=True)
        proc.start(cfg, NAME, [cfg.venv / "bin" / "python", "-m", "sandboxlib.podrunner_daemon"],
                   env={"PYTHONPATH": str(cfg.root / "hack"), "PYTHONUNBUFFERED": "1"}, cwd=cfg.root)
    proc.wait_for(cfg, NAME, lambda: _ready(cfg), what=f"node {NODE_NAME} Ready", timeout=60)


def down(cfg: Config) -> None:
    # The daemon stops its pods on SIGTERM (grace period, then SIGKILL); the
    # records catch anything a killed daemon could not stop.
    proc.stop(cfg, NAME, timeout=30)
    kill_recorded(cfg)
    ready_file(cfg).unlink(missing_ok=True)


def _running_containers(cfg: Config) -> int:
    count = 0
    for record in pods_dir(cfg).glob("*/containers/*/pid"):
        try:
            pid, start = record.read_text().split()
        except (OSError, ValueError):
            continue
        count += proc_start_time(int(pid)) == start
    return count


def status(cfg: Config) -> list[str]:
    pid = proc.read_pid(cfg, NAME)
    state = f"running pid {pid}" if pid else "stopped"
    line = f"{NAME:24s} {state:18s} node {NODE_NAME}  log {cfg.log(NAME)}"
    if pid:
        line += f"  containers running {_running_containers(cfg)}  container logs {logs_dir(cfg)}"
    return [line]
