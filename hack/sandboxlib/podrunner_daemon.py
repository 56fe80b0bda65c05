"""The pod runner daemon: ``python -m sandboxlib.podrunner_daemon`` (started by ``hack/sandbox up``).

It plays the kubelet of Node ``sandbox-node`` and, since there is no
kube-scheduler, the scheduler too: pods without a node are bound to it.  Pods
and PVCs are followed with list+watch (re-listing on 410 Gone); each pod on
the node gets a :class:`~sandboxlib.podrunner_pod.PodWorker` thread.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import sys
import threading
from typing import Callable

from sandboxlib import config, podrunner
from sandboxlib.podrunner_api import MERGE_PATCH, STRATEGIC_PATCH, Api, ApiError, Obj, now, now_micro, pod_path
from sandboxlib.podrunner_pod import TERMINAL, PodWorker, delete_pod, mark_orphan
from sandboxlib.podrunner_volumes import node_allocatable

log = logging.getLogger("podrunner")

NODE = podrunner.NODE_NAME
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
LEASE_SECONDS = 40
HEARTBEAT = 10.0  # lease renewal; node status every STATUS_EVERY heartbeats
STATUS_EVERY = 3
DEFAULT_SCHEDULER = "default-scheduler"


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Informer(threading.Thread):
    """List, then watch from the list's resourceVersion; re-list on 410 Gone or errors."""

    def __init__(self, api: Api, path: str, on_sync: Callable[[list[Obj]], None],
                 on_event: Callable[[str, Obj], None], stop: threading.Event) -> None:
        super().__init__(name=f"informer{path}", daemon=True)
        self.api, self.path, self.on_sync, self.on_event, self.stop = api, path, on_sync, on_event, stop

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                listing = self.api.get(self.path)
                self.on_sync(listing["items"])
                self._watch(listing["metadata"]["resourceVersion"])
            except Gone:
                log.info("watch %s: resourceVersion expired, re-listing", self.path)
                continue
            except ApiError as e:
                if e.status == 410:
                    continue
                log.warning("watch %s: %s", self.path, e)
            except Exception as e:  # noqa: BLE001 - connection trouble: back off and re-list
                log.warning("watch %s: %s: %s", self.path, type(e).__name__, e)
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _watch(self, rv: str) -> None:
        while not self.stop.is_set():
            for event in self.api.watch(self.path, rv):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise ApiError(obj.get("code", 500), obj.get("reason", ""), obj.get("message", ""))
                rv = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self.on_event(kind, obj)
            # the server closed the watch (timeoutSeconds): continue from where we are


