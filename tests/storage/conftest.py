"""Fixtures for the storage tier: connections to the sandbox's real Ceph and throw-away images.

Credentials come the way the operator gets them from ceph-csi: monitors plus
the rbd-profile user's id and key (``sandboxlib.ceph.csi_credentials``).
Every image a test makes has a unique name and is removed afterwards, with
its snapshots, so tests can run in any order against one long-lived cluster.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
import rados
from sandboxlib import ceph as sandbox_ceph
from sandboxlib.config import Config
from savepoint.storage import rbd
from savepoint.storage.ceph import CephCredentials, connect

MiB = 1 << 20
RBD_POOL = "rbd"
IMAGES_POOL = "images"


@pytest.fixture(scope="session")
def ceph_creds(ceph: Config) -> CephCredentials:
    """The sandbox's ceph-csi user (``profile rbd``), as monitors + userID + userKey."""
    user_id, key = sandbox_ceph.csi_credentials(ceph)
    return CephCredentials(monitors=sandbox_ceph.monitors(ceph), user_id=user_id, key=key)


@pytest.fixture(scope="session")
def cluster(ceph_creds: CephCredentials) -> Iterator[rados.Rados]:
    """One connection for the whole session, as the operator keeps one."""
    with connect(ceph_creds) as handle:
        yield handle


@pytest.fixture
def other_cluster(ceph_creds: CephCredentials) -> Iterator[rados.Rados]:
    """A second, independent client: another process's view (watchers, locks)."""
    with connect(ceph_creds) as handle:
        yield handle


ImageFactory = Callable[..., rbd.ImageRef]


@pytest.fixture
def make_image(cluster: rados.Rados) -> Iterator[ImageFactory]:
    """``make_image(pool="rbd", size=8 MiB, features=None, create=True) -> ImageRef``, removed after the test.

    ``create=False`` only reserves a unique name (for clones and copies the
    code under test creates); it is cleaned up all the same.  Removal runs
    newest first, so clones go before their parents.
    """
    made: list[rbd.ImageRef] = []

    def factory(
        pool: str = RBD_POOL, size: int = 8 * MiB, features: rbd.Features = None, create: bool = True
    ) -> rbd.ImageRef:
        ref = rbd.ImageRef(pool, f"test-{uuid.uuid4().hex[:12]}")
        made.append(ref)
        if create:
            rbd.create_image(cluster, ref, size, features=features)
        return ref

    yield factory
    for ref in reversed(made):
        rbd.remove_image(cluster, ref, purge_snapshots=True)


@pytest.fixture
def readonly_creds(ceph: Config) -> Iterator[CephCredentials]:
    """A cephx user that may read pool ``images`` (and use ``rbd``), created with the admin CLI."""
    env = {**os.environ, **sandbox_ceph.admin_env(ceph)}
    user = f"savepoint-ro-{uuid.uuid4().hex[:8]}"
    caps = ["mon", "profile rbd", "osd", f"profile rbd-read-only pool={IMAGES_POOL}, profile rbd pool={RBD_POOL}"]
    key = subprocess.run(
        ["ceph", "auth", "get-or-create-key", f"client.{user}", *caps],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    try:
        yield CephCredentials(monitors=sandbox_ceph.monitors(ceph), user_id=user, key=key)
    finally:
        subprocess.run(["ceph", "auth", "del", f"client.{user}"], env=env, check=False,
                       capture_output=True, timeout=60)
