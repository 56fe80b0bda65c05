"""File-share backup benchmark (issue 6): the mover against bare rsync, in one run.

On a generated share of ``--files`` (default 100,000) small files (100 B to
4 KiB, in directories of 1,000) plus ``--large`` (3) files of ``--large-mib``
(64 MiB), on local disk:

- full backup: ``files-backup`` (no parent) vs ``rsync -a SRC/ DST/``;
- a no-change incremental: ``files-backup`` with the full one as parent vs
  ``rsync -a --link-dest=FULL SRC/ DST/``;
- restore: ``files-restore`` of the full backup into an empty directory vs
  ``rsync -a BACKUP/data/ DST/``.

The mover side runs exactly as in a Job, minus Kubernetes: ``python -m
savepoint.mover`` with the request in ``SAVEPOINT_MOVER_REQUEST`` and its
result in a termination-log file -- the same code path (rsync with
``-aHAXS --numeric-ids`` and the rest, progress and item parsing, backup.json
written last, the restore's checks). It keeps more than ``rsync -a`` does
(hard links, ACLs, xattrs, sparse files), which is the point of the ratio.

The share is read once before timing so every run finds it in the page cache;
each pair runs ``--rounds`` times alternately (bare first) and the fastest of
each side is compared. Goals: full and restore <= 1.1x bare rsync, no-change
incremental <= 1.2x.

With ``--restic PATH`` and/or ``--kopia PATH`` the same three steps also run with those backup engines
(restic 0.18.1 and kopia 0.21.1 build from the Go module proxy, see docs/performance.md) on local
repositories, in the same rounds.  Every step also prints what it wrote (``du`` of what it added:
repository or restored tree).

Run: ``.venv/bin/python bench/bench_files.py [--files 100000] [--rounds 3] [--dir /tmp] [--restic R] [--kopia K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NS, UID = "bench", "00000000-0000-4000-8000-00000000bench"[:36]


def generate(root: Path, files: int, large: int, large_mib: int) -> tuple[int, int]:
    rng = random.Random(6)
    total = 0
    per_dir = 1000
    for i in range(files):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        size = rng.randint(100, 4096)
        (d / f"f{i % per_dir:04d}.txt").write_bytes(os.urandom(size))
        total += size
    for i in range(large):
        with open(root / f"large-{i}.bin", "wb") as f:
            f.writelines(os.urandom(1 << 20) for _ in range(large_mib))
        total += large_mib << 20
    return files + large, total


def warm(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def mover(action: str, params: dict[str, Any], scratch: Path) -> dict[str, Any]:
    log = scratch / "termination-log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAVEPOINT_")}
    env.update(SAVEPOINT_MOVER_REQUEST=json.dumps({"action": action, "params": params}),
               SAVEPOINT_TERMINATION_LOG=str(log))
    out = subprocess.run([sys.executable, "-m", "savepoint.mover"], env=env, capture_output=True, text=True,
                         check=False)
    result = json.loads(log.read_text())
    if out.returncode != 0 or not result.get("ok"):
        raise RuntimeError(f"{action} failed: {result} {out.stderr[-2000:]}")
    return dict(result["data"])


def manifest(name: str) -> dict[str, Any]:
    return {"format": "files", "backup": {"name": name, "uid": f"uid-{name}", "namespace": NS},
            "source": {"namespace": NS, "uid": UID, "pvcName": "share", "description": "pvc/share",
                       "reference": {"persistentVolumeClaim": {"name": "share"}}, "sizeBytes": 1 << 40},
            "created": "2024-01-01T00:00:00+00:00", "labels": {}, "toolVersion": "bench"}


def timed(fn: Any) -> tuple[float, Any]:
    """Wall time of ``fn()``, starting with no dirty pages left from the step before (``sync``, not timed);
    the CPU time (user + system) of the processes it ran goes to ``last_cpu``."""
    global last_cpu
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, value


last_cpu = 0.0


def rmtree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=True)


def du(path: Path) -> int:
    """Bytes on disk below ``path`` (each hard-linked file once), like ``du -s --block-size=1``."""
    if not path.exists():
        return 0
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


class Peer:
    """restic or kopia on a local repository: ``full``, ``incremental`` (unchanged source), ``restore``."""

    def __init__(self, name: str, binary: str, work: Path) -> None:
        self.name, self.binary, self.work = name, binary, work / name
        self.repo, self.target = self.work / "repo", self.work / "restore"
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench", "KOPIA_PASSWORD": "bench",
                    "KOPIA_CHECK_FOR_UPDATES": "false"}

    def run(self, *args: str) -> str:
        return subprocess.run([self.binary, *args], env=self.env, check=True, capture_output=True,
                              text=True).stdout

    def version(self) -> str:
        return self.run("version" if self.name == "restic" else "--version").split("\n")[0].strip()

    def _kopia(self, *args: str) -> str:
        return self.run(*args, "--config-file", str(self.work / "kopia.config"))

    def init(self) -> None:
        rmtree(self.work)
        self.work.mkdir(parents=True)
        if self.name == "restic":
            self.run("-r", str(self.repo), "--cache-dir", str(self.work / "cache"), "init")
        else:
            self._kopia("repository", "create", "filesystem", "--path", str(self.repo),
                        "--cache-directory", str(self.work / "cache"))

    def backup(self, share: Path) -> None:
        if self.name == "restic":
            self.run("-r", str(self.repo), "--cache-dir", str(self.work / "cache"), "backup", "-q", str(share))
        else:
            self._kopia("snapshot", "create", str(share))

    def restore(self, share: Path) -> None:
        if self.name == "restic":
            self.run("-r", str(self.repo), "--cache-dir", str(self.work / "cache"), "restore", "latest",
                     "--target", str(self.target))
        else:
            latest = json.loads(self._kopia("snapshot", "list", "--json", str(share)))[-1]["id"]
            self._kopia("snapshot", "restore", latest, str(self.target))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--large", type=int, default=3)
    p.add_argument("--large-mib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to work (default: a temporary directory on local disk)")
    p.add_argument("--restic", default=None, help="a restic binary to compare with")
    p.add_argument("--kopia", default=None, help="a kopia binary to compare with")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="savepoint-bench-files-", dir=args.dir))
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        share, repo, bare, scratch = work / "share", work / "repo", work / "bare", work / "scratch"
        for d in (repo, bare, scratch):
            d.mkdir()
        print(f"generating {args.files} small + {args.large} x {args.large_mib} MiB files in {share} ...", flush=True)
        t, (count, size) = timed(lambda: generate(share, args.files, args.large, args.large_mib))
        print(f"  {count} files, {size / (1 << 20):.0f} MiB in {t:.1f} s; rsync {rsync_version()}", flush=True)
        warm(share)

        peers = [Peer(name, binary, work) for name, binary in (("restic", args.restic), ("kopia", args.kopia))
                 if binary]
        for peer in peers:
            print(f"  {peer.name}: {peer.version()}", flush=True)

        def record(label: str, seconds: float, wrote: int | None = None) -> None:
            results.setdefault(label, []).append(seconds)
            cpu.setdefault(label, []).append(last_cpu)
            extra = f" wrote {wrote / (1 << 20):8.1f} MiB" if wrote is not None else ""
            print(f"  {label:38s} {seconds:8.2f} s wall {last_cpu:8.2f} s cpu{extra}", flush=True)

        rel = {name: f"{NS}/{UID}/{name}" for name in ("full", "incr")}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for d in (repo / NS, bare / "full", bare / "incr", bare / "restore", scratch / "restore"):
                if d.exists():
                    rmtree(d)
            # full
            record("full: rsync -a", timed(lambda: subprocess.run(
                ["rsync", "-a", f"{share}/", f"{bare / 'full'}/"], check=True))[0])
            t, full = timed(lambda: mover("files-backup", {"source": str(share), "repository": str(repo),
                                                           "path": rel["full"], "parent": None, "verify": False,
                                                           "manifest": manifest("full")}, scratch))
            repo_full = du(repo)
            record("full: savepoint files-backup", t, repo_full)
            # no-change incremental
            record("incremental: rsync -a --link-dest", timed(lambda: subprocess.run(
                ["rsync", "-a", f"--link-dest={bare / 'full'}", f"{share}/", f"{bare / 'incr'}/"], check=True))[0])
            t, incr = timed(lambda: mover("files-backup", {"source": str(share), "repository": str(repo),
                                                           "path": rel["incr"], "parent": rel["full"],
                                                           "verify": False, "manifest": manifest("incr")}, scratch))
            record("incremental: savepoint files-backup", t, du(repo) - repo_full)
            assert incr["bytesStored"] == 0 and incr["incremental"], incr
            # restore
            data = repo / rel["full"] / "data"
            restore_request = {"repository": str(repo), "target": str(scratch / "restore"), "path": rel["full"],
                               "backupUid": "uid-full", "manifestDigest": full["digest"], "deleteExtraFiles": True}
            record("restore: rsync -a", timed(lambda: subprocess.run(
                ["rsync", "-a", f"{data}/", f"{bare / 'restore'}/"], check=True))[0])  # noqa: B023 - called at once
            (scratch / "restore").mkdir()
            t, _ = timed(lambda: mover("files-restore", restore_request, scratch))  # noqa: B023 - called at once
            record("restore: savepoint files-restore", t, du(scratch / "restore"))
            for peer in peers:
                peer.init()
                t, _ = timed(lambda: peer.backup(share))  # noqa: B023 - called at once
                before = du(peer.repo)
                record(f"full: {peer.name}", t, before)
                t, _ = timed(lambda: peer.backup(share))  # noqa: B023 - called at once
                record(f"incremental: {peer.name}", t, du(peer.repo) - before)
                t, _ = timed(lambda: peer.restore(share))  # noqa: B023 - called at once
                record(f"restore: {peer.name}", t, du(peer.target))
        print("\nfastest of each (savepoint / bare rsync; goal):")
        for what, ours, theirs, goal in (
                ("full backup", "full: savepoint files-backup", "full: rsync -a", 1.1),
                ("no-change incremental", "incremental: savepoint files-backup", "incremental: rsync -a --link-dest",
                 1.2),
                ("restore", "restore: savepoint files-restore", "restore: rsync -a", 1.1)):
            a, b = min(results[ours]), min(results[theirs])
            ca, cb = min(cpu[ours]), min(cpu[theirs])
            print(f"  {what:24s} wall {a:7.2f} s vs {b:7.2f} s = {a / b:5.2f}x   cpu {ca:7.2f} s vs {cb:7.2f} s = "
                  f"{ca / cb:5.2f}x   (goal <= {goal}x){'' if a / b <= goal else '  MISSED (wall)'}")
        for what in ("full", "incremental", "restore"):
            ours = min(results[next(k for k in results if k.startswith(f"{what}: savepoint"))])
            for peer in peers:
                theirs = min(results[f"{what}: {peer.name}"])
                print(f"  {what:12s} savepoint {ours:7.2f} s vs {peer.name} {theirs:7.2f} s = {ours / theirs:5.2f}x")
        print(f"load average during the run: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs; figures on a "
              "loaded machine vary by 2x between rounds -- compare the fastest of several rounds")
        return 0
    finally:
        rmtree(work)


def rsync_version() -> str:
    return subprocess.run(["rsync", "--version"], capture_output=True, text=True, check=True).stdout.split()[2]


if __name__ == "__main__":
    sys.exit(main())
