"""The Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager.

Built from the ``k8s.io/kubernetes`` Go module (``hack/kube/go.mod``) with this
machine's Go, cached under ``<cache>/kube-<version>-<gomod hash>/``; served on
127.0.0.1 with TLS from a CA generated per sandbox.  There is no kubelet and no
scheduler: the pod runner (``podrunner.py``) plays the node.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import ssl
import textwrap
import time
import urllib.request
from pathlib import Path

from sandboxlib import proc
from sandboxlib.config import Config
from sandboxlib.proc import SandboxError

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl", "etcd")
TOOL_BINARIES = ("helm", "kubeconform")
SERVICE_CIDR = "10.0.0.0/24"
SNAPSHOT_CRDS = (
    "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
    "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
    "snapshot.storage.k8s.io_volumesnapshots.yaml",
)


# --- building (cached) -----------------------------------------------------------------

def kubernetes_version(cfg: Config) -> str:
    gomod = (cfg.root / "hack" / "kube" / "go.mod").read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)", gomod, re.M)
    if not match:
        raise SandboxError("hack/kube/go.mod does not require k8s.io/kubernetes")
    return match.group(1)


def _build_key(module_dir: Path, ldflags: str) -> str:
    """Cache key: the module's go.mod/go.sum/sources and the link flags."""
    digest = hashlib.sha256(ldflags.encode())
    for name in ("go.mod", "go.sum"):
        digest.update((module_dir / name).read_bytes())
    for src in sorted(module_dir.rglob("*.go")):
        digest.update(src.read_bytes())
    return digest.hexdigest()[:12]


def _go_build(cfg: Config, module_dir: Path, out: Path, packages: list[str], what: str,
              version_vars: dict[str, str]) -> None:
    """Build ``packages`` into ``out`` once; a finished build is never repeated.

    Checkouts sharing the cache (worktrees, a fresh clone beside the main one)
    may start the same build at once: a lock file makes the later ones wait for
    the first and reuse its result instead of racing it in the same directory."""
    if (out / ".done").exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".done").exists():
            return
        _go_build_locked(cfg, module_dir, out, packages, what, version_vars)


