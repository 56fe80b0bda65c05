"""``make krew``: the plugin archive, its sha256 and the krew manifest, and the archive's plugin really runs
with nothing but a bare ``python3 -S`` (no site packages at all: no kubernetes, no pydantic, no rados)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_make_krew_builds_a_self_contained_plugin(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(ROOT / "hack" / "krew"), "--dist", str(dist)], check=True, timeout=600)
    archive = next(dist.glob("kubectl-savepoint-v*-linux-amd64.tar.gz"))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (dist / f"{archive.name}.sha256").read_text() == f"{digest}  {archive.name}\n"
    manifest = yaml.safe_load((dist / "savepoint.yaml").read_text())
    from savepoint.cli.main import plugin_version

    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2" and manifest["kind"] == "Plugin"
    spec = manifest["spec"]
    assert spec["version"] == f"v{plugin_version()}" and spec["shortDescription"]
    [platform] = spec["platforms"]
    assert platform["sha256"] == digest and platform["uri"].endswith("/" + archive.name)
    assert platform["bin"] == "kubectl-savepoint" and platform["selector"]["matchLabels"] == {"os": "linux",
                                                                                             "arch": "amd64"}
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["kubectl-savepoint"]
        tar.extractall(tmp_path / "installed")  # one regular file, checked above
    plugin = tmp_path / "installed" / "kubectl-savepoint"
    assert os.access(plugin, os.X_OK)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u", "namespace": "team-a"}}]}))
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig)}
    bare = ["/usr/bin/python3", "-S", str(plugin)]  # -S: not even Debian's dist-packages
    out = subprocess.run([*bare, "version", "--client"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"Plugin version: {plugin_version()}"), out.stderr
    out = subprocess.run([*bare, "backup", "data", "--name", "b", "--dry-run=client", "-o", "yaml"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["metadata"] == {"name": "b", "namespace": "team-a"}
    (tmp_path / "installed" / "kubectl_complete-savepoint").symlink_to(plugin)
    out = subprocess.run([str(tmp_path / "installed" / "kubectl_complete-savepoint"), "rev"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.splitlines() == ["revert", ":4"], out.stdout + out.stderr
