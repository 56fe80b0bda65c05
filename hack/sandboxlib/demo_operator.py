"""The main job of ``make demo``: Savepoint reconciling the example CRs.

Sets up what the examples refer to (an RBD-backed PVC with data, its RBD
snapshot and CSI VolumeSnapshot, an NFS share, a backup repository), installs
the chart, runs the operator from this checkout with the chart's
ServiceAccount, applies ``examples/``, follows every CR to its end and shows
the result -- including reading the reverted data back from Ceph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandboxlib import config, nfs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

NAMESPACE = "savepoint-demo"
MiB = 1 << 20
FINAL = ("Succeeded", "Failed", "Available")
# Examples whose prerequisites come from another example run after it.
ORDER = ["volumerevert.yaml", "volumerevert-volumesnapshot.yaml", "imagesnapshot.yaml", "imagesnapshot-copy.yaml",
         "sharebackup.yaml", "sharebackup-block.yaml", "sharerestore.yaml", "sharerestore-newclaim.yaml"]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def kubectl(cfg: config.Config, *args: str, input: str | None = None, check: bool = True) -> str:
    out = subprocess.run([str(cfg.bin / "kubectl"), f"--kubeconfig={cfg.kubeconfig}", *args],
                         capture_output=True, text=True, input=input)
    if check and out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout


def fresh_namespace(cfg: config.Config) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    try:
        core.read_namespace(NAMESPACE)
    except client.ApiException:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        return
    # A previous demo: let an operator finish its finalizers, then start over.
    kubectl(cfg, "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s", check=False)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    del api


def prerequisites(cfg: config.Config) -> dict[str, Any]:
    from kubernetes import client

    from helpers import volumes
    from savepoint.storage import rbd

    say("setting up what the examples refer to")
    app = volumes.rbd_pvc(cfg, NAMESPACE, "app-data", size=64 * MiB, data={0: b"version 1: good data\n"})
    print(f"PVC app-data -> ceph-csi PV -> RBD image {app.ref.pool}/{app.ref.image}: 'version 1: good data'")
    snap = volumes.csi_snapshot(cfg, app, "app-data-nightly")
    print(f"VolumeSnapshot app-data-nightly -> ceph-csi image {snap.image.image} (as ceph-csi keeps snapshots)")
    with volumes.cluster(cfg) as c:
        with rbd.open_ref(c, app.ref) as image:
            rbd.create_snapshot(image, "before-upgrade")
        volumes.write(c, app.ref, {0: b"version 2: BROKEN upgrade\n"})
    print("RBD snapshot before-upgrade taken, then the upgrade wrote 'version 2: BROKEN upgrade'")

    core = client.CoreV1Api()
    share = nfs.add_export(cfg, "demo-shared-files")
    repo = nfs.add_export(cfg, "demo-backup-repo")
    restored = nfs.add_export(cfg, "demo-restored")
    (Path(share.dir) / "docs").mkdir(exist_ok=True)
    (Path(share.dir) / "docs" / "report.txt").write_text("quarterly report, final version\n")
    (Path(share.dir) / "notes.md").write_text("# notes\n")
    for name, export, size, claim in (("shared-files", share, "20Gi", "shared-files"),
                                      ("backup-repo", repo, "50Gi", "backup-repo"),
                                      ("restored", restored, "20Gi", None)):
        pv = f"{NAMESPACE}-{name}"
        kubectl(cfg, "delete", "pv", pv, "--ignore-not-found", "--wait=false")
        spec: dict[str, Any] = {"capacity": {"storage": size}, "accessModes": ["ReadWriteMany"],
                                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                                "nfs": {"server": export.server, "path": export.path}}
        if claim:
            spec["claimRef"] = {"namespace": NAMESPACE, "name": claim}
        core.create_persistent_volume({"metadata": {"name": pv}, "spec": spec})
        if claim:
            core.create_namespaced_persistent_volume_claim(NAMESPACE, {
                "metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                                                      "volumeName": pv, "resources": {"requests": {"storage": size}}}})
    print(f"PVC shared-files -> NFS export {share.path} (2 files); PVC backup-repo -> NFS export {repo.path}; "
          f"an unclaimed NFS PV for the restore into a new claim")
    return {"app": app, "snap": snap, "repo": repo}


def start_operator(cfg: config.Config, repo: Any) -> Any:
    from helpers import chart
    from helpers.operator_proc import OperatorProcess, free_port
    from helpers.operator_sa import operator_kubeconfig

    say("installing the Helm chart (CRDs, RBAC, settings) and starting the operator with its ServiceAccount")
    chart.apply_crds(cfg)
    env = chart.install(cfg)
    env.update(SAVEPOINT_WATCH_NAMESPACES=NAMESPACE, SAVEPOINT_METRICS_PORT=str(free_port()),
               SAVEPOINT_DEFAULT_REPOSITORY=json.dumps({"nfs": {"server": repo.server, "path": repo.path}}))
    proc = OperatorProcess(cfg.venv, operator_kubeconfig(cfg), cfg.logs / "operator-demo.log", env, free_port())
    proc.start()
    print(f"operator running (log {proc.log})")
    return proc


def follow(cfg: config.Config, timeout: float = 300) -> list[dict[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi()
    plurals = ("volumereverts", "imagesnapshots", "sharebackups", "sharerestores")
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        objs = [o for p in plurals for o in api.list_namespaced_custom_object("savepoint.dev", "v1alpha1",
                                                                                NAMESPACE, p)["items"]]
        for o in objs:
            st = o.get("status") or {}
            key = f"{o['kind']}/{o['metadata']['name']}"
            line = f"{st.get('phase', '-')}: {st.get('message', '')}"
            if seen.get(key) != line:
                seen[key] = line
                print(f"  {key:45s} {line}", flush=True)
        if objs and all((o.get("status") or {}).get("phase") in FINAL for o in objs):
            return objs
        if time.monotonic() > deadline:
            print(f"  (stopped following after {timeout:.0f}s)")
            return objs
        time.sleep(1)


def main() -> int:
    cfg = config.load()
    os.environ["KUBECONFIG"] = str(cfg.kubeconfig)
    from kubernetes import config as kconfig

    kconfig.load_kube_config(str(cfg.kubeconfig))
    fresh_namespace(cfg)
    made = prerequisites(cfg)
    proc = start_operator(cfg, made["repo"])
    try:
        say("applying examples/ (kubectl apply -n savepoint-demo -f examples/)")
        for name in ORDER:
            path = ROOT / "examples" / name
            if path.exists():
                print(kubectl(cfg, "apply", "-n", NAMESPACE, "-f", str(path)).strip())
        say("following every CR to its end")
        objs = follow(cfg)
        say("kubectl get savepoint -n savepoint-demo -o wide")
        print(kubectl(cfg, "get", "savepoint", "-n", NAMESPACE, "-o", "wide"))
        from helpers import volumes

        with volumes.cluster(cfg) as c:
            content = volumes.read(c, made["app"].ref, 0, 32).rstrip(b"\0").decode(errors="replace")
        say(f"app-data now reads: {content.strip()!r}")
        failed = [o for o in objs if (o.get("status") or {}).get("phase") == "Failed"]
        stuck = [o for o in objs if (o.get("status") or {}).get("phase") not in FINAL]
        print(f"\ndemo: {len(objs) - len(failed) - len(stuck)} of {len(objs)} actions finished successfully"
              + (f", {len(failed)} failed" if failed else "") + (f", {len(stuck)} still running" if stuck else ""))
        return 1 if failed or stuck else 0
    finally:
        proc.stop()


if __name__ == "__main__":
    sys.exit(main())