def _go_build_locked(cfg: Config, module_dir: Path, out: Path, packages: list[str], what: str,
                     version_vars: dict[str, str]) -> None:
    if shutil.which("go") is None:
        raise SandboxError(f"building {what} needs Go on PATH (the polyglot machine has /usr/local/go/bin/go)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = cfg.cache / f"build-{out.name}.log"
    print(f"sandbox: building {what} (first time only, several minutes; log {log})", flush=True)
    t0 = time.monotonic()
    proc.run(
        ["go", "build", "-trimpath", "-ldflags=" + _ldflags(version_vars), "-o", f"{tmp}/", *packages],
        what=f"building {what}", log=log, cwd=module_dir, timeout=3600,
    )
    (tmp / ".done").write_text(f"built in {time.monotonic() - t0:.0f}s\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"sandbox: built {what} in {time.monotonic() - t0:.0f}s", flush=True)


def _ldflags(version_vars: dict[str, str]) -> str:
    # Builds from the module cache carry no git metadata: stamp the release
    # version in, as the upstream release builds do, so clients can parse it.
    return " ".join(["-s", "-w", *(f"-X {k}={v}" for k, v in version_vars.items())])


def _kube_version_vars(version: str) -> dict[str, str]:
    major, minor = version.lstrip("v").split(".")[:2]
    out = {}
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        out |= {f"{pkg}.gitVersion": version, f"{pkg}.gitMajor": major, f"{pkg}.gitMinor": minor,
                f"{pkg}.gitTreeState": "clean", f"{pkg}.buildDate": "1970-01-01T00:00:00Z"}
    return out


def _module_version(module_dir: Path, module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", (module_dir / "go.mod").read_text(), re.M)
    return match.group(1) if match else "v0.0.0"


def build(cfg: Config) -> None:
    """Build (or reuse) the control plane and tools, link them into ``cfg.bin``."""
    kube_dir = cfg.root / "hack" / "kube"
    tools_dir = cfg.root / "hack" / "tools"
    kube_vars = _kube_version_vars(kubernetes_version(cfg))
    tools_vars = {
        "helm.sh/helm/v4/internal/version.version": _module_version(tools_dir, "helm.sh/helm/v4"),
        "main.version": _module_version(tools_dir, "github.com/yannh/kubeconform"),
    }
    kube_out = cfg.cache / f"kube-{kubernetes_version(cfg)}-{_build_key(kube_dir, _ldflags(kube_vars))}"
    tools_out = cfg.cache / f"tools-{_build_key(tools_dir, _ldflags(tools_vars))}"
    _go_build(cfg, kube_dir, kube_out, [
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kubectl",
        "./etcd",
    ], f"Kubernetes {kubernetes_version(cfg)} and etcd", kube_vars)
    _go_build(cfg, tools_dir, tools_out, [
        "helm.sh/helm/v4/cmd/helm",
        "github.com/yannh/kubeconform/cmd/kubeconform",
    ], "helm and kubeconform", tools_vars)
    cfg.bin.mkdir(parents=True, exist_ok=True)
    for out, names in ((kube_out, KUBE_BINARIES), (tools_out, TOOL_BINARIES)):
        for name in names:
            link = cfg.bin / name
            if link.is_symlink() or link.exists():
                if os.path.realpath(link) == str((out / name).resolve()):
                    continue
                link.unlink()
            link.symlink_to(out / name)


def snapshot_crd_dir(cfg: Config) -> Path:
    """The VolumeSnapshot CRDs shipped in the external-snapshotter client module."""
    out = proc.run(
        ["go", "mod", "download", "-json", "github.com/kubernetes-csi/external-snapshotter/client/v8"],
        what="locating the external-snapshotter module", cwd=cfg.root / "hack" / "tools",
    )
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise SandboxError("go mod download did not report the external-snapshotter module's directory")
    return Path(match.group(1)) / "config" / "crd"


# --- certificates and kubeconfigs --------------------------------------------------------

def pki(cfg: Config) -> Path:
    return cfg.state / "kube" / "pki"


def ca_cert(cfg: Config) -> Path:
    return pki(cfg) / "ca.crt"


def server_url(cfg: Config) -> str:
    return f"https://{cfg.host}:{cfg.apiserver_port}"


def _openssl(cfg: Config, *args: str) -> None:
    proc.run(["openssl", *args], what="openssl " + args[0], log=cfg.log("pki"))


def _client_cert(cfg: Config, name: str, cn: str, org: str | None = None) -> None:
    d = pki(cfg)
    if (d / f"{name}.crt").exists():
        return
    subject = f"/CN={cn}" + (f"/O={org}" if org else "")
    _openssl(cfg, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
             "-out", str(d / f"{name}.csr"), "-subj", subject)
    ext = d / f"{name}.ext"
    ext.write_text("keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
    _openssl(cfg, "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
             str(d / "ca.key"), "-CAcreateserial", "-days", "3650", "-out", str(d / f"{name}.crt"),
             "-extfile", str(ext))


def ensure_pki(cfg: Config) -> None:
    d = pki(cfg)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.crt").exists():
        _openssl(cfg, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
                 "-out", str(d / "ca.crt"), "-days", "3650", "-subj", "/CN=savepoint-sandbox-ca")
    if not (d / "apiserver.crt").exists():
        ext = d / "apiserver.ext"
        ext.write_text(textwrap.dedent("""\
            keyUsage=critical,digitalSignature,keyEncipherment
            extendedKeyUsage=serverAuth
            subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
            """))
        _openssl(cfg, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "apiserver.key"),
                 "-out", str(d / "apiserver.csr"), "-subj", "/CN=kube-apiserver")
        _openssl(cfg, "x509", "-req", "-in", str(d / "apiserver.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-days", "3650", "-out", str(d / "apiserver.crt"),
                 "-extfile", str(ext))
    if not (d / "sa.key").exists():
        _openssl(cfg, "genrsa", "-out", str(d / "sa.key"), "2048")
        _openssl(cfg, "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
    _client_cert(cfg, "admin", "sandbox-admin", "system:masters")
    _client_cert(cfg, "controller-manager", "system:kube-controller-manager")
    _write_kubeconfig(cfg, cfg.kubeconfig, "admin")
    _write_kubeconfig(cfg, cfg.state / "kube" / "controller-manager.kubeconfig", "controller-manager")


def _write_kubeconfig(cfg: Config, path: Path, user: str) -> None:
    d = pki(cfg)
    path.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters:
        - name: sandbox
          cluster:
            server: {server_url(cfg)}
            certificate-authority: {d / 'ca.crt'}
        users:
        - name: {user}
          user:
            client-certificate: {d / f'{user}.crt'}
            client-key: {d / f'{user}.key'}
        contexts:
        - name: sandbox
          context: {{cluster: sandbox, user: {user}, namespace: default}}
        current-context: sandbox
        """))


# --- processes ---------------------------------------------------------------------------

def _ready(cfg: Config, url: str) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca_cert(cfg)))
    ctx.load_cert_chain(str(pki(cfg) / "admin.crt"), str(pki(cfg) / "admin.key"))
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return resp.status == 200


def _etcd_ready(cfg: Config) -> bool:
    with urllib.request.urlopen(f"http://{cfg.host}:{cfg.etcd_port}/health", timeout=2) as resp:
        return b'"health":"true"' in resp.read()


def apiserver_ready(cfg: Config) -> bool:
    try:
        return _ready(cfg, f"{server_url(cfg)}/readyz")
    except Exception:  # noqa: BLE001
        return False


def up(cfg: Config) -> None:
    if all(proc.running(cfg, n) for n in ("etcd", "kube-apiserver", "kube-controller-manager")) and apiserver_ready(cfg):
        return
    build(cfg)
    ensure_pki(cfg)
    d = pki(cfg)
    bins = cfg.bin
    if not proc.running(cfg, "etcd"):
        proc.require_free_port(cfg, "etcd", cfg.etcd_port)
        proc.require_free_port(cfg, "etcd", cfg.etcd_peer_port)
        proc.start(cfg, "etcd", [
            bins / "etcd", "--name=sandbox", f"--data-dir={cfg.state / 'etcd'}",
            f"--listen-client-urls=http://{cfg.host}:{cfg.etcd_port}",
            f"--advertise-client-urls=http://{cfg.host}:{cfg.etcd_port}",
            f"--listen-peer-urls=http://{cfg.host}:{cfg.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://{cfg.host}:{cfg.etcd_peer_port}",
            f"--initial-cluster=sandbox=http://{cfg.host}:{cfg.etcd_peer_port}",
            "--unsafe-no-fsync",  # a throwaway test cluster: fsync only slows it down
            "--quota-backend-bytes=2147483648",
        ])
    proc.wait_for(cfg, "etcd", lambda: _etcd_ready(cfg), what="etcd /health", timeout=30)
    if not proc.running(cfg, "kube-apiserver"):
        proc.require_free_port(cfg, "kube-apiserver", cfg.apiserver_port)
        proc.start(cfg, "kube-apiserver", [
            bins / "kube-apiserver",
            f"--etcd-servers=http://{cfg.host}:{cfg.etcd_port}",
            f"--bind-address={cfg.host}", f"--advertise-address={cfg.host}",
            f"--secure-port={cfg.apiserver_port}",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # The loopback address may not be published as an Endpoint of the
            # `kubernetes` Service; clients here reach 127.0.0.1 directly.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--event-ttl=2h",
        ])
    proc.wait_for(cfg, "kube-apiserver", lambda: apiserver_ready(cfg), what="/readyz", timeout=90)
    if not proc.running(cfg, "kube-controller-manager"):
        proc.require_free_port(cfg, "kube-controller-manager", cfg.kcm_port)
        kcm_kubeconfig = cfg.state / "kube" / "controller-manager.kubeconfig"
        proc.start(cfg, "kube-controller-manager", [
            bins / "kube-controller-manager",
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            f"--bind-address={cfg.host}", f"--secure-port={cfg.kcm_port}",
            f"--service-account-private-key-file={d / 'sa.key'}",
            f"--root-ca-file={d / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            # Every default controller: job, garbage collector, namespace,
            # service-account token, resource quota, PV binder, ...
            "--controllers=*",
            "--leader-elect=false",
            # One node, no cloud: don't wait 5 minutes to evict, and let the
            # PV binder and GC act promptly for fast tests.
            "--node-monitor-grace-period=40s",
            "--pvclaimbinder-sync-period=2s",
            "--concurrent-gc-syncs=5",
        ])
    proc.wait_for(cfg, "kube-controller-manager", lambda: _kcm_ready(cfg), what="/healthz", timeout=60)
    _install_snapshot_crds(cfg)


def _kcm_ready(cfg: Config) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # its serving cert is self-signed on start
    with urllib.request.urlopen(f"https://{cfg.host}:{cfg.kcm_port}/healthz", context=ctx, timeout=2) as resp:
        return resp.status == 200


def kubectl(cfg: Config, *args: str, input: str | None = None) -> str:
    return proc.run([cfg.bin / "kubectl", f"--kubeconfig={cfg.kubeconfig}", *args],
                    what=f"kubectl {' '.join(args[:2])}", log=cfg.log("kubectl"), input=input)


def _install_snapshot_crds(cfg: Config) -> None:
    crd_dir = snapshot_crd_dir(cfg)
    files = [a for name in SNAPSHOT_CRDS for a in ("-f", str(crd_dir / name))]
    kubectl(cfg, "apply", "--server-side", "--force-conflicts", *files)
    kubectl(cfg, "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{name.split('_', 1)[1].removesuffix('.yaml')}.{name.split('_', 1)[0]}" for name in SNAPSHOT_CRDS])


def down(cfg: Config) -> None:
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        proc.stop(cfg, name)


def status(cfg: Config) -> list[str]:
    lines = []
    for name, where in (("etcd", f"http://{cfg.host}:{cfg.etcd_port}"),
                        ("kube-apiserver", server_url(cfg)),
                        ("kube-controller-manager", f"https://{cfg.host}:{cfg.kcm_port}")):
        pid = proc.read_pid(cfg, name)
        state = f"running pid {pid}" if pid else "stopped"
        lines.append(f"{name:24s} {state:18s} {where}  log {cfg.log(name)}")
    if proc.running(cfg, "kube-apiserver"):
        lines.append(f"{'kubeconfig':24s} {cfg.kubeconfig}")
    return lines
