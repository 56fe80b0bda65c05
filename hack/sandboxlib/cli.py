"""hack/sandbox up|down|status|env|export: the sandbox's command line."""

from __future__ import annotations

import fcntl
import importlib
import shlex
import sys
import time
from types import ModuleType

from sandboxlib import config
from sandboxlib.proc import SandboxError

# Start order; ``down`` goes in reverse.  Each module has up/down/status.
COMPONENTS = ("ceph", "nfs", "kube", "publish", "podrunner")

USAGE = """usage: hack/sandbox COMMAND
  up [COMPONENT...]   start everything (or only the named components), idempotent
  down                stop every process the sandbox started and remove its state
  status              what runs where
  env                 export lines for eval: KUBECONFIG, CEPH_CONF, CEPH_KEYRING, PATH
  export NAME         create an NFS export, print server=, port=, path=, dir=
components: """ + ", ".join(COMPONENTS)

def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"sandboxlib.{name}")
    except ImportError as exc:
        raise SandboxError(f"sandbox component {name} cannot be loaded: {exc}") from exc

def cmd_up(cfg: config.Config, names: list[str]) -> None:
    wanted = names or list(COMPONENTS)
    unknown = set(wanted) - set(COMPONENTS)
    if unknown:
        raise SandboxError(f"unknown component(s) {', '.join(sorted(unknown))}; known: {', '.join(COMPONENTS)}")
    # "publish" and "podrunner" need the cluster (and publish needs Ceph).
    if "publish" in wanted or "podrunner" in wanted:
        wanted = list(dict.fromkeys(["kube", *wanted]))
    if "publish" in wanted:
        wanted = list(dict.fromkeys(["ceph", *wanted]))
    start = time.monotonic()
    for name in COMPONENTS:
        if name in wanted:
            t0 = time.monotonic()
            _module(name).up(cfg)
            print(f"sandbox: {name} ready ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
    print(f"sandbox: up in {time.monotonic() - start:.1f}s", file=sys.stderr)
    if not names:
        cmd_status(cfg)

def cmd_down(cfg: config.Config) -> None:
    errors = []
    for name in reversed(COMPONENTS):
        try:
            _module(name).down(cfg)
        except SandboxError as e:  # keep stopping the rest
            errors.append(str(e))
    import shutil

    shutil.rmtree(cfg.state, ignore_errors=True)
    if errors:
        raise SandboxError("; ".join(errors))
    print("sandbox: down", file=sys.stderr)

def cmd_status(cfg: config.Config) -> None:
    for name in COMPONENTS:
        for line in _module(name).status(cfg):
            print(f"{name:10s} {line}")

def cmd_env(cfg: config.Config) -> None:
    path = f"{cfg.bin}:{cfg.venv / 'bin'}:$PATH"
    print(f"export KUBECONFIG={shlex.quote(str(cfg.kubeconfig))}")
    # CEPH_CONF, CEPH_KEYRING, CEPH_ARGS: ceph.admin_env knows which args keep
    # `ceph daemon ...` and `--id savepoint` working.
    for key, value in _module("ceph").admin_env(cfg).items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"export SAVEPOINT_SANDBOX_DIR={shlex.quote(str(cfg.state))}")
    print(f'export PATH="{path}"')

def cmd_export(cfg: config.Config, name: str) -> None:
    nfs = _module("nfs")
    export = nfs.add_export(cfg, name)
    print(f"server={export.server} port={export.port} path={export.path} dir={export.dir}")

def main(argv: list[str]) -> int:
    cfg = config.load()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd in ("up", "down"):
            # Two `up`s at once (make demo beside make test) would both start etcd and kube-apiserver on the
            # same ports and kill each other's: the later one waits, then finds everything running.
            cfg.state.mkdir(parents=True, exist_ok=True)
            with open(cfg.state / ".up.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                cmd_up(cfg, args) if cmd == "up" else cmd_down(cfg)
        elif cmd == "status":
            cmd_status(cfg)
        elif cmd == "env":
            cmd_env(cfg)
        elif cmd == "export" and len(args) == 1:
            cmd_export(cfg, args[0])
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except SandboxError as e:
        print(f"sandbox: error: {e}", file=sys.stderr)
        return 1
    return 0
