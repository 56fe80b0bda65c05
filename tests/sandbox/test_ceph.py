"""The sandbox's Ceph is real: RBD through python-rbd with the ceph-csi style credentials."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

rados = pytest.importorskip("rados")
rbd = pytest.importorskip("rbd")

from sandboxlib import ceph as sandbox_ceph  # noqa: E402  (conftest puts hack/ on the path)
from sandboxlib.config import Config  # noqa: E402

pytestmark = pytest.mark.storage

MiB = 1 << 20
ORIGINAL = b"savepoint-original".ljust(4096, b".")
CHANGED = b"savepoint-changed!".ljust(4096, b"#")


@pytest.fixture(scope="module")
def cluster(ceph: Config) -> Iterator[rados.Rados]:
    """Connected the way ceph-csi connects: monitor list + userID/userKey, no ceph.conf."""
    user, key = sandbox_ceph.csi_credentials(ceph)
    conn = rados.Rados(rados_id=user, conf={"mon_host": ",".join(sandbox_ceph.monitors(ceph)), "key": key})
    conn.connect(timeout=10)
    yield conn
    conn.shutdown()


@contextmanager
def ioctx(cluster: rados.Rados, pool: str) -> Iterator[rados.Ioctx]:
    ctx = cluster.open_ioctx(pool)
    try:
        yield ctx
    finally:
        ctx.close()


def _remove_image(ctx: rados.Ioctx, name: str) -> None:
    """Remove an image and its snapshots (unprotecting them first)."""
    try:
        with rbd.Image(ctx, name) as image:
            for snap in list(image.list_snaps()):
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
    except rbd.ImageNotFound:
        return
    rbd.RBD().remove(ctx, name)


@contextmanager
def new_image(ctx: rados.Ioctx, size: int = 64 * MiB) -> Iterator[str]:
    """A fresh image with the cluster's default features, removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    rbd.RBD().create(ctx, name, size)
    try:
        yield name
    finally:
        _remove_image(ctx, name)


def test_credentials_are_ceph_csi_shaped(ceph: Config) -> None:
    user, key = sandbox_ceph.csi_credentials(ceph)
    assert user == "savepoint" and not user.startswith("client.")
    assert len(key) == 40 and key.endswith("==")
    assert sandbox_ceph.monitors(ceph) == [f"v1:127.0.0.1:{ceph.ceph_mon_port + 1}"]
    assert len(sandbox_ceph.fsid(ceph)) == 36


def test_default_features_include_fast_diff(cluster: rados.Rados) -> None:
    with ioctx(cluster, "rbd") as ctx, new_image(ctx) as name, rbd.Image(ctx, name) as image:
        features = image.features()
    for flag in ("LAYERING", "EXCLUSIVE_LOCK", "OBJECT_MAP", "FAST_DIFF", "DEEP_FLATTEN"):
        assert features & getattr(rbd, f"RBD_FEATURE_{flag}"), flag


def test_snapshot_rollback_restores_data(cluster: rados.Rados) -> None:
    with ioctx(cluster, "rbd") as ctx, new_image(ctx) as name, rbd.Image(ctx, name) as image:
        image.write(ORIGINAL, 8 * MiB)
        image.create_snap("before")
        image.write(CHANGED, 8 * MiB)
        assert image.read(8 * MiB, len(CHANGED)) == CHANGED
        image.rollback_to_snap("before")
        assert image.read(8 * MiB, len(ORIGINAL)) == ORIGINAL


def test_clone_into_images_pool_and_flatten(cluster: rados.Rados) -> None:
    clone = f"clone-{uuid.uuid4().hex[:8]}"
    with ioctx(cluster, "rbd") as src, ioctx(cluster, "images") as dst, new_image(src) as name:
        with rbd.Image(src, name) as image:
            image.write(ORIGINAL, 0)
            image.create_snap("snap")
            image.protect_snap("snap")
        try:
            rbd.RBD().clone(src, name, "snap", dst, clone)
            with rbd.Image(dst, clone) as child:
                assert child.parent_info()[:3] == ("rbd", name, "snap")
                child.flatten()
                with pytest.raises(rbd.ImageNotFound):
                    child.parent_info()
                assert child.read(0, len(ORIGINAL)) == ORIGINAL
        finally:
            _remove_image(dst, clone)
