"""The sandbox's NFS is real: nfs-ganesha exports read back through libnfs (nfs-cat, nfs-ls)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sandboxlib import nfs as sandbox_nfs  # conftest puts hack/ on the path
from sandboxlib.config import Config
from sandboxlib.proc import SandboxError

pytestmark = pytest.mark.storage


def _client(tool: str, url: str) -> str:
    result = subprocess.run([tool, url], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{tool} {url}: {result.stderr}"
    return result.stdout


@pytest.fixture
def export(nfs: Config) -> sandbox_nfs.Export:
    """A fixed-name export (add_export is idempotent), emptied for each test."""
    exp = sandbox_nfs.add_export(nfs, "test-sandbox-nfs")
    for child in exp.dir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return exp


def test_file_written_locally_is_read_over_nfs(export: sandbox_nfs.Export) -> None:
    (export.dir / "sub").mkdir()
    (export.dir / "sub" / "hello.txt").write_text("hello from the sandbox\n")
    assert export.path == "/test-sandbox-nfs" and export.server == "127.0.0.1"
    assert _client("nfs-cat", sandbox_nfs.client_url(export, "sub/hello.txt")) == "hello from the sandbox\n"
    assert "sub" in _client("nfs-ls", sandbox_nfs.client_url(export))
    assert "hello.txt" in _client("nfs-ls", sandbox_nfs.client_url(export, "sub"))


def test_owners_are_numeric(export: sandbox_nfs.Export) -> None:
    path = export.dir / "owned"
    path.write_text("x")
    os.chown(path, 1234, 5678)
    fields = _client("nfs-ls", sandbox_nfs.client_url(export)).split()
    assert fields[2:4] == ["1234", "5678"]


def test_add_export_is_idempotent(nfs: Config, export: sandbox_nfs.Export) -> None:
    (export.dir / "keep").write_text("kept")
    conf = nfs.nfs_dir / "exports.d" / "test-sandbox-nfs.conf"
    before = conf.read_text()
    again = sandbox_nfs.add_export(nfs, "test-sandbox-nfs")
    assert again == export
    assert conf.read_text() == before  # same Export_Id, nothing re-created
    assert _client("nfs-cat", sandbox_nfs.client_url(again, "keep")) == "kept"


def test_bad_export_name_is_refused(nfs: Config) -> None:
    with pytest.raises(SandboxError, match="bad export name"):
        sandbox_nfs.add_export(nfs, "../etc")
