"""Everything read from a backup repository is validated with bounds before it is used.

``backup.json`` (both formats), the chunk map (``blocks`` / ``chunkmap.json``), the owner marker and
``checksums.jsonl``: hostile files -- huge sizes, chunk size 1, negative or wrong-typed numbers, counts
that do not add up, deep nesting, huge strings, FIFOs, symlinks, a 1 GiB file -- are either valid or
refused with ``BadBackupManifest`` naming the file and the field; the loader never crashes or hangs.
Property tests (hypothesis) mutate valid manifests at random; named cases pin the fields.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from savepoint.storage import chunks, files, repository
from savepoint.storage.chunks import ChunkMap, ChunkRef
from savepoint.storage.repository import BadBackupManifest, Limits

pytestmark = pytest.mark.unit

MiB, TiB = 1 << 20, 1 << 40
C = 4 * MiB
NS, SRC = "team-a", "0f9c2b1e-1111-4222-8333-444455556666"
SLOW = 5.0  # seconds: far above what any refusal takes, far below a hang (the machine is shared and loaded)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_manifest() -> dict[str, Any]:
    return {"kind": "savepoint.dev/backup", "format": "files", "formatVersion": 1,
            "backup": {"name": "monday", "uid": "uid-1", "namespace": NS},
            "source": {"namespace": NS, "uid": SRC, "pvcName": "shared", "description": "pvc/shared",
                       "reference": {"persistentVolumeClaim": {"name": "shared"}}, "sizeBytes": 1 << 30,
                       "accessModes": ["ReadWriteMany"]},
            "created": "2024-05-01T10:00:00+00:00", "completed": "2024-05-01T10:05:00+00:00",
            "entries": 3, "fileCount": 2, "bytesTotal": 10, "bytesRead": 10, "bytesStored": 10,
            "checksums": {"algorithm": "sha256", "file": "checksums.jsonl", "digest": "sha256:" + "a" * 64,
                          "files": 2},
            "toolVersion": "t", "labels": {"app": "db"}}


def blocks_manifest(size: int = 16 * C) -> dict[str, Any]:
    refs = tuple(ChunkRef(i * C, C, digest(bytes([i + 1]) * 8)) for i in (0, 3, 7) if (i + 1) * C <= size)
    m = ChunkMap(size, C, refs)
    base = files_manifest()
    base["source"]["sizeBytes"] = size
    return {**base, "format": "blocks", "entries": None, "fileCount": None, "checksums": None,
            "bytesTotal": m.data_bytes,
            "blocks": {**m.to_dict(), "baseSnapshot": "savepoint-base-x", "snapshotId": 4, "readSnapshot": "t",
                       "image": {"pool": "rbd", "namespace": None, "image": "csi-vol-1"}, "bytesReadRepository": 0}}


def clean(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v is not None}


def as_bytes(raw: Any) -> bytes:
    return json.dumps(raw).encode()


def parse(raw: Any, limits: Limits | None = None) -> repository.BackupManifest:
    return repository.parse_manifest(as_bytes(raw), "team-a/x/monday/backup.json", limits)


def refused(raw: Any, field: str, limits: Limits | None = None, match: str = "") -> BadBackupManifest:
    with pytest.raises(BadBackupManifest) as err:
        parse(raw, limits)
    assert err.value.reason == "BadBackupManifest"
    assert err.value.file == "team-a/x/monday/backup.json"
    assert err.value.field == field, err.value.message
    assert match in err.value.message
    assert str(err.value).startswith(f"team-a/x/monday/backup.json: {field}: ")
    return err.value


def test_the_valid_manifests_load() -> None:
    assert parse(clean(files_manifest())).checksums is not None
    m = parse(clean(blocks_manifest()))
    assert m.chunk_map() is not None and m.chunk_map().data_bytes == 3 * C


# ---- named hostile cases: each names its field ---------------------------------------------------------


_DELETE = object()


def _set(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


@pytest.mark.parametrize("path, value, field", [
    ("blocks.size", 1 << 62, "blocks.size"),  # far over the 64 TiB default
    ("blocks.size", -1, "blocks.size"),
    ("blocks.size", "67108864", "blocks.size"),  # a string is no size
    ("blocks.size", 67108864.0, "blocks.size"),  # nor a float
    ("blocks.size", True, "blocks.size"),
    ("blocks.chunkSize", 1, "blocks.chunkSize"),  # chunk size 1: billions of positions
    ("blocks.chunkSize", 3 * MiB, "blocks.chunkSize"),
    ("blocks.chunkSize", -C, "blocks.chunkSize"),
    ("blocks.chunkCount", 4, "blocks.chunkCount"),
    ("blocks.dataBytes", 1, "blocks.dataBytes"),
    ("blocks.chunks", {"0": 1}, "blocks.chunks"),
    ("blocks.checksum", "sp1-sha256:" + "0" * 64, "blocks.checksum"),
    ("blocks.checksum", "md5:x", "blocks.checksum"),
    ("blocks.format", "savepoint-chunks/9", "blocks.format"),
    ("blocks.hash", "md5", "blocks.hash"),
    ("blocks.snapshotId", -3, "blocks.snapshotId"),
    ("blocks.baseSnapshot", "x" * 10000, "blocks.baseSnapshot"),
    ("blocks.image", {"pool": ["x"]}, "blocks.image"),
    ("bytesTotal", 5, "bytesTotal"),
    ("source.sizeBytes", 65 * TiB, "source.sizeBytes"),
    ("source.description", "x" * 100_000, "source.description"),
    ("source.namespace", "team-b", "source.namespace"),
    ("backup.name", "../../etc", "backup.name"),
    ("backup.uid", "a/b", "backup.uid"),
    ("backup", _DELETE, "backup"),
    ("labels", {f"k{i}": "v" for i in range(2000)}, "labels"),
    ("labels", {"k": "v" * 100}, "labels.k"),
    ("formatVersion", 99, "formatVersion"),
    ("formatVersion", 0, "formatVersion"),
    ("formatVersion", "1", "formatVersion"),
    ("kind", "something/else", "kind"),
    ("incremental", "yes", "incremental"),
    ("created", "yesterday", "created"),
    ("toolVersion", _DELETE, "toolVersion"),
])
def test_hostile_blocks_manifests_are_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    refused(_set(clean(blocks_manifest()), path, value), field)


@pytest.mark.parametrize("mutate, field, match", [
    (lambda c: c.append(list(c[-1])), "blocks.chunks[3][0]", "strictly increasing"),  # a duplicate
    (lambda c: c.__setitem__(1, [c[0][0], C, c[1][2]]), "blocks.chunks[1][0]", "strictly increasing"),
    (lambda c: c.reverse(), "blocks.chunks[1][0]", "strictly increasing"),
    (lambda c: c.__setitem__(0, [1, C, c[0][2]]), "blocks.chunks[0][0]", "multiple"),
    (lambda c: c.__setitem__(2, [64 * C, C, c[2][2]]), "blocks.chunks[2][0]", "outside"),
    (lambda c: c.__setitem__(0, [0, C - 1, c[0][2]]), "blocks.chunks[0][1]", "length"),
    (lambda c: c.__setitem__(0, [0, C, c[0][2].upper()]), "blocks.chunks[0][2]", "sha256"),
    (lambda c: c.__setitem__(0, [0, C]), "blocks.chunks[0]", "[offset, length, sha256]"),
    (lambda c: c.__setitem__(0, [0.0, C, c[0][2]]), "blocks.chunks[0][0]", "integer"),
    (lambda c: c.__setitem__(0, [-C, C, c[0][2]]), "blocks.chunks[0][0]", "outside"),
])
def test_hostile_chunk_lists_are_refused_naming_the_entry(mutate: Any, field: str, match: str) -> None:
    raw = clean(blocks_manifest())
    entries = raw["blocks"]["chunks"]
    mutate(entries)
    for key in ("chunkCount", "dataBytes", "checksum"):  # so the entry check, not a count, is what refuses
        raw["blocks"].pop(key)
    raw["bytesTotal"] = sum(e[1] for e in entries if len(e) == 3 and isinstance(e[1], int))
    refused(raw, field, match=match)


def test_more_chunks_than_the_volume_has_positions_is_refused_before_any_loop() -> None:
    raw = clean(blocks_manifest(size=2 * C))
    raw["blocks"]["chunks"] = [[i * C, C, "a" * 64] for i in range(100_000)]
    started = time.monotonic()
    refused(raw, "blocks.chunks", match="at most 2")
    assert time.monotonic() - started < SLOW


def test_the_volume_size_limit_is_a_parameter() -> None:
    raw = clean(blocks_manifest(size=16 * C))
    refused(raw, "blocks.size", Limits(max_volume_bytes=8 * C), match="maxVolumeBytes")
    assert parse(raw, Limits(max_volume_bytes=16 * C)).blocks is not None
    big = 100 * TiB
    raw = clean(blocks_manifest())
    raw["blocks"]["size"] = big
    raw["blocks"]["chunkSize"] = 8 * MiB
    raw["blocks"]["chunks"] = [[0, 8 * MiB, "b" * 64]]
    for key in ("chunkCount", "dataBytes", "checksum"):
        raw["blocks"].pop(key)
    raw["bytesTotal"] = 8 * MiB
    raw["source"]["sizeBytes"] = big
    refused(raw, "blocks.size")  # the 64 TiB default
    assert parse(raw, Limits(max_volume_bytes=128 * TiB)).chunk_map().size == big
    assert Limits.from_params({"limits": {"maxVolumeBytes": 128 * TiB}}).max_volume_bytes == 128 * TiB
    for bad in ({"maxVolumeBytes": -1}, {"maxVolumeBytes": "1"}, {"maxVolumeBytes": 1 << 62}, {"other": 1}, [1]):
        with pytest.raises(repository.BadRequest):
            Limits.from_params({"limits": bad})


def test_a_valid_map_at_the_limit_costs_seconds_not_hours() -> None:
    # 64 TiB in 4 MiB chunks: 16 M chunk positions, every one fed to the checksum
    raw = clean(blocks_manifest(size=64 * TiB))
    for key in ("chunkCount", "dataBytes", "checksum"):
        raw["blocks"].pop(key)
    started = time.monotonic()
    m = parse(raw)
    raw["blocks"]["checksum"] = m.chunk_map().checksum()
    assert parse(raw).chunk_map().size == 64 * TiB
    assert time.monotonic() - started < 4 * SLOW
    raw["blocks"]["chunkSize"] = MiB  # 64 M positions: over MAX_CHUNK_INDEXES
    raw["blocks"]["chunks"] = []
    raw["bytesTotal"] = 0
    raw["blocks"].pop("checksum")
    refused(raw, "blocks.size", match="chunk positions")


def test_files_manifest_fields_are_bounded() -> None:
    raw = clean(files_manifest())
    refused(_set(raw, "checksums.file", "../../../etc/shadow"), "checksums.file")  # never opened outside
    refused(_set(raw, "checksums.digest", "sha256:xyz"), "checksums.digest")
    refused(_set(raw, "fileCount", 4), "fileCount")  # more files than entries
    refused(_set(raw, "entries", -1), "entries")
    refused(_set(raw, "bytesTotal", 1 << 64), "bytesTotal")
    refused(_set(raw, "metadataDropped", ["acls"] * 1000), "metadataDropped")
    refused(_set(raw, "source.reference", {"x": "y" * 20000}), "source.reference")
    refused(_set(raw, "blocks", blocks_manifest()["blocks"]), "blocks")


@pytest.mark.parametrize("text, field, match", [
    (b"{not json", "(file)", "not JSON"),
    (b"[1, 2]", "(file)", "not a JSON object"),
    (b"\xff\xfe", "(file)", "not JSON"),
    (b'{"kind": "savepoint.dev/backup", "kind": "x"}', "(file)", "duplicate"),
    (b'{"kind": "savepoint.dev/backup", "formatVersion": NaN}', "(file)", "not JSON"),
    (b"1" * 5000, "(file)", "not JSON"),  # an integer of 5000 digits
    (b"[" * 100_000 + b"]" * 100_000, "(file)", "nested"),
])
def test_files_that_are_not_manifests_are_refused(text: bytes, field: str, match: str) -> None:
    with pytest.raises(BadBackupManifest) as err:
        repository.parse_manifest(text, "b.json")
    assert err.value.field == field and match in err.value.message


def test_deep_nesting_inside_an_unknown_field_is_refused_naming_it() -> None:
    raw = clean(files_manifest())
    deep: Any = 1
    for _ in range(200):
        deep = {"x": deep}
    raw["extra"] = deep
    error = refused(raw, error_field := "extra" + ".x" * 32)
    assert "nested" in error.message and error_field


def test_a_huge_backup_json_is_refused_before_it_is_read(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    with open(d / "backup.json", "wb") as f:  # 1 GiB, sparse: costs nothing to make
        f.truncate(1 << 30)
    started = time.monotonic()
    with pytest.raises(BadBackupManifest, match="refused unread") as err:
        repository.read_manifest(d)
    assert err.value.field == "(file)" and time.monotonic() - started < SLOW
    with pytest.raises(BadBackupManifest, match="refused unread"):
        chunks.read_chunk_map(d)


def test_a_fifo_or_a_symlink_is_refused_without_hanging(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    os.mkfifo(d / "backup.json")
    done = threading.Event()
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            repository.read_manifest(d)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(SLOW), "reading a FIFO backup.json hangs"
    assert isinstance(outcome[0], BadBackupManifest) and "regular file" in outcome[0].message
    os.unlink(d / "backup.json")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(as_bytes(clean(files_manifest())))
    os.symlink(elsewhere, d / "backup.json")
    with pytest.raises(BadBackupManifest, match="symlink"):
        repository.read_manifest(d)


def test_chunkmap_json_of_a_partial_backup_is_validated_too(tmp_path: Path) -> None:
    d = tmp_path / "ns" / "src" / "partial"
    d.mkdir(parents=True)
    body = ChunkMap(2 * C, C, (ChunkRef(0, C, "c" * 64),)).to_dict()
    (d / "chunkmap.json").write_text(json.dumps({**body, "chunkSize": 1}))
    with pytest.raises(chunks.BadChunkMap) as err:
        chunks.read_chunk_map(d)
    assert err.value.field == "chunkSize" and err.value.file.endswith("partial/chunkmap.json")
    (d / "chunkmap.json").write_text(json.dumps(body))
    assert chunks.read_chunk_map(d).digests() == {"c" * 64}  # type: ignore[union-attr]


def test_a_hostile_directory_is_listed_as_invalid_with_its_reason(tmp_path: Path) -> None:
    good = repository.build_manifest(clean(files_manifest()))
    d, _ = repository.claim_backup_dir(tmp_path, good.rel_path(), good.identity)
    repository.write_manifest(d, good)
    bad = tmp_path / NS / SRC / "tuesday"
    bad.mkdir()
    (bad / "backup.json").write_bytes(as_bytes(_set(clean(blocks_manifest()), "blocks.chunkSize", 1)))
    listing = repository.list_backups(tmp_path, NS)
    assert [b.manifest.backup.name for b in listing.backups] == ["monday"]
    assert [(str(p), why.split(":")[0]) for p, why in listing.invalid] == [(f"{NS}/{SRC}/tuesday",
                                                                            "BadBackupManifest")]
    assert listing.invalid[0][1].startswith("BadBackupManifest: blocks.chunkSize: ")


# ---- properties: random hostile manifests ------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([0, 1, -1, C, MiB, 1 << 46, 1 << 62, (1 << 63) - 1, 1 << 64]),
    st.text(max_size=20), st.just("x" * 5000), st.just("a" * 64), st.just("savepoint-chunks/1"),
)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                               inner, max_size=4),
                     max_leaves=12)


def _paths(raw: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(raw, dict):
        for k, v in raw.items():
            found += _paths(v, prefix + (k,))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            found += _paths(v, prefix + (i,))
    return found


def _mutated(draw: Any) -> dict[str, Any]:
    raw = clean(draw(st.sampled_from([files_manifest(), blocks_manifest()])))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(raw)
        where = draw(st.sampled_from(paths))
        node = raw
        for part in where[:-1]:
            node = node[part]
        action = draw(st.sampled_from(["replace", "delete", "deep", "huge-list"]))
        if action == "delete" and isinstance(node, dict):
            del node[where[-1]]
        elif action == "deep":
            value: Any = 0
            for _ in range(draw(st.integers(30, 900))):
                value = [value]
            node[where[-1]] = value
        elif action == "huge-list":
            node[where[-1]] = [[i * C, C, "d" * 64] for i in range(draw(st.integers(0, 3000)))]
        else:
            node[where[-1]] = draw(_json)
    return raw


@st.composite
def hostile_manifests(draw: Any) -> dict[str, Any]:
    return _mutated(draw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_manifests())
def test_random_hostile_manifests_load_or_are_refused_naming_a_field(raw: dict[str, Any]) -> None:
    data = json.dumps(raw).encode()
    started = time.monotonic()
    try:
        m = repository.parse_manifest(data, "p/backup.json")
    except BadBackupManifest as exc:
        assert exc.reason == "BadBackupManifest" and exc.file == "p/backup.json" and exc.field
        assert str(exc) == f"p/backup.json: {exc.field}: {exc.problem}"
    else:  # valid: then it is also within every bound
        if m.format == "blocks":
            cm = m.chunk_map()
            assert cm.size <= repository.DEFAULT_MAX_VOLUME_BYTES and cm.chunk_size in chunks.ALLOWED_CHUNK_SIZES
            assert len(cm.chunks) <= -(-cm.size // cm.chunk_size) and m.bytes_total == cm.data_bytes
        assert len(m.source.description) <= repository.MAX_TEXT
    assert time.monotonic() - started < SLOW


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_chunk_maps_round_trip_and_the_fast_checksum_is_the_definition(data: Any) -> None:
    chunk_size = data.draw(st.sampled_from(sorted(chunks.ALLOWED_CHUNK_SIZES)))
    positions = data.draw(st.integers(0, 40))
    size = max(0, positions * chunk_size - data.draw(st.integers(0, chunk_size - 1)))
    count = -(-size // chunk_size)
    chosen = sorted(data.draw(st.sets(st.integers(0, max(0, count - 1)), max_size=count)) if count else [])
    refs = tuple(ChunkRef(i * chunk_size, chunks.chunk_length(i * chunk_size, size, chunk_size),
                          digest(str(i).encode())) for i in chosen)
    m = ChunkMap(size, chunk_size, refs)
    assert m.checksum() == m.checksum_naive()
    back = chunks.parse_section(json.loads(json.dumps(m.to_dict())), prefix="")
    assert back == m


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "hash", "size", "chunkSize", "chunks", "chunkCount",
                                         "dataBytes", "checksum", "snapshotId", "image"]), _json, max_size=10))
def test_random_chunk_map_sections_never_crash(section: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        chunks.parse_section(section, where="m.json", prefix="")
    except chunks.BadChunkMap as exc:
        assert exc.field and exc.reason == "BadBackupManifest"
    assert time.monotonic() - started < SLOW


# ---- checksums.jsonl ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line, field", [
    ({"path": "../../etc/shadow", "size": 1, "sha256": "a" * 64}, "line 1.path"),
    ({"path": "/etc/shadow", "size": 1, "sha256": "a" * 64}, "line 1.path"),
    ({"path": "a//b", "size": 1, "sha256": "a" * 64}, "line 1.path"),
    ({"path": "a", "size": -1, "sha256": "a" * 64}, "line 1.size"),
    ({"path": "a", "size": "1", "sha256": "a" * 64}, "line 1.size"),
    ({"path": "a", "size": 1, "sha256": "A" * 64}, "line 1.sha256"),
    ({"path": "a", "size": 1}, "line 1"),
])
def test_hostile_checksum_lines_are_refused_before_any_file_is_read(tmp_path: Path, line: dict[str, Any],
                                                                    field: str) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "checksums.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(BadBackupManifest) as err:
        files.verify_against_checksums(tmp_path / "tree", tmp_path / "checksums.jsonl", where="c.jsonl")
    assert err.value.field == field


def test_checksums_must_match_what_the_manifest_recorded(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"hello")
    text = files.checksum_line("a", 5, digest(b"hello")) + "\n"
    (tmp_path / "c.jsonl").write_text(text)
    info = repository.ChecksumInfo(digest="sha256:" + digest(text.encode()), files=1)
    assert files.verify_against_checksums(tree, tmp_path / "c.jsonl", expected=info).ok
    with pytest.raises(BadBackupManifest, match="2 checksummed files"):
        files.verify_against_checksums(tree, tmp_path / "c.jsonl",
                                       expected=repository.ChecksumInfo(digest=info.digest, files=2))
    tampered = repository.ChecksumInfo(digest="sha256:" + "0" * 64, files=1)
    report = files.verify_against_checksums(tree, tmp_path / "c.jsonl", expected=tampered)
    assert not report.ok and "changed since" in report.mismatches[0]
    (tree / "a").unlink()
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "a").write_bytes(b"hello")
    os.rmdir(tree)
    os.symlink(outside, tree)  # the tree itself a link: verify still reads only inside it (the link is the root)
    nested = tmp_path / "t2"
    (nested / "d").parent.mkdir()
    os.symlink(outside, nested / "d")
    (tmp_path / "c2.jsonl").write_text(files.checksum_line("d/a", 5, digest(b"hello")) + "\n")
    report = files.verify_against_checksums(nested, tmp_path / "c2.jsonl")
    assert not report.ok and "symlink" in report.mismatches[0]


def test_a_listing_keeps_the_counts_not_the_chunk_lists(tmp_path: Path) -> None:
    m = repository.build_manifest(clean(blocks_manifest()))
    d, _ = repository.claim_backup_dir(tmp_path, m.rel_path(), m.identity)
    repository.write_manifest(d, m)
    listed = repository.list_backups(tmp_path, NS).backups[0].manifest
    assert listed.blocks is not None and listed.blocks.chunks == [] and listed.blocks.chunk_count == 3
    with pytest.raises(RuntimeError):
        listed.chunk_map()
    full = repository.list_backups(tmp_path, NS, keep_chunks=True).backups[0].manifest
    assert len(full.chunk_map().chunks) == 3
    assert repository.load_backup(tmp_path, m.rel_path())[1].chunk_map() == m.chunk_map()


def test_backup_json_lists_one_chunk_per_line_and_reads_back_the_same() -> None:
    m = repository.build_manifest(clean(blocks_manifest()))
    data = m.to_bytes()
    lines = data.decode().splitlines()
    rows = [line.strip() for line in lines if line.strip().startswith("[") and line.strip().rstrip(",").endswith("]")]
    assert len(rows) == 3 and rows[0].startswith("[0, 4194304, \"")
    assert json.loads(data) == m.to_json_dict()
    assert repository.parse_manifest(data).chunk_map() == m.chunk_map()
    assert len(data) < 3000