class Runner:
    def __init__(self, cfg: config.Config, api: Api) -> None:
        self.cfg = cfg
        self.api = api
        self.stop = threading.Event()
        self.lock = threading.RLock()
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()  # uids whose worker is done; only their deletion is left
        self.deleted: set[str] = set()  # uids we already asked the API server to remove
        self.stopping = False
        self.node_labels = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": _arch()}
        self.ready_since = now()

    # --- node, lease ------------------------------------------------------------------------

    def _node_status(self) -> Obj:
        beat = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "the sandbox pod runner is posting ready status"),
        ]
        resources = node_allocatable()
        uname = platform.uname()
        return {
            "conditions": [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": beat,
                            "lastTransitionTime": self.ready_since} for t, s, r, m in conditions],
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": self.cfg.host}, {"type": "Hostname", "address": NODE}],
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"), "systemUUID": "",
                "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": uname.release,
                "osImage": _os_image(), "containerRuntimeVersion": "sandbox-podrunner://1",
                "kubeletVersion": "v0.0.0-sandbox-podrunner", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": self.node_labels["kubernetes.io/arch"],
            },
        }

    def register_node(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": self.node_labels},
                "status": self._node_status()}
        try:
            self.api.post("/api/v1/nodes", body)
            log.info("node %s registered", NODE)
        except ApiError as e:
            if e.status != 409:
                raise
            self.api.patch(f"/api/v1/nodes/{NODE}", {"metadata": {"labels": self.node_labels}})
        self.post_node_status()

    def post_node_status(self) -> None:
        self.api.patch(f"/api/v1/nodes/{NODE}/status", {"status": self._node_status()}, STRATEGIC_PATCH)

    def renew_lease(self) -> None:
        spec = {"holderIdentity": NODE, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            self.api.patch(LEASE_PATH, {"spec": spec}, MERGE_PATCH)
        except ApiError as e:
            if e.status != 404:
                raise
            node = self.api.get(f"/api/v1/nodes/{NODE}")
            self.api.post(LEASE_PATH.rsplit("/", 1)[0], {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NODE, "namespace": "kube-node-lease", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"]}]},
                "spec": spec,
            })

    def heartbeat(self) -> None:
        """Keep the lease and the node's Ready condition fresh, so the node lifecycle controller leaves it alone."""
        beats = 0
        while not self.stop.wait(HEARTBEAT):
            beats += 1
            try:
                self.renew_lease()
                if beats % STATUS_EVERY == 0:
                    self.post_node_status()
            except ApiError as e:
                log.warning("heartbeat: %s", e)
                if e.status == 404:  # someone deleted the node: register again
                    self._try(self.register_node)
            except Exception as e:  # noqa: BLE001 - the API server may be restarting
                log.warning("heartbeat: %s: %s", type(e).__name__, e)

    @staticmethod
    def _try(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.warning("%s: %s", getattr(fn, "__name__", fn), e)

    # --- pods -----------------------------------------------------------------------------

    def on_pod_sync(self, pods: list[Obj]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            for uid, worker in list(self.workers.items()):
                if uid not in seen:
                    worker.notify_gone()
            self.finished &= seen
            self.deleted &= seen
        for pod in pods:
            self.on_pod("ADDED", pod)

    def on_pod(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        with self.lock:
            if kind == "DELETED":
                worker = self.workers.get(uid)
                if worker:
                    worker.notify_gone()
                self.finished.discard(uid)
                self.deleted.discard(uid)
                return
            node = spec.get("nodeName")
            if not node:
                self._maybe_bind(pod)
                return
            if node != NODE:
                return
            worker = self.workers.get(uid)
            if worker:
                worker.notify(pod)
                return
            if self.stopping:
                return
            status = pod.get("status") or {}
            if uid in self.finished or status.get("phase") in TERMINAL:
                if meta.get("deletionTimestamp") and uid not in self.deleted:
                    delete_pod(self, pod)
                return
            if status.get("startTime"):
                # Started by an earlier runner (this one has no worker for it): its processes are gone.
                self.finished.add(uid)
                mark_orphan(self, pod)
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()

    def forget(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
            self.finished.add(worker.uid)

    def _maybe_bind(self, pod: Obj) -> None:
        """The scheduler's part: bind a pending pod to the sandbox node."""
        meta, spec = pod["metadata"], pod["spec"]
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in TERMINAL:
            return
        if (spec.get("schedulerName") or DEFAULT_SCHEDULER) != DEFAULT_SCHEDULER or spec.get("schedulingGates"):
            return
        mismatch = {k: v for k, v in (spec.get("nodeSelector") or {}).items() if self.node_labels.get(k) != v}
        if mismatch:
            labels = ", ".join(f"{k}={v}" for k, v in self.node_labels.items())
            self._unschedulable(pod, "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector "
                                f"({NODE} has only the labels {labels}).")
            return
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
        try:
            self.api.post(pod_path(meta["namespace"], meta["name"], "binding"), binding)
            log.info("pod %s/%s: bound to %s", meta["namespace"], meta["name"], NODE)
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("pod %s/%s: binding failed: %s", meta["namespace"], meta["name"], e)

    def _unschedulable(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        conditions = (pod.get("status") or {}).get("conditions") or []
        current: Obj = next((c for c in conditions if c["type"] == "PodScheduled"), {})
        if current.get("reason") == "Unschedulable" and current.get("message") == message:
            return
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastProbeTime": None, "lastTransitionTime": now()}
        try:
            self.api.patch(pod_path(meta["namespace"], meta["name"], "status"),
                           {"metadata": {"uid": meta["uid"]}, "status": {"conditions": [cond]}}, STRATEGIC_PATCH)
        except ApiError as e:
            log.warning("pod %s/%s: %s", meta["namespace"], meta["name"], e)

    # --- PVCs: wake pods waiting for a claim to bind --------------------------------------------

    def on_pvc_sync(self, _pvcs: list[Obj]) -> None:
        self.on_pvc("SYNC", {})

    def on_pvc(self, _kind: str, _pvc: Obj) -> None:
        with self.lock:
            waiting = [w for w in self.workers.values() if w.waiting_for_volumes]
        for worker in waiting:
            worker.notify_volumes()

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        # Processes a previous runner left behind can't be adopted: stop them.
        killed = podrunner.kill_recorded(self.cfg)
        if killed:
            log.info("killed %d container(s) left by a previous pod runner", killed)
        shutil.rmtree(podrunner.pods_dir(self.cfg), ignore_errors=True)
        podrunner.pods_dir(self.cfg).mkdir(parents=True, exist_ok=True)
        self.register_node()
        self.renew_lease()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        Informer(self.api, "/api/v1/pods", self.on_pod_sync, self.on_pod, self.stop).start()
        Informer(self.api, "/api/v1/persistentvolumeclaims", self.on_pvc_sync, self.on_pvc, self.stop).start()
        podrunner.ready_file(self.cfg).write_text(f"{os.getpid()}\n")
        log.info("node %s Ready; pods' logs under %s", NODE, podrunner.logs_dir(self.cfg))

    def shutdown(self) -> None:
        """Stop every pod's processes (SIGTERM, a short grace, SIGKILL) and report them Failed."""
        with self.lock:
            self.stopping = True
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=20)
        self.stop.set()
        podrunner.ready_file(self.cfg).unlink(missing_ok=True)
        log.info("stopped (%d pod(s) were running)", len(workers))


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s")
    cfg = config.load()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = Runner(cfg, Api(str(cfg.kubeconfig)))
    try:
        runner.start()
    except Exception as e:  # noqa: BLE001 - one line the CLI can show
        log.error("could not start: %s: %s", type(e).__name__, e)
        return 1
    stop.wait()
    log.info("stopping")
    runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
