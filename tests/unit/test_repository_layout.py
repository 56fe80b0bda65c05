"""The backup repository's layout and manifest (savepoint.storage.repository), on plain temporary directories."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path, PurePosixPath

import pytest
from savepoint.storage import repository as repo

pytestmark = pytest.mark.unit
UID = "0f9c2b1e-1111-4222-8333-444455556666"


def manifest(name: str = "monday", uid: str = "uid-1", ns: str = "team-a", source: str = UID,
             completed: int = 0) -> repo.BackupManifest:
    when = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC)
    return repo.BackupManifest.model_validate({
        "format": "files", "backup": {"name": name, "uid": uid, "namespace": ns},
        "source": {"namespace": ns, "uid": source, "pvcName": "shared", "description": "pvc/shared",
                   "reference": {"persistentVolumeClaim": {"name": "shared"}}, "sizeBytes": 1 << 30},
        "created": when, "completed": when + datetime.timedelta(minutes=completed), "entries": 3, "fileCount": 2,
        "bytesTotal": 10, "bytesStored": 10, "toolVersion": "t"})


def owner(name: str = "monday", uid: str = "uid-1", ns: str = "team-a") -> repo.Owner:
    return repo.Owner(ns, name, uid)


def write(root: Path, m: repo.BackupManifest) -> Path:
    """What a mover does: claim the directory (owner marker first), write data, then backup.json."""
    d, _ = repo.claim_backup_dir(root, m.rel_path(), m.identity)
    (d / repo.DATA_DIR).mkdir()
    repo.write_manifest(d, m)
    return d


# ---- paths -------------------------------------------------------------------------------------


def test_layout_is_namespace_source_uid_backup_name() -> None:
    assert repo.backup_rel_path("team-a", UID, "monday") == PurePosixPath(f"team-a/{UID}/monday")
    assert repo.parse_rel_path(f"team-a/{UID}/monday") == ("team-a", UID, "monday")
    assert repo.raw_source_id("nfs:10.0.0.1:/export").startswith("raw-")
    assert repo.raw_source_id("nfs:10.0.0.1:/export") == repo.raw_source_id("nfs:10.0.0.1:/export")


@pytest.mark.parametrize("bad", ["../x", ".chunks", "Upper", "a/b", "", "-lead"])
def test_names_that_would_break_the_layout_are_refused(bad: str) -> None:
    with pytest.raises(repo.BadPath):
        repo.backup_rel_path("team-a", UID, bad)


@pytest.mark.parametrize("rel", ["/etc", "a/../../b", "ns/uid", "ns/uid/name/extra"])
def test_paths_outside_the_layout_are_refused(rel: str) -> None:
    with pytest.raises(repo.BadPath):
        repo.parse_rel_path(rel)


def test_symlinks_never_lead_out_of_the_repository(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "team-a").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "team-a" / UID).symlink_to(outside)
    with pytest.raises(repo.BadPath):
        repo.inside(root, f"team-a/{UID}/monday")
    with pytest.raises(repo.BadPath):
        repo.remove_backup(root, f"team-a/{UID}/monday", owner=owner())
    assert outside.exists()


# ---- the manifest ------------------------------------------------------------------------------


def test_manifest_round_trips_in_camel_case_and_keeps_unknown_fields(tmp_path: Path) -> None:
    d = write(tmp_path, manifest())
    raw = json.loads((d / "backup.json").read_text())
    assert raw["kind"] == "savepoint.dev/backup" and raw["formatVersion"] == 1 and raw["source"]["pvcName"] == "shared"
    raw["somethingNewer"] = {"x": 1}
    (d / "backup.json").write_text(json.dumps(raw))
    back = repo.read_manifest(d)
    assert back.backup.name == "monday" and back.model_extra == {"somethingNewer": {"x": 1}}


def test_newer_format_versions_and_foreign_files_are_refused(tmp_path: Path) -> None:
    d = write(tmp_path, manifest())
    raw = json.loads((d / "backup.json").read_text())
    (d / "backup.json").write_text(json.dumps({**raw, "formatVersion": 99}))
    with pytest.raises(repo.ManifestInvalid, match="format version 99"):
        repo.read_manifest(d)
    (d / "backup.json").write_text('{"hello": "world"}')
    with pytest.raises(repo.ManifestInvalid, match="not a Savepoint backup manifest"):
        repo.read_manifest(d)


def test_manifest_is_written_atomically_and_never_over_another_backup(tmp_path: Path) -> None:
    d = write(tmp_path, manifest())
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == [repo.OWNER_FILE], "temporary file left behind"
    repo.write_manifest(d, manifest())  # the same backup again: fine (a retried Job)
    with pytest.raises(repo.NotThisBackup):
        repo.write_manifest(d, manifest(uid="uid-2"))


def test_load_backup_checks_identity_and_digest(tmp_path: Path) -> None:
    d = write(tmp_path, manifest())
    digest = repo.digest_bytes((d / "backup.json").read_bytes())
    rel = f"team-a/{UID}/monday"
    assert repo.load_backup(tmp_path, rel, expected_uid="uid-1", expected_digest=digest)[1].backup.uid == "uid-1"
    with pytest.raises(repo.ManifestInvalid, match="belongs to backup uid"):
        repo.load_backup(tmp_path, rel, expected_uid="uid-other")
    with pytest.raises(repo.ManifestInvalid, match="changed since"):
        repo.load_backup(tmp_path, rel, expected_digest="sha256:00")
    with pytest.raises(repo.ManifestMissing, match="gone"):
        repo.load_backup(tmp_path, f"team-a/{UID}/tuesday")


# ---- listing -----------------------------------------------------------------------------------


def test_listing_finds_complete_backups_only_in_completion_order(tmp_path: Path) -> None:
    write(tmp_path, manifest("tuesday", uid="u2", completed=60))
    write(tmp_path, manifest("monday", uid="u1", completed=0))
    write(tmp_path, manifest("other-ns", uid="u3", ns="team-b"))
    (tmp_path / "team-a" / UID / "half-written" / "data").mkdir(parents=True)
    (tmp_path / "team-a" / UID / repo.CHUNKS_DIR).mkdir()
    moved = write(tmp_path, manifest("wednesday", uid="u4"))
    os.rename(moved, moved.with_name("renamed"))
    broken = tmp_path / "team-a" / UID / "broken"
    broken.mkdir()
    (broken / "backup.json").write_text("{not json")
    listing = repo.list_backups(tmp_path, "team-a")
    assert [b.manifest.backup.name for b in listing.backups] == ["monday", "tuesday"]
    assert [str(p) for p in listing.incomplete] == [f"team-a/{UID}/half-written"]
    assert sorted(str(p) for p, _ in listing.invalid) == [f"team-a/{UID}/broken", f"team-a/{UID}/renamed"]
    assert [b.manifest.backup.name for b in repo.list_backups(tmp_path).backups] == ["monday", "other-ns", "tuesday"]
    assert repo.newest_backup(tmp_path, "team-a", UID).manifest.backup.name == "tuesday"  # type: ignore[union-attr]


# ---- removing ----------------------------------------------------------------------------------


def test_remove_takes_the_manifest_first_and_only_its_own_directory(tmp_path: Path) -> None:
    keep = write(tmp_path, manifest("monday", uid="u1"))
    gone = write(tmp_path, manifest("tuesday", uid="u2"))
    (gone / "data" / "f").write_text("x")
    locked = gone / "data" / "ro"
    locked.mkdir()
    (locked / "inner").write_text("y")
    locked.chmod(0o500)
    with pytest.raises(repo.NotThisBackup):
        repo.remove_backup(tmp_path, f"team-a/{UID}/tuesday", owner=owner("tuesday", "u1"))
    result = repo.remove_backup(tmp_path, f"team-a/{UID}/tuesday", owner=owner("tuesday", "u2"), measure=True)
    assert result.removed and result.files_removed == 4 and not gone.exists() and repo.is_complete(keep)
    assert not repo.remove_backup(tmp_path, f"team-a/{UID}/tuesday", owner=owner("tuesday", "u2")).removed
    repo.remove_backup(tmp_path, f"team-a/{UID}/monday", owner=owner("monday", "u1"))
    assert not (tmp_path / "team-a" / UID).exists(), "an empty source directory stays behind"


def test_an_interrupted_removal_is_never_listed(tmp_path: Path) -> None:
    d = write(tmp_path, manifest())
    (d / "backup.json").unlink()  # what a crash right after the first step of remove_backup leaves
    assert repo.list_backups(tmp_path).backups == []
    assert repo.remove_backup(tmp_path, f"team-a/{UID}/monday", owner=owner()).removed
