"""The pure parts of savepoint.storage: extent arithmetic, error mapping, ceph-csi parsing, checksums.

No cluster needed (tier ``unit``); exceptions are the real rados/rbd classes,
built the way the bindings build them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
import rados
import rbd as librbd
from savepoint.storage import errors, extents, sparse
from savepoint.storage.ceph import CephCredentials, monitor_endpoints, parse_csi_clusters, parse_csi_config
from savepoint.storage.extents import Extent
from savepoint.storage.rbd import (
    ImageRef,
    SnapshotInfo,
    feature_mask,
    feature_names,
    latest_snapshot,
    location_url,
    parse_location_url,
)

pytestmark = pytest.mark.unit

MiB = 1 << 20


# ---- extents ---------------------------------------------------------------


def test_merge_sorts_and_coalesces_touching_and_overlapping() -> None:
    assert extents.merge([(10, 5), (0, 10), (30, 0), (14, 6), (40, 1)]) == [Extent(0, 20), Extent(40, 1)]


def test_subtract_cuts_holes_and_edges() -> None:
    assert extents.subtract([(0, 100)], [(10, 10), (50, 100)]) == [Extent(0, 10), Extent(20, 30)]
    assert extents.subtract([(0, 10), (20, 10)], [(5, 20)]) == [Extent(0, 5), Extent(25, 5)]
    assert extents.subtract([(0, 10)], []) == [Extent(0, 10)]
    assert extents.subtract([(0, 10)], [(0, 10)]) == []


def test_split_aligns_to_chunk_boundaries() -> None:
    assert list(extents.split([(3, 10), (20, 2)], 8)) == [Extent(3, 5), Extent(8, 5), Extent(20, 2)]
    with pytest.raises(ValueError):
        list(extents.split([(0, 1)], 0))


def test_clip_drops_what_lies_beyond_the_limit() -> None:
    assert extents.clip([(0, 10), (8, 10), (30, 5)], 12) == [Extent(0, 12)]


# ---- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (librbd.ImageNotFound("gone", errno=2), errors.NotFound),
        (librbd.PermissionError("no", errno=1), errors.PermissionDenied),
        (rados.PermissionDeniedError("no", errno=13), errors.PermissionDenied),
        (librbd.ImageBusy("busy", errno=16), errors.Busy),
        (librbd.ReadOnlyImage("locked", errno=30), errors.Busy),
        (librbd.ImageExists("there", errno=17), errors.AlreadyExists),
        (librbd.ImageHasSnapshots("snaps", errno=39), errors.HasDependents),
        (librbd.DiskQuotaExceeded("full", errno=122), errors.QuotaExceeded),
        (rados.TimedOut("slow", errno=110), errors.Unreachable),
        (librbd.InvalidArgument("bad"), errors.InvalidArgument),  # no errno: by class name
        (librbd.IOError("io", errno=5), errors.StorageError),
    ],
)
def test_ceph_exceptions_map_to_storage_errors(exc: Exception, expected: type) -> None:
    err = errors.from_ceph(exc, "image rbd/vol")
    assert type(err) is expected
    assert err.message.startswith("image rbd/vol: ")
    assert err.reason  # every class has a condition reason


def test_ceph_errors_context_leaves_other_exceptions_alone() -> None:
    with pytest.raises(errors.NotFound, match="opening x"), errors.ceph_errors("opening x"):
        raise librbd.ImageNotFound("gone", errno=2)
    with pytest.raises(KeyError), errors.ceph_errors("opening x"):
        raise KeyError("not ceph")


# ---- ceph-csi configuration ------------------------------------------------------


def test_parse_csi_config() -> None:
    text = """[
      {"clusterID": "a", "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"]},
      {"clusterID": "b", "monitors": ["[v2:10.1.0.1:3300,v1:10.1.0.1:6789]"], "rbd": {"radosNamespace": "k8s"}}
    ]"""
    assert parse_csi_config(text) == {
        "a": ["10.0.0.1:6789", "10.0.0.2:6789"],
        "b": ["[v2:10.1.0.1:3300,v1:10.1.0.1:6789]"],
    }
    assert parse_csi_clusters(text)["b"].rbd_namespace == "k8s"
    assert parse_csi_clusters(text)["a"].rbd_namespace is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"clusterID": "a"}', "must be a JSON list"),
        ('[{"monitors": ["m:1"]}]', "clusterID missing"),
        ('[{"clusterID": "a", "monitors": []}]', "monitors"),
        ('[{"clusterID": "a", "monitors": ["m:1"]}, {"clusterID": "a", "monitors": ["m:2"]}]', "twice"),
    ],
)
def test_parse_csi_config_rejects_malformed(text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        parse_csi_config(text)


def test_credentials_from_csi_secret() -> None:
    creds = CephCredentials.from_csi_secret(["m:6789"], {"userID": b"csi-rbd", "userKey": "AQB=="})
    assert (creds.user_id, creds.key, creds.entity) == ("csi-rbd", "AQB==", "client.csi-rbd")
    assert "AQB" not in repr(creds)  # the key never lands in logs
    admin = CephCredentials.from_csi_secret(["m:6789"], {"adminID": "client.admin", "adminKey": "K"})
    assert admin.user_id == "admin"
    with pytest.raises(errors.ConfigError, match="userID"):
        CephCredentials.from_csi_secret(["m:6789"], {"userID": "x"})
    with pytest.raises(errors.ConfigError, match="monitors"):
        CephCredentials([], "x", "k")


def test_monitor_endpoints_understand_every_mon_host_form() -> None:
    assert monitor_endpoints(["10.0.0.1:6789", "[v2:1.2.3.4:3300,v1:1.2.3.4:6789]", "v1:5.6.7.8:6789/0"]) == [
        ("10.0.0.1", 6789), ("1.2.3.4", 3300), ("1.2.3.4", 6789), ("5.6.7.8", 6789)]
    assert monitor_endpoints(["[::1]:6789", "mon.example"]) == [
        ("::1", 6789), ("mon.example", 3300), ("mon.example", 6789)]


# ---- rbd decisions -------------------------------------------------------------


def _snap(snap_id: int, name: str, second: int = 0) -> SnapshotInfo:
    return SnapshotInfo(snap_id, name, MiB, dt.datetime(2026, 1, 1, 0, 0, second, tzinfo=dt.UTC), False)


def test_latest_snapshot_goes_by_creation_order_and_skips_savepoint_snapshots() -> None:
    snaps = [_snap(4, "a", 5), _snap(7, "b", 5), _snap(9, "savepoint-safety-x", 6)]  # a, b: same second
    assert latest_snapshot(snaps).name == "b"
    assert latest_snapshot(snaps, ignore_prefixes=()).name == "savepoint-safety-x"
    assert latest_snapshot(list(reversed(snaps))).name == "b"
    assert latest_snapshot([]) is None


def test_location_url_is_novas_direct_url() -> None:
    url = location_url("ac94b23f-fc72-49d1-a820-b2e1c2ab6b86", ImageRef("images", "isnap-1"), "snap")
    assert url == "rbd://ac94b23f-fc72-49d1-a820-b2e1c2ab6b86/images/isnap-1/snap"
    assert parse_location_url(url) == ("ac94b23f-fc72-49d1-a820-b2e1c2ab6b86", ImageRef("images", "isnap-1"), "snap")
    with pytest.raises(errors.InvalidArgument, match="namespace"):
        location_url("f", ImageRef("images", "i", "ns"), "snap")
    with pytest.raises(errors.InvalidArgument):
        parse_location_url("rbd://f/images/i")


def test_feature_names_round_trip() -> None:
    names = ("layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten")
    assert feature_names(feature_mask(names)) == names
    with pytest.raises(errors.InvalidArgument, match="frobnicate"):
        feature_mask(["frobnicate"])


# ---- checksums and zero runs -------------------------------------------------------


def test_content_checksum_ignores_how_zeros_are_fed() -> None:
    size = 3 * sparse.CHECKSUM_BLOCK + 12345  # a short last block
    data = os.urandom(70000)
    offset = sparse.CHECKSUM_BLOCK - 30000  # crosses a block boundary
    dense = bytearray(size)
    dense[offset : offset + len(data)] = data

    whole = sparse.ContentHasher(size)
    whole.update(0, bytes(dense))
    sparse_fed = sparse.ContentHasher(size)
    sparse_fed.update(offset, data)
    pieces = sparse.ContentHasher(size)
    pieces.update(offset - 100, bytes(100))
    pieces.update(offset, data[:10])
    pieces.update(offset + 10, data[10:])
    pieces.update(size - 5, bytes(5))
    assert whole.hexdigest() == sparse_fed.hexdigest() == pieces.hexdigest()

    empty = sparse.ContentHasher(size).hexdigest()
    assert empty != whole.hexdigest()
    assert empty != sparse.ContentHasher(size + 1).hexdigest()  # the size is part of the content
    assert empty.startswith("sp1-sha256:")


def test_content_checksum_format_is_stable() -> None:
    """Pin the format: checksums are stored in status and backup.json."""
    block = sparse.CHECKSUM_BLOCK
    size = block + 10
    outer = hashlib.sha256(f"sp1-sha256 size={size} block={block}\n".encode())
    outer.update(hashlib.sha256(b"x" + bytes(block - 1)).digest())
    outer.update(hashlib.sha256(bytes(10)).digest())
    hasher = sparse.ContentHasher(size)
    hasher.update(0, b"x")
    assert hasher.hexdigest() == f"sp1-sha256:{outer.hexdigest()}"


def test_content_hasher_refuses_going_back_or_past_the_end() -> None:
    hasher = sparse.ContentHasher(100)
    hasher.update(10, b"ab")
    with pytest.raises(ValueError):
        hasher.update(5, b"x")
    with pytest.raises(ValueError):
        hasher.update(99, b"xy")


def test_data_runs_skip_aligned_zero_grains() -> None:
    grain = sparse.ZERO_GRAIN
    data = bytearray(4 * grain)
    data[5] = 1
    data[2 * grain + grain - 1] = 1
    data[3 * grain] = 1
    assert sparse.data_runs(bytes(data), 0) == [Extent(0, grain), Extent(2 * grain, 2 * grain)]
    # grains are aligned to the image, not to the buffer
    assert sparse.data_runs(b"\x00" * 10 + b"\x01", grain - 10) == [Extent(grain, 1)]
    assert sparse.data_runs(bytes(grain * 2), 0) == []
