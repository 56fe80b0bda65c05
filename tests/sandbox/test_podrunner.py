"""The pod runner is a working node: real API server and controller manager, real processes, no mocks.

Each test creates objects in a fresh namespace and waits on watches (not
sleeps) for the runner's status updates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from kubernetes import client, config, watch

from sandboxlib import nfs as sandbox_nfs  # conftest puts hack/ on the path
from sandboxlib import podrunner, proc
from sandboxlib.config import Config

ROOT = Path(__file__).resolve().parents[2]
NODE = podrunner.NODE_NAME


# --- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(kube: Config) -> client.ApiClient:
    return config.new_client_from_config(str(kube.kubeconfig))


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def ns(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it)."""
    name = f"podrunner-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    _wait(core.list_namespaced_service_account, lambda sa: sa.metadata.name == "default", namespace=name)
    yield name
    core.delete_namespace(name)


def _wait(list_fn: Callable[..., Any], done: Callable[[Any], bool], timeout: float = 30, deleted: bool = False,
          **kwargs: Any) -> Any:
    """Watch ``list_fn`` until an object satisfies ``done`` (or, with ``deleted``, is deleted)."""
    listing = list_fn(**kwargs)
    matches = [item for item in listing.items if done(item)]
    if matches and not deleted:
        return matches[0]
    if deleted and not matches:
        return None  # already gone
    deadline = time.monotonic() + timeout
    w = watch.Watch()
    rv = listing.metadata.resource_version
    while (remaining := deadline - time.monotonic()) > 0:
        for event in w.stream(list_fn, resource_version=rv, timeout_seconds=max(1, int(remaining)), **kwargs):
            obj = event["object"]
            rv = obj.metadata.resource_version
            if (event["type"] == "DELETED") == deleted and done(obj):
                w.stop()
                return obj
    raise AssertionError(f"timed out after {timeout}s waiting on {list_fn.__name__} {kwargs}")


def _wait_pod(core: client.CoreV1Api, ns: str, name: str, done: Callable[[client.V1Pod], bool],
              timeout: float = 30) -> client.V1Pod:
    return _wait(core.list_namespaced_pod, done, timeout, namespace=ns, field_selector=f"metadata.name={name}")


