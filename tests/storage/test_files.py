"""File-share backups on real directories and a real nfs-ganesha export: the mover actions
(``files-backup``, ``files-restore``, ``files-verify``, ``repository-delete``, ``repository-list``) exactly as
a mover Job runs them, with the repository on an NFS export read back over NFS (libnfs)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import trees
from sandboxlib import nfs as sandbox_nfs
from savepoint.mover import files as mover_files
from savepoint.mover.registry import ActionContext, ActionFailed, get
from savepoint.storage import files, repository

pytestmark = pytest.mark.storage
EXPORT = "savepoint-storage-files"
NS = "team-a"
SOURCE_UID = "3f1c6a9e-0000-4000-8000-000000000001"


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int | None]] = []

    def __call__(self, done: int, total: int, *, files: int | None = None) -> None:
        self.calls.append((done, total, files))


def run(action: str, params: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    fn = get(action)
    assert fn is not None, action
    return fn(params, ActionContext(progress=progress or Progress()))


@pytest.fixture
def export(nfs: Any) -> Iterator[sandbox_nfs.Export]:
    """The repository: a directory of one NFS export (per test), served by nfs-ganesha."""
    exp = sandbox_nfs.add_export(nfs, EXPORT)
    sub = exp.dir / uuid.uuid4().hex[:8]
    sub.mkdir()
    yield sandbox_nfs.Export(server=exp.server, port=exp.port, path=f"{exp.path}/{sub.name}", dir=sub)
    subprocess.run(["rm", "-rf", str(sub)], check=False)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    trees.make_tree(root)
    return root


def manifest(name: str, uid: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"format": "files", "backup": {"name": name, "uid": uid or f"uid-{name}", "namespace": NS},
            "source": {"namespace": NS, "uid": SOURCE_UID, "pvcName": "shared", "description": "pvc/shared",
                       "reference": {"persistentVolumeClaim": {"name": "shared"}}, "sizeBytes": 1 << 30},
            "created": "2024-05-01T10:00:00+00:00", "labels": labels or {}, "toolVersion": "test"}


def rel(name: str) -> str:
    return f"{NS}/{SOURCE_UID}/{name}"


def backup(share: Path, repo: Path, name: str, *, parent: str | None = None, verify: bool = False,
           progress: Progress | None = None) -> dict[str, Any]:
    return run("files-backup", {"source": str(share), "repository": str(repo), "path": rel(name),
                                "parent": rel(parent) if parent else None, "verify": verify,
                                "manifest": manifest(name)}, progress)


def restore(repo: Path, name: str, target: Path, *, delete: bool = True, digest: str | None = None,
            uid: str | None = None) -> dict[str, Any]:
    return run("files-restore", {"repository": str(repo), "target": str(target), "path": rel(name),
                                 "backupUid": uid or f"uid-{name}", "manifestDigest": digest,
                                 "deleteExtraFiles": delete})


def nfs_cat(export: sandbox_nfs.Export, path: str) -> bytes:
    out = subprocess.run(["nfs-cat", sandbox_nfs.client_url(export, path)], capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def nfs_ls(export: sandbox_nfs.Export, path: str) -> str:
    out = subprocess.run(["nfs-ls", sandbox_nfs.client_url(export, path)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---- a full backup keeps everything -------------------------------------------------------------


def test_full_backup_keeps_every_kind_of_metadata_and_restores_it(share: Path, export: sandbox_nfs.Export,
                                                                  tmp_path: Path) -> None:
    before = trees.snapshot(share)
    progress = Progress()
    result = backup(share, export.dir, "monday", progress=progress)
    data = export.dir / rel("monday") / "data"
    assert trees.diff(before, trees.snapshot(data)) == []
    assert trees.getfacl(data / "docs") == trees.getfacl(share / "docs")
    assert trees.allocated(data / "sparse.img") < 1 * trees.MiB, "the sparse file was filled in"
    assert result["incremental"] is False
    assert result["bytesStored"] == files.link_stats(share).new_bytes > 64 * trees.MiB  # hard-linked data once
    assert result["files"] == result["entries"] - 7  # 7 directories, the top one included
    assert progress.calls, "no progress reported"
    # backup.json: complete, valid, describes this backup
    m = repository.read_manifest(export.dir / rel("monday"))
    assert (m.format, m.backup.name, m.source.uid, m.source.size_bytes) == ("files", "monday", SOURCE_UID, 1 << 30)
    assert m.entries == result["entries"] and m.tool_version.startswith("savepoint-operator") and "rsync" in m.tool_version
    assert result["digest"] == repository.digest_bytes((export.dir / rel("monday") / "backup.json").read_bytes())
    # the backup is browsable over NFS
    assert nfs_cat(export, f"{rel('monday')}/data/docs/a.txt") == (share / "docs" / "a.txt").read_bytes()
    assert "a.txt" in nfs_ls(export, f"{rel('monday')}/data/docs")
    assert json.loads(nfs_cat(export, f"{rel('monday')}/backup.json"))["backup"]["name"] == "monday"
    # ...and restores exactly, into an empty directory and over a changed share
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restore(export.dir, "monday", fresh, digest=result["digest"])
    assert trees.diff(before, trees.snapshot(fresh)) == []
    trees.change_tree(share)
    out = restore(export.dir, "monday", share, digest=result["digest"])
    assert out["deleted"] >= 3
    assert trees.diff(before, trees.snapshot(share)) == []
    assert trees.allocated(share / "sparse.img") < 1 * trees.MiB


def test_restore_without_delete_keeps_extra_files(share: Path, export: sandbox_nfs.Export) -> None:
    backup(share, export.dir, "monday")
    (share / "extra.txt").write_text("kept\n")
    (share / "docs" / "a.txt").write_text("changed\n")
    restore(export.dir, "monday", share, delete=False)
    assert (share / "extra.txt").read_text() == "kept\n"
    assert (share / "docs" / "a.txt").read_bytes().startswith(b"alpha ")


# ---- incremental --------------------------------------------------------------------------------


def test_incremental_of_an_unchanged_share_stores_no_file_data(share: Path, export: sandbox_nfs.Export,
                                                              tmp_path: Path) -> None:
    first = backup(share, export.dir, "monday")
    second = backup(share, export.dir, "tuesday", parent="monday")
    assert second["incremental"] is True and second["parent"] == "monday"
    assert second["bytesStored"] == 0 and second["newFiles"] == 0
    links = files.link_stats(export.dir / rel("tuesday") / "data", export.dir / rel("monday") / "data")
    assert links.new_inodes == 0 and links.linked == links.inodes > 5, links
    assert second["entries"] == first["entries"]
    # deleting the first backup leaves the second complete
    removed = run("repository-delete", {"repository": str(export.dir), "path": rel("monday"),
                                        "owner": {"namespace": NS, "name": "monday", "uid": "uid-monday"}})
    assert removed["removed"] is True and removed["bytesFreed"] == 0  # every file is still linked from tuesday
    assert not (export.dir / rel("monday")).exists()
    target = tmp_path / "target"
    target.mkdir()
    restore(export.dir, "tuesday", target)
    assert trees.diff(trees.snapshot(share), trees.snapshot(target)) == []


def test_incremental_stores_only_what_changed(share: Path, export: sandbox_nfs.Export) -> None:
    backup(share, export.dir, "monday")
    (share / "docs" / "new.txt").write_bytes(b"n" * 5000)
    (share / "big.bin").write_bytes(b"x" * 3000)
    os.chmod(share / "tool", 0o755)  # metadata only: a new inode, rsync cannot link a file whose mode differs
    result = backup(share, export.dir, "tuesday", parent="monday")
    assert result["bytesStored"] == 5000 + 3000 + (share / "tool").stat().st_size
    links = files.link_stats(export.dir / rel("tuesday") / "data", export.dir / rel("monday") / "data")
    assert links.new_inodes == 3 and links.new_bytes == result["bytesStored"]
    monday = export.dir / rel("monday") / "data"
    assert (monday / "big.bin").stat().st_size == 2 * trees.MiB, "the parent changed"


def test_missing_parent_falls_back_to_a_full_copy_and_says_why(share: Path, export: sandbox_nfs.Export) -> None:
    result = backup(share, export.dir, "tuesday", parent="gone")
    assert result["incremental"] is False and "gone" in result["fullReadReason"]
    assert result["bytesStored"] == files.link_stats(share).new_bytes


# ---- restart safety ---------------------------------------------------------------------------------


def test_a_half_written_backup_is_never_listed_and_a_retry_completes_it(share: Path,
                                                                        export: sandbox_nfs.Export) -> None:
    partial = export.dir / rel("monday") / "data"
    partial.mkdir(parents=True)
    # what a killed attempt leaves: the owner marker (written first) and some data
    repository.write_owner_marker(partial.parent, repository.Owner(NS, "monday", "uid-monday"))
    (partial / "stale-from-a-crashed-attempt").write_text("x")
    (partial / "docs").mkdir()
    listing = repository.list_backups(export.dir, NS)
    assert listing.backups == [] and [str(p) for p in listing.incomplete] == [rel("monday")]
    backup(share, export.dir, "monday")
    assert trees.diff(trees.snapshot(share), trees.snapshot(partial)) == []
    again = backup(share, export.dir, "monday")  # the Job ran again after backup.json was written
    assert again.get("resumed") is True
    assert [b.manifest.backup.name for b in repository.list_backups(export.dir, NS).backups] == ["monday"]


def test_a_complete_backup_of_another_object_is_never_overwritten(share: Path, export: sandbox_nfs.Export) -> None:
    backup(share, export.dir, "monday")
    params = {"source": str(share), "repository": str(export.dir), "path": rel("monday"), "parent": None,
              "verify": False, "manifest": manifest("monday", uid="another-uid")}
    with pytest.raises(ActionFailed) as failed:
        run("files-backup", params)
    assert failed.value.reason == "BackupOwnerMismatch" and "import" in failed.value.message
    assert failed.value.data["directoryOwner"]["uid"] == "uid-monday"
    before = trees.snapshot(export.dir / rel("monday"))
    with pytest.raises(ActionFailed) as refused:
        run("repository-delete", {"repository": str(export.dir), "path": rel("monday"),
                                  "owner": {"namespace": NS, "name": "monday", "uid": "another-uid"}})
    assert refused.value.reason == "BackupOwnerMismatch" and "uid-monday" in refused.value.message
    assert trees.diff(before, trees.snapshot(export.dir / rel("monday"))) == []
    assert repository.is_complete(export.dir / rel("monday"))


# ---- verify ---------------------------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    """Bit rot: same size, same time, other content (rsync's quick check cannot see it)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_passes_and_writes_the_checksum_manifest(share: Path, export: sandbox_nfs.Export) -> None:
    result = backup(share, export.dir, "monday", verify=True)
    m = repository.read_manifest(export.dir / rel("monday"))
    assert m.checksums is not None and m.checksums.files == result["verifiedFiles"] > 5
    lines = [json.loads(line) for line in (export.dir / rel("monday") / "checksums.jsonl").read_text().splitlines()]
    assert {line["path"] for line in lines} >= {"docs/a.txt", "big.bin", "sparse.img"}
    assert run("files-verify", {"repository": str(export.dir), "path": rel("monday"), "backupUid": "uid-monday"})[
        "checksums"] is True


def test_verify_catches_a_corrupted_file_in_the_repository(share: Path, export: sandbox_nfs.Export) -> None:
    backup(share, export.dir, "monday", verify=True)
    _corrupt(export.dir / rel("monday") / "data" / "docs" / "a.txt")
    with pytest.raises(ActionFailed) as stored:
        run("files-verify", {"repository": str(export.dir), "path": rel("monday"), "backupUid": "uid-monday"})
    assert stored.value.reason == "VerificationFailed" and "docs/a.txt" in stored.value.message
    # the next incremental links the rotten copy (same size and time): verify re-reads both sides and says so
    with pytest.raises(ActionFailed) as failed:
        backup(share, export.dir, "tuesday", parent="monday", verify=True)
    assert failed.value.reason == "VerificationFailed"
    assert "docs/a.txt" in failed.value.message and "content differs" in failed.value.message
    assert not repository.is_complete(export.dir / rel("tuesday")), "a failed backup must not be listed"


def test_verify_does_not_blame_files_the_application_changed_meanwhile(share: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    since = time.time()
    assert files.copy_tree(share, copy).code == 0
    (share / "docs" / "a.txt").write_bytes(b"written by the application after the copy")
    (share / "appeared").write_text("new")
    report = files.verify_copy(share, copy, since=since)
    assert report.ok, report.mismatches
    assert report.changed_during >= 2


# ---- restore refuses damaged or missing backups ------------------------------------------------------


def test_restore_of_a_backup_whose_data_is_gone_fails_and_writes_nothing(share: Path, export: sandbox_nfs.Export,
                                                                        tmp_path: Path) -> None:
    result = backup(share, export.dir, "monday")
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("must survive\n")
    # files lost from the tree
    os.unlink(export.dir / rel("monday") / "data" / "big.bin")
    with pytest.raises(ActionFailed) as damaged:
        restore(export.dir, "monday", target, digest=result["digest"])
    assert damaged.value.reason == "BackupDataMissing" and "entries" in damaged.value.message
    # another backup.json than the one recorded
    (export.dir / rel("monday") / "backup.json").write_text((export.dir / rel("monday") / "backup.json").read_text()
                                                            .replace('"toolVersion"', '"labels": {"x": "y"}, "toolVersion"', 1))
    with pytest.raises(ActionFailed) as replaced:
        restore(export.dir, "monday", target, digest=result["digest"])
    assert replaced.value.reason == "BackupDataMissing" and "changed since" in replaced.value.message
    # the whole directory gone
    subprocess.run(["rm", "-rf", str(export.dir / rel("monday"))], check=True)
    with pytest.raises(ActionFailed) as gone:
        restore(export.dir, "monday", target, digest=result["digest"])
    assert gone.value.reason == "BackupDataMissing" and "gone" in gone.value.message
    assert sorted(p.name for p in target.iterdir()) == ["precious"]


# ---- listing (re-import) ---------------------------------------------------------------------------


def test_listing_pages_through_many_backups_in_small_results(share: Path, export: sandbox_nfs.Export) -> None:
    small = share / "docs"
    for i in range(40):
        backup(small, export.dir, f"b{i:02d}", parent=f"b{i - 1:02d}" if i else None)
    (export.dir / rel("half-written")).mkdir()
    seen: list[dict[str, Any]] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = run("repository-list", {"repository": str(export.dir), "namespace": NS, "offset": offset})
        assert len(json.dumps(page)) < 3900, "a page must fit the termination message"
        seen += mover_files.unpack(page["entries"])
        offset = page["next"]
        pages += 1
        assert page["incomplete"] == 1
    assert pages > 1 and [e["name"] for e in seen] == [f"b{i:02d}" for i in range(40)]
    assert seen[3]["parent"] == "b02" and seen[3]["reference"] == {"persistentVolumeClaim": {"name": "shared"}}
    assert seen[0]["digest"].startswith("sha256:")
