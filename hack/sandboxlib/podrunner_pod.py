"""One pod on the sandbox node: its containers as local processes, its status like a kubelet's.

A :class:`PodWorker` thread owns one pod from binding to its terminal phase
(or its deletion).  It sleeps on a queue: pod updates, process exits (one
waiter thread per process), PVC changes and shutdown all arrive there, and
timers (restart back-off, activeDeadlineSeconds, token refresh, volume
retries) are the queue's timeout, so nothing polls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxlib import podrunner
from sandboxlib import podrunner_volumes as volumes
from sandboxlib.podrunner_api import STRATEGIC_PATCH, ApiError, Obj, now, pod_path

if TYPE_CHECKING:
    from sandboxlib.podrunner_daemon import Runner

log = logging.getLogger("podrunner")

EXEC_SCRIPT = Path(__file__).with_name("podrunner_exec.py")
HOST_IP = "127.0.0.1"
MAX_MESSAGE = 4096  # kubelet's limit on a termination message
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # FallbackToLogsOnError, as the kubelet does
SHUTDOWN_GRACE = 3.0
VOLUME_WAIT = float(os.environ.get("SAVEPOINT_PODRUNNER_VOLUME_WAIT", "60"))
MAX_BACKOFF = 30.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TERMINAL = ("Succeeded", "Failed")


class ConfigError(Exception):
    """The container's env can't be built yet (a missing ConfigMap, Secret or key): retried."""


@dataclasses.dataclass
class Run:
    """One container of the pod and its current process."""

    spec: Obj
    init: bool
    sidecar: bool  # an init container with restartPolicy Always
    restart_count: int = 0
    state: Obj = dataclasses.field(default_factory=dict)
    last_state: Obj = dataclasses.field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    gen: int = 0  # bumped per start: exit events of older processes are ignored
    started_at: str = ""
    ever_started: bool = False
    next_start: float | None = None  # monotonic time to (re)start at
    config_backoff: float = 0.0
    done: bool = False  # terminated and won't restart
    exit_code: int | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.process is not None


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, unknown refs stay."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-64 * 1024:]
    except FileNotFoundError:
        return ""
    lines = data.decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)[-LOG_TAIL_BYTES:]


class PodWorker:
    def __init__(self, runner: Runner, pod: Obj) -> None:
        meta = pod["metadata"]
        self.thread = threading.Thread(target=self._main, name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.api = runner.api
        self.cfg = runner.cfg
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        key = podrunner.pod_key(self.namespace, self.pod_name, self.uid)
        self.pod_dir = podrunner.pods_dir(self.cfg) / key
        spec = pod["spec"]
        self.runs = [Run(c, True, c.get("restartPolicy") == "Always") for c in spec.get("initContainers") or []]
        self.runs += [Run(c, False, False) for c in spec.get("containers") or []]
        for run in self.runs:
            reason = "PodInitializing" if run.init or spec.get("initContainers") else "ContainerCreating"
            run.state = {"waiting": {"reason": reason}}
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time = ""
        self.started_mono = 0.0
        self.conditions: dict[str, Obj] = {}
        self.vols: volumes.Volumes | None = None
        self.sa_volume = volumes.sa_fallback_volume(pod)
        self.volume_retry_at: float | None = None
        self.volume_backoff = 0.0
        self.stopping = False  # no more (re)starts
        self.gone = False  # the pod object was removed from the API
        self.shutting_down = False  # the runner itself stops
        self.published: str | None = None

    # --- inputs from the daemon ------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def notify(self, pod: Obj) -> None:
        self.events.put(("pod", pod))

    def notify_gone(self) -> None:
        self.events.put(("gone", None))

    def notify_volumes(self) -> None:
        self.events.put(("volumes", None))

    def shutdown(self) -> None:
        self.events.put(("shutdown", None))

    @property
    def waiting_for_volumes(self) -> bool:
        return self.vols is None and not self.stopping

    # --- the lifecycle ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._lifecycle()
        except Exception as e:  # noqa: BLE001 - a bug must fail the pod visibly, not hang it
            log.exception("pod %s/%s: runner error", self.namespace, self.pod_name)
            self._kill_all(0)
            self._fail("PodRunnerError", f"the sandbox pod runner failed: {type(e).__name__}: {e} "
                       f"(see {self.cfg.log(podrunner.NAME)})")
        finally:
            self._kill_all(0)
            shutil.rmtree(self.pod_dir, ignore_errors=True)
            self.runner.forget(self)

    def _lifecycle(self) -> None:
        if self._deleting():
            self._delete()
            return
        self.started_mono = time.monotonic()
        self.start_time = self.pod.get("status", {}).get("startTime") or now()
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        log.info("pod %s/%s: starting", self.namespace, self.pod_name)
        self._publish()
        while True:
            if not self._step():
                return
            self._publish()
            self._wait()

    def _wait(self) -> None:
        """Block until the next event or timer, then apply what arrived."""
        wake = self._next_wakeup()
        try:
            kind, data = self.events.get(timeout=None if wake is None else max(0.0, wake - time.monotonic()))
        except queue.Empty:
            return
        self._apply(kind, data)
        while True:  # apply everything else already queued before acting
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                return
            self._apply(kind, data)

    def _apply(self, kind: str, data: Any) -> None:
        if kind == "pod":
            self.pod = data
        elif kind == "gone":
            self.gone = True
        elif kind == "shutdown":
            self.shutting_down = True
        elif kind == "exit":
            self._on_exit(*data)
        elif kind == "volumes" and self.vols is None:
            self.volume_retry_at = time.monotonic()

    def _next_wakeup(self) -> float | None:
        times = [r.next_start for r in self.runs if r.next_start is not None]
        if self.volume_retry_at is not None:
            times.append(self.volume_retry_at)
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None:
            times.append(self.started_mono + deadline)
        for token in self.vols.tokens if self.vols else []:
            times.append(time.monotonic() + token.refresh_at - time.time())
        return min(times) if times else None

    def _step(self) -> bool:
        """Act on the current state; False once the worker is done with the pod."""
        if self.gone:
            self._kill_all(0)
            return False
        if self.shutting_down:
            self._kill_all(SHUTDOWN_GRACE)
            self._fail("Terminated", "the sandbox pod runner stopped (hack/sandbox down or a restart) and "
                       "killed this pod's processes")
            return False
        if self._deleting():
            self._kill_all(self._grace())
            self._finish_phase()
            self._publish()
            self._delete()
            return False
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() >= self.started_mono + deadline:
            self._kill_all(self._grace())
            self._fail("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
            return False
        if self.vols is None and not self._prepare_volumes():
            return self.phase not in TERMINAL
        self._refresh_tokens()
        self._schedule_starts()
        now_mono = time.monotonic()
        for run in self.runs:
            if run.next_start is not None and run.next_start <= now_mono:
                self._start(run)
        self._compute_phase()
        if self.phase in TERMINAL:
            self._stop_sidecars()
            self._publish()
            log.info("pod %s/%s: %s", self.namespace, self.pod_name, self.phase)
            return False
        return True

    # --- volumes ---------------------------------------------------------------------------

    def _prepare_volumes(self) -> bool:
        if self.volume_retry_at is not None and time.monotonic() < self.volume_retry_at:
            return False
        self.volume_retry_at = None
        ctx = volumes.Context(self.api, self.cfg, self.pod, self.pod_dir, podrunner.NODE_NAME)
        pod_volumes = list(self.pod["spec"].get("volumes") or [])
        if self.sa_volume:
            pod_volumes.append(self.sa_volume)
        try:
            self.vols = volumes.prepare(ctx, pod_volumes)
        except volumes.VolumeError as e:
            waited = time.monotonic() - self.started_mono
            if not e.retry or waited >= VOLUME_WAIT:
                suffix = "" if not e.retry else f" (gave up after {waited:.0f}s)"
                self._fail(e.reason, e.message + suffix)
                return False
            self.volume_backoff = min(max(2 * self.volume_backoff, 1.0), 8.0)
            self.volume_retry_at = time.monotonic() + self.volume_backoff
            for run in self.runs:
                run.state = {"waiting": {"reason": "ContainerCreating", "message": f"{e.reason}: {e.message}"}}
            return False
        return True

    def _refresh_tokens(self) -> None:
        assert self.vols is not None
        ctx = volumes.Context(self.api, self.cfg, self.pod, self.pod_dir, podrunner.NODE_NAME)
        for token in self.vols.tokens:
            if time.time() >= token.refresh_at:
                try:
                    volumes.write_token(ctx, token)
                except volumes.VolumeError as e:
                    log.warning("pod %s/%s: token refresh failed: %s", self.namespace, self.pod_name, e)
                    token.refresh_at = time.time() + 10

    # --- starting containers ---------------------------------------------------------------

    def _schedule_starts(self) -> None:
        """Init containers one after another (sidecars once running), then all containers."""
        if self.stopping:
            return
        for run in self.runs:
            if not run.init:
                break
            if run.sidecar and run.ever_started or run.done and run.exit_code == 0:
                continue
            if not run.ever_started and not run.running and run.next_start is None:
                run.next_start = time.monotonic()
            return
        for run in self.runs:
            if not run.init and not run.ever_started and not run.running and run.next_start is None:
                run.next_start = time.monotonic()

    def _inits_done(self) -> bool:
        return all(r.sidecar and r.ever_started or r.done and r.exit_code == 0 for r in self.runs if r.init)

    def _start(self, run: Run) -> None:
        run.next_start = None
        if not run.spec.get("command"):
            self._exited_early(run, "the sandbox pod runner does not pull images, so it can't run an image's "
                               "entrypoint: set the container's command")
            return
        try:
            env = self._env(run.spec)
        except ConfigError as e:
            run.config_backoff = min(max(2 * run.config_backoff, 1.0), MAX_BACKOFF)
            run.next_start = time.monotonic() + run.config_backoff
            run.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            return
        argv = [_expand(a, env) for a in run.spec.get("command", []) + run.spec.get("args", [])]
        cdir = self.pod_dir / "containers" / run.name
        cdir.mkdir(parents=True, exist_ok=True)
        for stale in ("start-error", "mntns"):
            (cdir / stale).unlink(missing_ok=True)
        try:
            mounts = self._mounts(run, env, cdir)
        except ValueError as e:
            self._exited_early(run, str(e))
            return
        (cdir / "rootfs").mkdir(exist_ok=True)
        spec = {"argv": argv, "env": env, "cwd": run.spec.get("workingDir"), "hostname": self._hostname(),
                "rootfs": str(cdir / "rootfs"), "mounts": mounts, "user": self._user(run.spec),
                "keep": [str(self.cfg.root)]}
        spec_path = cdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        log_path = podrunner.container_log(self.cfg, self.namespace, self.pod_name, self.uid, run.name,
                                           run.restart_count)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(EXEC_SCRIPT), str(spec_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                env={"PATH": DEFAULT_PATH}, start_new_session=True,  # its own group: killable as a whole
            )
        (cdir / "pid").write_text(f"{process.pid} {podrunner.proc_start_time(process.pid)}\n")
        run.process = process
        run.gen += 1
        run.ever_started = True
        run.config_backoff = 0.0
        run.started_at = now()
        run.state = {"running": {"startedAt": run.started_at}}
        threading.Thread(target=self._reap, args=(run, process, run.gen, cdir), daemon=True,
                         name=f"reap-{self.pod_name}-{run.name}").start()
        log.info("pod %s/%s: container %s started, pid %d, log %s", self.namespace, self.pod_name, run.name,
                 process.pid, log_path)

    def _reap(self, run: Run, process: subprocess.Popen[bytes], gen: int, cdir: Path) -> None:
        code = process.wait()
        # Like a container's init exiting: nothing it left behind survives it.
        mntns = (cdir / "mntns").read_text().strip() if (cdir / "mntns").exists() else None
        podrunner.signal_container(process.pid, mntns, signal.SIGKILL)
        (cdir / "pid").unlink(missing_ok=True)
        self.events.put(("exit", (run, gen, code)))

    def _exited_early(self, run: Run, message: str) -> None:
        """A container that could not be started at all: terminated with StartError, like containerd."""
        run.gen += 1
        run.ever_started = True
        run.started_at = now()
        self._on_exit(run, run.gen, 128, start_error=message)

    def _hostname(self) -> str:
        return (self.pod["spec"].get("hostname") or self.pod_name)[:63]

    def _user(self, spec: Obj) -> Obj:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(spec.get("securityContext") or {})}
        groups = list(pod_sc.get("supplementalGroups") or [])
        if pod_sc.get("fsGroup") is not None:
            groups.append(pod_sc["fsGroup"])
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if uid is not None and gid is None:
            gid = 0  # an image's user without a group runs in group root
        return {"uid": uid, "gid": gid, "groups": groups}

    def _env(self, spec: Obj) -> dict[str, str]:
        """The container's environment, in the kubelet's order: service links, envFrom, env."""
        env: dict[str, str] = {
            "PATH": f"{self.cfg.venv / 'bin'}:{DEFAULT_PATH}",
            "HOME": "/root" if self._user(spec)["uid"] in (None, 0) else "/",
            "HOSTNAME": self._hostname(),
            "KUBERNETES_SERVICE_HOST": self.cfg.host,
            "KUBERNETES_SERVICE_PORT": str(self.cfg.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.cfg.apiserver_port),
            "KUBERNETES_PORT": f"tcp://{self.cfg.host}:{self.cfg.apiserver_port}",
        }
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self._env_source(source).items():
                if re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", prefix + key):
                    env[prefix + key] = value
        for var in spec.get("env") or []:
            if "valueFrom" in var:
                from_ref = self._env_value_from(spec, var["name"], var["valueFrom"])
                if from_ref is not None:
                    env[var["name"]] = from_ref
            else:
                env[var["name"]] = _expand(var.get("value", ""), env)
        return env

    def _env_source(self, source: Obj) -> dict[str, str]:
        if "secretRef" in source:
            kind, ref = "secrets", source["secretRef"]
        else:
            kind, ref = "configmaps", source["configMapRef"]
        obj = self._get(kind, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
        return {k: v.decode(errors="replace") for k, v in volumes._keyed_data(obj, kind).items()}

    def _env_value_from(self, spec: Obj, name: str, source: Obj) -> str | None:
        try:
            if "fieldRef" in source:
                return volumes.field_value(self.pod, source["fieldRef"]["fieldPath"])
            if "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                return volumes.resource_value(self.pod, ref.get("containerName") or spec["name"], ref["resource"],
                                              ref.get("divisor"), volumes.node_allocatable())
        except ValueError as e:
            raise ConfigError(f"env {name}: {e}") from None
        for key, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if key in source:
                ref = source[key]
                obj = self._get(kind, ref["name"])
                data = volumes._keyed_data(obj, kind) if obj else None
                if data is not None and ref["key"] in data:
                    return data[ref["key"]].decode(errors="replace")
                if ref.get("optional"):
                    return None
                what = f'{kind[:-1]} "{ref["name"]}"'
                raise ConfigError(f"{what} not found" if obj is None else f'couldn\'t find key {ref["key"]} in {what}')
        raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")

    def _get(self, kind: str, name: str) -> Obj | None:
        try:
            return self.api.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _mounts(self, run: Run, env: dict[str, str], cdir: Path) -> list[Obj]:
        """Bind mounts for the launcher: each volumeMount, the termination log, the SA fallback."""
        assert self.vols is not None
        out = []
        mounts = list(run.spec.get("volumeMounts") or [])
        if self.sa_volume:
            mounts.append({"name": self.sa_volume["name"], "mountPath": volumes.SA_DIR, "readOnly": True})
        for m in mounts:
            source = self.vols.paths.get(m["name"])
            if source is None:
                raise ValueError(f'volumeMount "{m["name"]}" names no volume of the pod')
            sub = m.get("subPath") or (_expand(m["subPathExpr"], env) if m.get("subPathExpr") else "")
            if sub:
                sub_norm = os.path.normpath(sub)
                if sub_norm.startswith(("/", "..")):
                    raise ValueError(f'volumeMount "{m["name"]}": subPath {sub!r} must stay inside the volume')
                source = source / sub_norm
                if not source.exists():
                    source.mkdir(parents=True)  # as the kubelet does for a missing subPath
            read_only = bool(m.get("readOnly")) or m["name"] in self.vols.read_only
            out.append({"source": str(source), "target": m["mountPath"], "readOnly": read_only})
        term_log = cdir / "termination-log"
        term_log.write_bytes(b"")
        os.chmod(term_log, 0o666)  # as the kubelet does: any container user may write it
        target = run.spec.get("terminationMessagePath") or "/dev/termination-log"
        out.append({"source": str(term_log), "target": target})
        return out

    # --- exits and restarts ------------------------------------------------------------------

    def _on_exit(self, run: Run, gen: int, code: int, start_error: str | None = None) -> None:
        if gen != run.gen:
            return
        run.process = None
        cdir = self.pod_dir / "containers" / run.name
        if start_error is None and (cdir / "start-error").exists():
            start_error = (cdir / "start-error").read_text()
        term: Obj = {"exitCode": 128 + -code if code < 0 else code, "startedAt": run.started_at,
                     "finishedAt": now(), "containerID": self._container_id(run)}
        if code < 0:
            term["signal"] = -code
        if start_error is not None:
            term.update(exitCode=128, reason="StartError", message=start_error[:MAX_MESSAGE])
        else:
            term["reason"] = "Completed" if code == 0 else "Error"
            message = self._termination_message(run, cdir, term["exitCode"])
            if message:
                term["message"] = message
        run.exit_code = term["exitCode"]
        log.info("pod %s/%s: container %s exited %d", self.namespace, self.pod_name, run.name, run.exit_code)
        if self._restarts(run):
            run.last_state = {"terminated": term}
            delay = min(2.0 ** run.restart_count, MAX_BACKOFF)
            run.restart_count += 1
            run.next_start = time.monotonic() + delay
            run.state = {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": f"back-off {delay:.0f}s restarting failed container={run.name} "
                                                f"pod={self.pod_name}_{self.namespace}({self.uid})"}}
        else:
            run.state = {"terminated": term}
            run.done = True

    def _restarts(self, run: Run) -> bool:
        if self.stopping:
            return False
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        if run.sidecar:
            return True
        if run.init:
            return run.exit_code != 0 and policy != "Never"
        return policy == "Always" or policy == "OnFailure" and run.exit_code != 0

    def _termination_message(self, run: Run, cdir: Path, exit_code: int) -> str:
        try:
            message = (cdir / "termination-log").read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        except FileNotFoundError:
            message = ""
        if not message and exit_code != 0 and run.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = _tail(podrunner.container_log(self.cfg, self.namespace, self.pod_name, self.uid, run.name,
                                                    run.restart_count))
        return message

    def _container_id(self, run: Run) -> str:
        return f"sandbox://{self.uid}/{run.name}/{run.restart_count}"

    # --- stopping -------------------------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _kill_all(self, grace: float, runs: list[Run] | None = None) -> None:
        """SIGTERM, up to ``grace`` seconds for the processes to exit, then SIGKILL."""
        targets = [r for r in (runs if runs is not None else self.runs) if r.running]
        if runs is None:
            self.stopping = True
            for run in self.runs:
                run.next_start = None
        if not targets:
            return
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        for run in targets:
            self._signal(run, sig)
        self._await_exits(targets, time.monotonic() + grace)
        if any(r.running for r in targets):
            for run in targets:
                if run.running:
                    self._signal(run, signal.SIGKILL)
            self._await_exits(targets, time.monotonic() + 10)

    def _signal(self, run: Run, sig: int) -> None:
        cdir = self.pod_dir / "containers" / run.name
        mntns = (cdir / "mntns").read_text().strip() if (cdir / "mntns").exists() else None
        podrunner.signal_container(run.process.pid if run.process else None, mntns, sig)

    def _await_exits(self, targets: list[Run], deadline: float) -> None:
        while any(r.running for r in targets):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                kind, data = self.events.get(timeout=remaining)
            except queue.Empty:
                return
            if kind == "exit":
                self._on_exit(*data)
            elif kind == "pod":
                self.pod = data
                # A deletion with a shorter grace period (e.g. --force) cuts the wait short.
                grace = data["metadata"].get("deletionGracePeriodSeconds")
                if grace is not None:
                    deadline = min(deadline, time.monotonic() + grace)
            elif kind == "gone":
                self.gone = True
                deadline = time.monotonic()
            elif kind == "shutdown":
                self.shutting_down = True
                deadline = min(deadline, time.monotonic() + SHUTDOWN_GRACE)

    def _stop_sidecars(self) -> None:
        sidecars = [r for r in self.runs if r.sidecar and r.running]
        if sidecars:
            self.stopping = True
            self._kill_all(min(self._grace(), 10.0), sidecars)

    def _finish_phase(self) -> None:
        """The terminal phase of a pod whose containers were stopped for deletion."""
        if self.phase in TERMINAL:
            return
        mains = [r for r in self.runs if not r.init]
        self.phase = "Succeeded" if mains and all(r.done and r.exit_code == 0 for r in mains) else "Failed"

    def _fail(self, reason: str, message: str) -> None:
        self.phase, self.reason, self.message = "Failed", reason, message
        log.info("pod %s/%s: failed: %s: %s", self.namespace, self.pod_name, reason, message)
        self._publish()

    def _compute_phase(self) -> None:
        if self.phase in TERMINAL:
            return
        failed_init = next((r for r in self.runs if r.init and not r.sidecar and r.done and r.exit_code != 0), None)
        if failed_init is not None:
            self.phase = "Failed"
            return
        mains = [r for r in self.runs if not r.init]
        if self._inits_done() and mains and all(r.done for r in mains):
            self.phase = "Succeeded" if all(r.exit_code == 0 for r in mains) else "Failed"
        elif self._inits_done() and any(r.ever_started for r in mains):
            self.phase = "Running"
        else:
            self.phase = "Pending"

    def _deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    def _delete(self) -> None:
        """Remove the pod object once its processes are gone, as a kubelet does."""
        delete_pod(self.runner, self.pod)

    # --- status -------------------------------------------------------------------------------

    def _condition(self, kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> Obj:
        status = "True" if ok else "False"
        old = self.conditions.get(kind) or next(
            (c for c in (self.pod.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)
        since = now()
        if old and old.get("status") == status and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
        # Explicit nulls: a strategic merge patch would otherwise keep an old reason.
        cond = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since,
                "reason": None, "message": None}
        if not ok and reason:
            cond.update(reason=reason, message=message or "")
        self.conditions[kind] = cond
        return cond

    def _status(self) -> Obj:
        mains = [r for r in self.runs if not r.init]
        inits = [r for r in self.runs if r.init]
        unready = [r.name for r in mains if not (r.running and not self.stopping)]
        pending_inits = [r.name for r in inits if not (r.sidecar and r.ever_started or r.done and r.exit_code == 0)]
        terminal = self.phase in TERMINAL
        ready_reason = "PodCompleted" if terminal and self.phase == "Succeeded" else "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(unready)}]"
        if ready_reason == "PodCompleted":
            ready_message = ""
        conditions = [
            self._condition("PodReadyToStartContainers", self.vols is not None and not terminal),
            self._condition("Initialized", not pending_inits or self._inits_done(), "ContainersNotInitialized",
                            f"containers with incomplete status: [{' '.join(pending_inits)}]"),
            self._condition("Ready", not unready and not terminal, ready_reason, ready_message),
            self._condition("ContainersReady", not unready and not terminal, ready_reason, ready_message),
            self._condition("PodScheduled", True),
        ]
        return {
            "phase": self.phase,
            "reason": self.reason,
            "message": self.message,
            "conditions": conditions,
            "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": HOST_IP, "podIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
            "initContainerStatuses": [self._container_status(r) for r in inits] or None,
            "containerStatuses": [self._container_status(r) for r in mains],
        }

    def _container_status(self, run: Run) -> Obj:
        out: Obj = {
            "name": run.name,
            "state": run.state,
            "lastState": run.last_state,
            "ready": run.running and not self.stopping,
            "restartCount": run.restart_count,
            "image": run.spec.get("image") or "none",
            "imageID": "",
            "started": run.running,
        }
        if run.ever_started:
            out["containerID"] = self._container_id(run)
        return out

    def _publish(self) -> None:
        if self.gone:
            return
        status = self._status()
        text = json.dumps(status, sort_keys=True)
        if text == self.published:
            return
        try:
            self.api.patch(pod_path(self.namespace, self.pod_name, "status"),
                           {"metadata": {"uid": self.uid}, "status": status}, STRATEGIC_PATCH)
            self.published = text
        except ApiError as e:
            if e.status in (404, 409):  # gone, or a new pod of the same name
                self.gone = e.status == 404 or self.gone
                return
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.pod_name, e)


def delete_pod(runner: Runner, pod: Obj) -> None:
    """Remove a pod whose processes are gone (grace period 0, for this very uid), as a kubelet does."""
    meta = pod["metadata"]
    runner.deleted.add(meta["uid"])
    try:
        runner.api.delete(pod_path(meta["namespace"], meta["name"]),
                          {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        log.info("pod %s/%s: deleted", meta["namespace"], meta["name"])
    except ApiError as e:
        if e.status not in (404, 409):
            log.warning("pod %s/%s: delete: %s", meta["namespace"], meta["name"], e)


def mark_orphan(runner: Runner, pod: Obj) -> None:
    """A pod a previous runner started: its processes are gone, so it failed (kubelet's words where it has them)."""
    meta = pod["metadata"]
    status = pod.get("status") or {}
    message = ("The container could not be located when the pod was terminated: the sandbox pod runner "
               "restarted while this pod was running and its processes are gone")

    def lost(cs: Obj) -> Obj:
        if "terminated" in (cs.get("state") or {}):
            return cs
        return {**cs, "ready": False, "started": False, "state": {"terminated": {
            "exitCode": 137, "reason": "ContainerStatusUnknown", "message": message,
            "finishedAt": now()}}}

    patch = {"metadata": {"uid": meta["uid"]}, "status": {
        "phase": "Failed", "reason": "PodRunnerRestarted", "message": message,
        "containerStatuses": [lost(cs) for cs in status.get("containerStatuses") or []],
        "initContainerStatuses": [lost(cs) for cs in status.get("initContainerStatuses") or []] or None,
        "conditions": [{"type": t, "status": "False", "reason": "PodRunnerRestarted", "lastProbeTime": None,
                        "lastTransitionTime": now()} for t in ("Ready", "ContainersReady")],
    }}
    try:
        runner.api.patch(pod_path(meta["namespace"], meta["name"], "status"), patch, STRATEGIC_PATCH)
        log.info("pod %s/%s: marked Failed (PodRunnerRestarted)", meta["namespace"], meta["name"])
    except ApiError as e:
        log.warning("pod %s/%s: marking orphan failed: %s", meta["namespace"], meta["name"], e)