def _finished(pod: client.V1Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod running a Python script from the project's virtualenv (the image is not used)."""
    container = {"name": "main", "image": "savepoint:dev", "command": ["python", "-c", textwrap.dedent(script)]}
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


def _read_when_written(path: Path, timeout: float = 30) -> str:
    """Wait for a file a pod writes through a hostPath volume."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} was not written within {timeout}s")


# --- the node --------------------------------------------------------------------------------

def test_node_is_registered_ready_and_leased(api: client.ApiClient, core: client.CoreV1Api) -> None:
    node = core.read_node(NODE)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert node.metadata.labels["kubernetes.io/hostname"] == NODE
    assert {a.address for a in node.status.addresses} >= {"127.0.0.1"}
    assert int(node.status.capacity["pods"]) > 0
    assert not [t for t in node.spec.taints or [] if t.effect == "NoExecute"]
    lease = client.CoordinationV1Api(api).read_namespaced_lease(NODE, "kube-node-lease")
    assert lease.spec.holder_identity == NODE
    age = time.time() - lease.spec.renew_time.timestamp()
    assert age < 30, f"lease last renewed {age:.0f}s ago"


# --- Jobs, status, logs ------------------------------------------------------------------------

def test_job_runs_and_its_termination_message_comes_back(kube: Config, api: client.ApiClient,
                                                         core: client.CoreV1Api, ns: str) -> None:
    job = {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": _pod("unused", """
            import socket
            print("hello from", socket.gethostname())
            with open("/dev/termination-log", "w") as f:
                f.write("result: 42")
        """)},
    }
    del job["spec"]["template"]["metadata"]
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(ns, job)
    _wait(batch.list_namespaced_job,
          lambda j: any(c.type == "Complete" and c.status == "True" for c in j.status.conditions or []),
          namespace=ns, field_selector="metadata.name=hello")

    pod = core.list_namespaced_pod(ns, label_selector="job-name=hello").items[0]
    assert pod.spec.node_name == NODE
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip == pod.status.host_ip == "127.0.0.1"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason, terminated.message) == (0, "Completed", "result: 42")
    log = podrunner.container_log(kube, ns, pod.metadata.name, pod.metadata.uid, "main")
    assert f"hello from {pod.metadata.name}" in log.read_text()


def test_failed_container_with_init_restarts_on_failure(core: client.CoreV1Api, ns: str) -> None:
    """Init containers run first; OnFailure restarts with back-off; emptyDir survives restarts."""
    pod = _pod("retry", """
        import os, sys
        if not os.path.exists("/scratch/attempted"):
            open("/scratch/attempted", "w").close()
            sys.exit(3)
        open("/dev/termination-log", "w").write(open("/scratch/init").read() + " then retried")
    """, restartPolicy="OnFailure", volumes=[{"name": "scratch", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]})
    pod["spec"]["initContainers"] = [{
        "name": "init", "image": "savepoint:dev", "command": ["sh", "-c", "printf init-ran > /scratch/init"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]
    core.create_namespaced_pod(ns, pod)
    done = _wait_pod(core, ns, "retry", _finished)
    assert done.status.phase == "Succeeded"
    assert done.status.init_container_statuses[0].state.terminated.reason == "Completed"
    main = done.status.container_statuses[0]
    assert main.restart_count == 1
    assert main.last_state.terminated.exit_code == 3
    assert main.state.terminated.message == "init-ran then retried"


# --- volumes and in-cluster access ---------------------------------------------------------------

IN_CLUSTER = """
    import json, os
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    config.load_incluster_config()  # the mounted SA token + ca.crt, KUBERNETES_SERVICE_HOST/PORT
    v1 = client.CoreV1Api()
    ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    me = v1.read_namespaced_pod(os.environ["POD_NAME"], ns)
    try:
        v1.list_namespaced_secret(ns)
        secrets = "allowed"
    except ApiException as e:
        secrets = e.status
    try:
        open("/etc/creds/new", "w")
        writable = True
    except OSError:
        writable = False
    out = {
        "password": open("/etc/creds/pw").read(),
        "mode": oct(os.stat("/etc/creds/pw").st_mode & 0o777),
        "greeting": open("/etc/settings/greeting").read(),
        "env": [os.environ["GREETING"], os.environ["PASSWORD"], os.environ["POD_UID"]],
        "uid": me.metadata.uid,
        "sa": me.spec.service_account_name,
        "secrets": secrets,
        "writable": writable,
        "cwd": os.getcwd(),
    }
    open("/dev/termination-log", "w").write(json.dumps(out))
"""


def test_pod_reads_secret_configmap_and_itself_with_its_service_account(api: client.ApiClient,
                                                                        core: client.CoreV1Api, ns: str) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})
    core.create_namespaced_secret(ns, {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}})
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
    ]
    pod = _pod("reader", IN_CLUSTER, serviceAccountName="reader", volumes=[
        {"name": "creds", "secret": {"secretName": "creds",
                                     "items": [{"key": "password", "path": "pw", "mode": 0o400}]}},
        {"name": "settings", "configMap": {"name": "settings"}},
    ], container={"env": env, "workingDir": "/srv/work", "volumeMounts": [
        {"name": "creds", "mountPath": "/etc/creds"},
        {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
    ]})
    core.create_namespaced_pod(ns, pod)
    done = _wait_pod(core, ns, "reader", _finished, timeout=60)
    status = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", status.message
    out = json.loads(status.message)
    assert out == {
        "password": "s3cret", "mode": "0o400", "greeting": "hello",
        "env": ["hello", "s3cret", done.metadata.uid], "uid": done.metadata.uid, "sa": "reader",
        "secrets": 403,  # RBAC applies: the pod acts as its ServiceAccount, not as admin
        "writable": False,  # secret volumes are read-only
        "cwd": "/srv/work",
    }
    assert not Path("/srv/work").exists(), "the working directory must not be created on the host"


def test_nfs_pvc_is_the_exports_directory(kube: Config, core: client.CoreV1Api, ns: str) -> None:
    export = sandbox_nfs.add_export(kube, "test-podrunner")  # idempotent: one export, emptied per run
    for child in export.dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    pv_name = f"{ns}-nfs"
    core.create_persistent_volume({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain",
                 "nfs": {"server": export.server, "path": export.path}},
    })
    try:
        core.create_namespaced_persistent_volume_claim(ns, {
            "metadata": {"name": "share"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        _wait(core.list_namespaced_persistent_volume_claim, lambda c: c.status.phase == "Bound", namespace=ns)
        pod = _pod("writer", """
            open("/data/hello.txt", "w").write("written by a pod\\n")
            open("/sub/inner.txt", "w").write("through a subPath\\n")
        """, volumes=[{"name": "share", "persistentVolumeClaim": {"claimName": "share"}}],
            container={"volumeMounts": [{"name": "share", "mountPath": "/data"},
                                        {"name": "share", "mountPath": "/sub", "subPath": "deep/dir"}]})
        core.create_namespaced_pod(ns, pod)
        done = _wait_pod(core, ns, "writer", _finished)
        assert done.status.phase == "Succeeded", done.status.container_statuses[0].state
        assert (export.dir / "hello.txt").read_text() == "written by a pod\n"
        assert (export.dir / "deep" / "dir" / "inner.txt").read_text() == "through a subPath\n"
    finally:
        core.delete_persistent_volume(pv_name)


def test_rbd_volumes_fail_the_pod_with_a_clear_reason(core: client.CoreV1Api, ns: str) -> None:
    core.create_persistent_volume({
        "metadata": {"name": f"{ns}-rbd"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": f"{ns}-handle",
                         "volumeAttributes": {"pool": "rbd", "imageName": "disk-1", "clusterID": "sandbox"}}},
    })
    try:
        core.create_namespaced_persistent_volume_claim(ns, {
            "metadata": {"name": "disk"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"{ns}-rbd",
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        mount = {"volumeMounts": [{"name": "disk", "mountPath": "/data"}]}
        core.create_namespaced_pod(ns, _pod("via-pvc", "print('must not run')", container=mount,
                                            volumes=[{"name": "disk", "persistentVolumeClaim": {"claimName": "disk"}}]))
        core.create_namespaced_pod(ns, _pod("in-line", "print('must not run')", container=mount, volumes=[
            {"name": "disk", "csi": {"driver": "rbd.csi.ceph.com", "volumeAttributes": {"pool": "rbd"}}}]))
        for name in ("via-pvc", "in-line"):
            failed = _wait_pod(core, ns, name, _finished)
            assert failed.status.phase == "Failed"
            assert failed.status.reason == "UnsupportedVolume"
            assert 'volume "disk"' in failed.status.message and "RBD" in failed.status.message
            assert failed.status.container_statuses[0].state.terminated is None  # nothing ran
    finally:
        core.delete_persistent_volume(f"{ns}-rbd")


# --- stopping pods -------------------------------------------------------------------------------

KEEPS_RUNNING = """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL after the grace period stops it
    # A grandchild in its own session escapes the process group; the runner must still find it.
    child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
    open("/out/pids", "w").write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(600)
"""


def test_deleted_pod_is_killed_and_removed(core: client.CoreV1Api, ns: str, tmp_path: Path) -> None:
    core.create_namespaced_pod(ns, _pod("sleeper", KEEPS_RUNNING, volumes=[
        {"name": "out", "hostPath": {"path": str(tmp_path)}}],
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]}))
    pids = [int(p) for p in _read_when_written(tmp_path / "pids").split()]
    assert all(_alive(p) for p in pids)
    _wait_pod(core, ns, "sleeper", lambda p: p.status.phase == "Running")

    t0 = time.monotonic()
    core.delete_namespaced_pod("sleeper", ns, grace_period_seconds=1)
    _wait(core.list_namespaced_pod, lambda p: p.metadata.name == "sleeper", deleted=True, namespace=ns)
    assert time.monotonic() - t0 < 15
    assert not [p for p in pids if _alive(p)], "the pod's processes survived its deletion"


def test_active_deadline_is_enforced(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_pod(ns, _pod("slow", "import time; time.sleep(600)", activeDeadlineSeconds=2,
                                        terminationGracePeriodSeconds=1))
    t0 = time.monotonic()
    failed = _wait_pod(core, ns, "slow", _finished)
    assert failed.status.phase == "Failed"
    assert failed.status.reason == "DeadlineExceeded"
    assert time.monotonic() - t0 < 10
    assert failed.status.container_statuses[0].state.terminated.exit_code in (137, 143)


def test_pods_of_a_crashed_runner_are_failed_on_restart(kube: Config, core: client.CoreV1Api, ns: str,
                                                       tmp_path: Path) -> None:
    core.create_namespaced_pod(ns, _pod("orphan", KEEPS_RUNNING, volumes=[
        {"name": "out", "hostPath": {"path": str(tmp_path)}}],
        container={"volumeMounts": [{"name": "out", "mountPath": "/out"}]}))
    pids = [int(p) for p in _read_when_written(tmp_path / "pids").split()]
    _wait_pod(core, ns, "orphan", lambda p: p.status.phase == "Running")

    daemon = proc.read_pid(kube, "podrunner")
    assert daemon is not None
    os.kill(daemon, signal.SIGKILL)  # a crash: no chance to stop its pods
    assert all(_alive(p) for p in pids)
    subprocess.run([str(ROOT / "hack" / "sandbox"), "up", "podrunner"], check=True)

    failed = _wait_pod(core, ns, "orphan", _finished)
    assert failed.status.phase == "Failed"
    assert failed.status.reason == "PodRunnerRestarted"
    assert failed.status.container_statuses[0].state.terminated.reason == "ContainerStatusUnknown"
    assert not [p for p in pids if _alive(p)], "the crashed runner's processes were not stopped"
