"""Nothing in a repository is deleted or overwritten unless it is provably the asker's.

Owner markers (``.savepoint-owner.json``, written first), ``backup.json``'s ``backup`` identity, paths
bound to the owner's namespace and name, no symlink followed anywhere -- on plain temporary
directories, byte for byte (``helpers.trees.snapshot``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers import trees
from hypothesis import given, settings
from hypothesis import strategies as st
from savepoint.mover import files as mover_files  # noqa: F401 - registers the actions
from savepoint.mover.registry import ActionContext, ActionFailed, get
from savepoint.storage import chunks, repository
from savepoint.storage.chunks import ChunkMap, ChunkRef, ChunkStore
from savepoint.storage.repository import BackupOwnerMismatch, BadPath, BadRequest, Owner

pytestmark = pytest.mark.unit

NS, SRC = "team-a", "0f9c2b1e-1111-4222-8333-444455556666"
MiB = 1 << 20
C = 4 * MiB


def manifest(name: str = "monday", uid: str = "uid-1", ns: str = NS, fmt: str = "files",
             blocks: dict[str, Any] | None = None) -> repository.BackupManifest:
    when = datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC)
    cm = ChunkMap.from_dict(blocks) if blocks else None
    return repository.build_manifest({
        "format": fmt, "backup": {"name": name, "uid": uid, "namespace": ns},
        "source": {"namespace": ns, "uid": SRC, "pvcName": "shared", "description": "pvc/shared"},
        "created": when, "completed": when, "entries": 1 if fmt == "files" else None,
        "fileCount": 0 if fmt == "files" else None, "bytesTotal": cm.data_bytes if cm else 0,
        "toolVersion": "t", "blocks": blocks})


def make_backup(root: Path, m: repository.BackupManifest, data: bytes = b"payload") -> Path:
    d, _ = repository.claim_backup_dir(root, m.rel_path(), m.identity)
    (d / "data").mkdir(exist_ok=True)
    (d / "data" / "f").write_bytes(data)
    repository.write_manifest(d, m)
    return d


def rel(name: str, ns: str = NS) -> str:
    return f"{ns}/{SRC}/{name}"


def run(action: str, params: dict[str, Any]) -> dict[str, Any]:
    fn = get(action)
    assert fn is not None
    return fn(params, ActionContext(progress=lambda *a, **k: None))


def test_a_new_backup_directory_is_marked_before_anything_else(tmp_path: Path) -> None:
    d, found = repository.claim_backup_dir(tmp_path, rel("monday"), Owner(NS, "monday", "uid-1"))
    assert found.marked and sorted(os.listdir(d)) == [repository.OWNER_FILE]
    marker = json.loads((d / repository.OWNER_FILE).read_text())
    assert {k: marker[k] for k in ("kind", "namespace", "name", "uid")} == {
        "kind": "savepoint.dev/owner", "namespace": NS, "name": "monday", "uid": "uid-1"}
    again, _ = repository.claim_backup_dir(tmp_path, rel("monday"), Owner(NS, "monday", "uid-1"))
    assert again == d  # the same owner again: a retried Job
    with pytest.raises(BackupOwnerMismatch, match="uid-1") as err:
        repository.claim_backup_dir(tmp_path, rel("monday"), Owner(NS, "monday", "uid-2"))
    assert err.value.found == {"namespace": NS, "name": "monday", "uid": "uid-1"}


@pytest.mark.parametrize("case", ["unmarked", "other-marker", "other-manifest", "bad-marker", "unmarked-bad-json"])
def test_a_directory_that_is_not_the_owners_is_never_deleted(tmp_path: Path, case: str) -> None:
    d = tmp_path / NS / SRC / "monday"
    if case == "other-manifest":
        make_backup(tmp_path, manifest(uid="uid-other"))
        (d / repository.OWNER_FILE).unlink()  # only backup.json says whose it is
    else:
        (d / "data").mkdir(parents=True)
        (d / "data" / "precious").write_text("must survive\n")
        if case == "other-marker":
            repository.write_owner_marker(d, Owner(NS, "monday", "uid-other"))
        elif case == "bad-marker":
            (d / repository.OWNER_FILE).write_text('{"kind": "savepoint.dev/owner", "uid": 7}')
        elif case == "unmarked-bad-json":
            (d / "backup.json").write_text("{not json")
    before = trees.snapshot(tmp_path)
    with pytest.raises(BackupOwnerMismatch) as err:
        repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1"))
    assert err.value.reason == "BackupOwnerMismatch"
    if case in ("other-marker", "other-manifest"):
        assert "uid-other" in err.value.message and err.value.found["uid"] == "uid-other"
    with pytest.raises(ActionFailed) as failed:
        run("repository-delete", {"repository": str(tmp_path), "path": rel("monday"),
                                  "owner": {"namespace": NS, "name": "monday", "uid": "uid-1"}})
    assert failed.value.reason == "BackupOwnerMismatch"
    assert trees.diff(before, trees.snapshot(tmp_path)) == []


def test_paths_must_be_the_owners_namespace_and_name(tmp_path: Path) -> None:
    make_backup(tmp_path, manifest(ns="team-b", uid="uid-b"))
    before = trees.snapshot(tmp_path)
    for path, owner in [(rel("monday", "team-b"), Owner(NS, "monday", "uid-b")),  # another namespace's path
                        (rel("monday", "team-b"), Owner(NS, "tuesday", "uid-b")),
                        (rel("tuesday"), Owner(NS, "monday", "uid-1")),  # another backup's directory
                        (f"{NS}/{SRC}/../../team-b/{SRC}/monday", Owner(NS, "monday", "uid-b")),
                        (f"/{NS}/{SRC}/monday", Owner(NS, "monday", "uid-b"))]:
        with pytest.raises(BadPath) as err:
            repository.remove_backup(tmp_path, path, owner=owner)
        assert err.value.reason == "BadBackupPath"
        with pytest.raises(ActionFailed) as failed:
            run("repository-delete", {"repository": str(tmp_path), "path": path, "owner": owner.to_dict()})
        assert failed.value.reason == "BadBackupPath"
    # reading is bound to the namespace too, when the asker is named
    with pytest.raises(ActionFailed) as failed:
        run("files-verify", {"repository": str(tmp_path), "path": rel("monday", "team-b"),
                             "owner": {"namespace": NS, "name": "my-restore", "uid": "u"}})
    assert failed.value.reason == "BadBackupPath"
    assert trees.diff(before, trees.snapshot(tmp_path)) == []


def test_a_symlink_into_another_namespace_is_never_followed(tmp_path: Path) -> None:
    victim = make_backup(tmp_path, manifest(ns="team-b", uid="uid-b"))
    (tmp_path / NS).mkdir()
    os.symlink(f"../team-b/{SRC}", tmp_path / NS / SRC)  # team-a's source directory "is" team-b's
    before = trees.snapshot(tmp_path / "team-b")
    with pytest.raises(BadPath, match="symlink"):
        repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-b"))
    with pytest.raises(BadPath):
        repository.claim_backup_dir(tmp_path, rel("monday"), Owner(NS, "monday", "uid-b"))
    with pytest.raises(BadPath):
        repository.load_backup(tmp_path, rel("monday"), owner=Owner(NS, "r", "u"))
    assert repository.list_backups(tmp_path, NS).backups == []
    os.unlink(tmp_path / NS / SRC)
    (tmp_path / NS / SRC).mkdir()
    os.symlink(victim, tmp_path / NS / SRC / "monday")  # the backup directory itself a link
    with pytest.raises(BadPath):
        repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-b"))
    assert trees.diff(before, trees.snapshot(tmp_path / "team-b")) == []


def test_deleting_needs_an_owner_and_a_well_formed_one(tmp_path: Path) -> None:
    make_backup(tmp_path, manifest())
    for params in ({}, {"owner": {"namespace": NS, "name": "monday"}}, {"owner": "team-a/monday"},
                   {"owner": {"namespace": NS, "name": "monday", "uid": "uid-1", "extra": 1}},
                   {"owner": {"namespace": "Team A", "name": "monday", "uid": "uid-1"}},
                   {"owner": {"namespace": NS, "name": "monday", "uid": "uid-1"}, "backupUid": "uid-2"},
                   {"owner": {"namespace": NS, "name": "monday", "uid": "uid-1"}, "limits": {"maxVolumeBytes": 0}}):
        with pytest.raises(ActionFailed) as failed:
            run("repository-delete", {"repository": str(tmp_path), "path": rel("monday"), **params})
        assert failed.value.reason == "BadMoverRequest", params
    assert repository.is_complete(tmp_path / rel("monday"))
    with pytest.raises(BadRequest):
        repository.owner_from_params({"owner": {"namespace": NS, "name": "a", "uid": "u"}}, required=True,
                                     default={"namespace": NS, "name": "b", "uid": "u"})


def test_an_interrupted_removal_is_finished_by_its_owner_only(tmp_path: Path) -> None:
    d = make_backup(tmp_path, manifest())
    (d / "backup.json").unlink()  # the first step of a removal, then a crash: the marker is still there
    with pytest.raises(BackupOwnerMismatch):
        repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-2"))
    assert repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1")).removed
    assert not (tmp_path / NS).exists() or not any((tmp_path / NS).iterdir())


def test_a_backup_from_before_owner_markers_is_recognised_by_its_manifest(tmp_path: Path) -> None:
    d = make_backup(tmp_path, manifest())
    (d / repository.OWNER_FILE).unlink()
    result = repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1"))
    assert result.removed and not d.exists()


def test_an_empty_unmarked_directory_is_claimed_and_removed(tmp_path: Path) -> None:
    d = tmp_path / NS / SRC / "monday"
    d.mkdir(parents=True)  # a crash between mkdir and the marker
    assert repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1")).removed
    d.mkdir(parents=True)
    _, found = repository.claim_backup_dir(tmp_path, rel("monday"), Owner(NS, "monday", "uid-1"))
    assert found.claimable and (d / repository.OWNER_FILE).is_file()


def test_a_files_backup_never_resumes_into_an_unmarked_directory(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "a").write_text("new")
    repo = tmp_path / "repo"
    partial = repo / NS / SRC / "monday" / "data"
    partial.mkdir(parents=True)
    (partial / "someone-elses").write_text("keep me")
    before = trees.snapshot(repo)
    m = manifest().to_json_dict()
    with pytest.raises(ActionFailed) as failed:
        run("files-backup", {"source": str(share), "repository": str(repo), "path": rel("monday"), "parent": None,
                             "manifest": {k: m[k] for k in ("backup", "source", "created", "toolVersion")}})
    assert failed.value.reason == "BackupOwnerMismatch"
    assert trees.diff(before, trees.snapshot(repo)) == []


# ---- the chunk store: garbage collection never follows a symlink --------------------------------------


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blocks_backup(root: Path, name: str, uid: str, blobs: list[bytes], ns: str = NS) -> Path:
    source = root / ns / SRC
    store = ChunkStore(source)
    for blob in blobs:
        store.put(digest(blob), blob)
    cm = ChunkMap(len(blobs) * C, C, tuple(ChunkRef(i * C, C, digest(b)) for i, b in enumerate(blobs)))
    m = manifest(name, uid, ns=ns, fmt="blocks", blocks=cm.to_dict())
    d, _ = repository.claim_backup_dir(root, m.rel_path(), m.identity)
    chunks.write_chunk_map(d, cm)
    repository.write_manifest(d, m)
    return d


def test_gc_through_a_symlinked_store_or_subdirectory_leaves_the_target_alone(tmp_path: Path) -> None:
    blocks_backup(tmp_path, "theirs", "uid-b", [b"\1" * C, b"\2" * C], ns="team-b")
    theirs = tmp_path / "team-b" / SRC / ".chunks"
    before = trees.snapshot(tmp_path / "team-b")
    mine = blocks_backup(tmp_path, "monday", "uid-1", [b"\3" * C])
    store = mine.parent / ".chunks"
    # a planted two-hex-digit directory that links to team-b's chunks of the same prefix
    for sub in os.listdir(theirs):
        if len(sub) == 2 and not (store / sub).exists():
            os.symlink(theirs / sub, store / sub)
    result = repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1"))
    assert result.removed and result.gc and result.gc["removed"] == 1
    assert trees.diff(before, trees.snapshot(tmp_path / "team-b")) == []
    # the whole store a link to team-b's
    d = blocks_backup(tmp_path, "tuesday", "uid-2", [b"\4" * C])
    import shutil

    shutil.rmtree(d.parent / ".chunks")
    os.symlink(theirs, d.parent / ".chunks")
    result = repository.remove_backup(tmp_path, rel("tuesday"), owner=Owner(NS, "tuesday", "uid-2"))
    assert result.removed and result.gc is None and "symlink" in (result.gc_skipped or "")
    with pytest.raises(BadPath):
        chunks.collect_garbage(d.parent)
    assert trees.diff(before, trees.snapshot(tmp_path / "team-b")) == []


def test_a_symlinked_chunk_is_neither_read_nor_swept_through(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"\5" * C)
    source = tmp_path / NS / SRC
    store = ChunkStore(source)
    d = digest(b"\5" * C)
    store.root.mkdir(parents=True)
    (store.root / d[:2]).mkdir()
    os.symlink(outside, store.path_of(d))
    assert not store.has(d, C)
    with pytest.raises(chunks.CorruptChunk, match="symlink"):
        store.get(d, C)
    chunks.collect_garbage(source)
    assert outside.read_bytes() == b"\5" * C


def test_a_hostile_neighbour_map_stops_the_sweep_but_not_the_removal(tmp_path: Path) -> None:
    blocks_backup(tmp_path, "monday", "uid-1", [b"\6" * C])
    keep = blocks_backup(tmp_path, "tuesday", "uid-2", [b"\7" * C])
    (keep / "chunkmap.json").write_text(json.dumps({"format": chunks.FORMAT, "size": 1 << 62, "chunkSize": 1}))
    (keep / "backup.json").unlink()
    stored_before = ChunkStore(keep.parent).list()[0]
    result = repository.remove_backup(tmp_path, rel("monday"), owner=Owner(NS, "monday", "uid-1"))
    assert result.removed and result.gc is None
    assert result.gc_skipped and result.gc_skipped.startswith(
        f"BadBackupManifest: {NS}/{SRC}/tuesday/chunkmap.json: size: ")
    assert ChunkStore(keep.parent).list()[0] == stored_before  # nothing swept on a guess


# ---- every combination of what a directory may say about its owner -----------------------------------

MARKERS = {
    "none": None,
    "asker": {"kind": "savepoint.dev/owner", "namespace": NS, "name": "monday", "uid": "uid-1"},
    "other-uid": {"kind": "savepoint.dev/owner", "namespace": NS, "name": "monday", "uid": "uid-2"},
    "other-name": {"kind": "savepoint.dev/owner", "namespace": NS, "name": "tuesday", "uid": "uid-1"},
    "other-namespace": {"kind": "savepoint.dev/owner", "namespace": "team-b", "name": "monday", "uid": "uid-1"},
    "wrong-kind": {"kind": "something", "namespace": NS, "name": "monday", "uid": "uid-1"},
    "garbage": b"\x00{[",
}
MANIFESTS = ["none", "asker", "other-uid", "garbage"]


def _ours(marker: str, manifest_kind: str) -> bool:
    """The rule of docs/repository.md, "Owners", written out."""
    if marker == "asker":
        return manifest_kind in ("none", "asker", "garbage")
    return marker == "none" and manifest_kind == "asker"


@pytest.mark.parametrize("marker", sorted(MARKERS))
@pytest.mark.parametrize("manifest_kind", MANIFESTS)
def test_every_owner_combination_is_deleted_only_when_it_is_the_askers(tmp_path: Path, marker: str,
                                                                       manifest_kind: str) -> None:
    d = tmp_path / NS / SRC / "monday"
    (d / "data").mkdir(parents=True)
    (d / "data" / "f").write_text("data\n")
    body = MARKERS[marker]
    if body is not None:
        (d / repository.OWNER_FILE).write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    if manifest_kind == "garbage":
        (d / "backup.json").write_text('{"kind": "savepoint.dev/backup", "formatVersion": 1, "format": 3}')
    elif manifest_kind != "none":
        (d / "backup.json").write_bytes(manifest(uid="uid-1" if manifest_kind == "asker" else "uid-2").to_bytes())
    before = trees.snapshot(tmp_path)
    asker = Owner(NS, "monday", "uid-1")
    if _ours(marker, manifest_kind):
        assert repository.remove_backup(tmp_path, rel("monday"), owner=asker).removed
        assert not d.exists()
    else:
        with pytest.raises(BackupOwnerMismatch):
            repository.remove_backup(tmp_path, rel("monday"), owner=asker)
        with pytest.raises(BackupOwnerMismatch):  # nor is it resumed into
            repository.claim_backup_dir(tmp_path, rel("monday"), asker)
        assert trees.diff(before, trees.snapshot(tmp_path)) == []


_text = st.one_of(st.sampled_from([NS, "monday", "uid-1", "team-b", "uid-2", ""]), st.text(max_size=12))
_marker_json = st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["savepoint.dev/owner", "x"]),
                                                  "namespace": _text, "name": _text, "uid": _text,
                                                  "extra": st.integers()})


@settings(max_examples=120, deadline=None)
@given(st.one_of(_marker_json.map(lambda m: json.dumps(m).encode()), st.binary(max_size=64)))
def test_random_owner_markers_never_let_anyone_but_their_owner_delete(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d = root / NS / SRC / "monday"
        (d / "data").mkdir(parents=True)
        (d / "data" / "f").write_text("data\n")
        (d / repository.OWNER_FILE).write_bytes(body)
        before = trees.snapshot(root)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        is_asker = isinstance(parsed, dict) and parsed.get("kind") == "savepoint.dev/owner" and \
            (parsed.get("namespace"), parsed.get("name"), parsed.get("uid")) == (NS, "monday", "uid-1")
        try:
            repository.remove_backup(root, rel("monday"), owner=Owner(NS, "monday", "uid-1"))
        except BackupOwnerMismatch:
            assert not is_asker
            assert trees.diff(before, trees.snapshot(root)) == []
        else:
            assert is_asker and not d.exists()


# ---- the sweep removes exactly what no valid map names ---------------------------------------------------

_digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(12)]


@settings(max_examples=60, deadline=None)
@given(stored=st.sets(st.sampled_from(_digests)),
       maps=st.lists(st.tuples(st.sets(st.integers(0, 7)), st.sampled_from(["backup.json", "chunkmap.json"]),
                               st.lists(st.sampled_from(_digests), min_size=8, max_size=8)), max_size=4),
       hostile=st.one_of(st.none(), st.sampled_from([
           b"{", b"[]", json.dumps({"format": chunks.FORMAT, "size": 1 << 62, "chunkSize": 1}).encode(),
           json.dumps({"format": chunks.FORMAT, "size": 8 * C, "chunkSize": C,
                       "chunks": [[0, C, _digests[0]], [0, C, _digests[1]]]}).encode()])),
       planted_link=st.booleans())
def test_the_sweep_removes_exactly_the_chunks_no_valid_map_names(stored: set[str], maps: list[Any],
                                                                 hostile: bytes | None, planted_link: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / NS / SRC
        store = ChunkStore(source)
        for d in stored:
            (store.root / d[:2]).mkdir(parents=True, exist_ok=True)
            store.path_of(d).write_bytes(b"x")
        (store.root).mkdir(parents=True, exist_ok=True)
        outside = Path(tmp) / "outside"
        outside.mkdir()
        (outside / _digests[5]).write_bytes(b"not a chunk of ours")
        if planted_link and not (store.root / _digests[5][:2]).exists():
            os.symlink(outside, store.root / _digests[5][:2])
        live: set[str] = set()
        for i, (positions, file, names) in enumerate(maps):
            refs = tuple(ChunkRef(p * C, C, names[p]) for p in sorted(positions))
            body = ChunkMap(8 * C, C, refs).to_dict()
            (source / f"b{i}").mkdir()
            (source / f"b{i}" / file).write_text(json.dumps({"blocks": body} if file == "backup.json" else body))
            live |= {r.digest for r in refs}
        if hostile is not None:
            (source / "hostile").mkdir()
            (source / "hostile" / "chunkmap.json").write_bytes(hostile)
        before = ChunkStore(source).list()[0]
        if hostile is not None:
            with pytest.raises(chunks.BadChunkMap):
                chunks.collect_garbage(source)
            assert ChunkStore(source).list()[0] == before  # nothing removed on a guess
        else:
            chunks.collect_garbage(source)
            after = ChunkStore(source).list()[0] if store.root.exists() else set()
            assert after == before & live  # what a valid map names stays; everything else goes
        assert (outside / _digests[5]).read_bytes() == b"not a chunk of ours"
