"""Starting, finding and stopping the sandbox's daemons by pid file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sandboxlib.config import Config


class SandboxError(Exception):
    """A one-line, user-facing failure: what broke and which log to read."""


def pid_file(cfg: Config, name: str) -> Path:
    return cfg.pids / f"{name}.pid"


def read_pid(cfg: Config, name: str) -> int | None:
    try:
        pid = int(pid_file(cfg, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def running(cfg: Config, name: str) -> bool:
    return read_pid(cfg, name) is not None


def start(
    cfg: Config,
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached in its own session, logging to ``logs/<name>.log``.

    Returns the pid (and records it); a component already running is left alone.
    """
    pid = read_pid(cfg, name)
    if pid is not None:
        return pid
    cfg.logs.mkdir(parents=True, exist_ok=True)
    cfg.pids.mkdir(parents=True, exist_ok=True)
    log = cfg.log(name)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(map(str, argv))}\n".encode())
        out.flush()
        child = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # survives the CLI; killable as a group
        )
    pid_file(cfg, name).write_text(f"{child.pid}\n")
    return child.pid


def stop(cfg: Config, name: str, timeout: float = 15.0) -> bool:
    """Stop a component's whole process group: TERM, then KILL after ``timeout``."""
    path = pid_file(cfg, name)
    pid = read_pid(cfg, name)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
    path.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def require_free_port(cfg: Config, name: str, port: int) -> None:
    """Fail with a clear message when a port we need is taken by someone else."""
    if port_in_use(cfg.host, port):
        raise SandboxError(
            f"{name}: port {cfg.host}:{port} is already in use by another process "
            f"(stop it, or set another port; see hack/sandboxlib/config.py)"
        )


def wait_for(
    cfg: Config,
    name: str,
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float = 60.0,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it is true; fail naming the component and its log.

    Also fails at once when the component's process has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a not-yet-ready service raises all sorts
            pass
        if pid_file(cfg, name).exists() and not running(cfg, name):
            raise SandboxError(f"{name} died while waiting for {what}; see {cfg.log(name)}")
        if time.monotonic() > deadline:
            raise SandboxError(f"{name}: {what} not ready after {timeout:.0f}s; see {cfg.log(name)}")
        time.sleep(interval)


def run(argv: Sequence[str | os.PathLike[str]], *, what: str, log: Path | None = None,
        env: Mapping[str, str] | None = None, input: str | None = None, timeout: float = 300,
        cwd: Path | None = None) -> str:
    """Run a short command, returning stdout; a failure becomes a SandboxError."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=full_env,
                          input=input, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit {proc.returncode}"
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(f"$ {' '.join(map(str, argv))}\n{proc.stdout}\n{proc.stderr}\n")
        where = f"; see {log}" if log else ""
        raise SandboxError(f"{what} failed: {last}{where}")
    return proc.stdout
