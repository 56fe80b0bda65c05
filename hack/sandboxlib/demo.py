"""``make demo``: show every real part of the sandbox working, then (once the
operator's features exist) Savepoint reconciling the example CRs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from sandboxlib import config, nfs
from sandboxlib.proc import SandboxError


def sh(title: str, *argv: str, input: str | None = None) -> str:
    print(f"\n$ {title or ' '.join(argv)}", flush=True)
    out = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    text = (out.stdout + out.stderr).rstrip()
    print(text, flush=True)
    if out.returncode != 0:
        raise SandboxError(f"demo step failed: {' '.join(argv)}")
    return out.stdout


def job_through_pod_runner(cfg: config.Config) -> None:
    kubectl = str(cfg.bin / "kubectl")
    name = f"demo-hello-{uuid.uuid4().hex[:5]}"
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 300, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "hello", "image": "savepoint:dev", "command": ["python", "-c",
                "import platform, pathlib; msg = f'hello from a pod run by the sandbox pod runner on {platform.node()}'; "
                "print(msg); pathlib.Path('/dev/termination-log').write_text(msg)"]}]}}},
    }
    sh("kubectl create -f job.yaml", kubectl, "create", "-f", "-", input=json.dumps(job))
    sh("", kubectl, "wait", "--for=condition=Complete", "--timeout=60s", f"job/{name}")
    sh("", kubectl, "get", "pods", "-l", f"job-name={name}", "-o",
       "custom-columns=POD:.metadata.name,PHASE:.status.phase,EXIT:.status.containerStatuses[0].state.terminated.exitCode,"
       "MESSAGE:.status.containerStatuses[0].state.terminated.message")


def main() -> int:
    cfg = config.load()
    try:
        sh("", str(cfg.bin / "kubectl"), "get", "nodes", "-o", "wide")
        job_through_pod_runner(cfg)
        sh("ceph -s", "ceph", "-s")
        export = nfs.add_export(cfg, "demo")
        (export.dir / "hello.txt").write_text(f"written at {time.ctime()}\n")
        url = nfs.client_url(export)
        sh(f"nfs-ls {url}", "nfs-ls", url)
    except SandboxError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print("\ndemo: the sandbox works (Kubernetes control plane, pod runner, Ceph, NFS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
