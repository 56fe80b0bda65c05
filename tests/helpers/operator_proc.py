"""Runs the operator from the checkout as a real process, the way tests need it:
started, killed at a chosen moment (SIGKILL, like a node loss), restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick), for an operator's metrics/health."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    def __init__(self, venv: Path, kubeconfig: Path, log: Path, env: dict[str, str], health_port: int) -> None:
        self.venv = venv
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = env
        self.health_port = health_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_format = "plain"  # readable test logs; the operator's default is JSON
        self.verbose = True  # kopf's debug log too (the chart's default is without)

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAVEPOINT_")}
        env.update(self.env)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["SAVEPOINT_HEALTH_PORT"] = str(self.health_port)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen([str(self.venv / "bin" / "savepoint-operator"), f"--log-format={self.log_format}",
                                      *(["--verbose"] if self.verbose else [])],
                                     env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"operator not healthy after {timeout}s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, as when the node dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def death(self) -> str | None:
        """None while it runs (or before it started); else how it ended, with the end of its log."""
        if self.proc is None or self.proc.poll() is None:
            return None
        lines = self.log_text().splitlines()
        # After a fatal signal faulthandler writes every thread's stack: show all of it (CI keeps no logs).
        fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
        start = max(0, (fatal if fatal is not None else len(lines)) - 30)
        tail = "\n".join(lines[start:start + 400])
        return f"exited with {self.proc.returncode}; the end of {self.log}:\n{tail}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
