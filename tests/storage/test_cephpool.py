"""The operator's shared Ceph connections, against the sandbox's real Ceph.

librados aborts the whole process (std::system_error, SIGABRT) when a handle is shut down while another
thread still uses it, so the pool must never close a connection under a user, even when it retires it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from savepoint.engine import cephpool
from savepoint.storage.ceph import CephCredentials

pytestmark = pytest.mark.storage


@pytest.fixture
def pool_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A pool that keeps one connection, emptied (and its connections shut down) afterwards."""
    monkeypatch.setattr(cephpool, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(cephpool, "_pool", type(cephpool._pool)())
    yield
    for entry in cephpool._pool.values():
        entry.stack.close()


def test_one_connection_per_user_is_shared(pool_of_one: None, ceph_creds: CephCredentials) -> None:
    with cephpool.session(ceph_creds) as first, cephpool.session(ceph_creds) as second:
        assert first is second
    with cephpool.session(ceph_creds) as again:
        assert again is first and again.state == "connected"


def test_a_retired_connection_is_shut_down_only_when_its_last_user_leaves(
        pool_of_one: None, ceph_creds: CephCredentials, readonly_creds: CephCredentials) -> None:
    with cephpool.session(ceph_creds) as busy:
        with cephpool.session(readonly_creds) as newer:  # the pool holds one: ``busy`` is retired
            assert newer is not busy
        assert busy.state == "connected", "retired while in use: shut down under its user"
        assert busy.get_fsid()  # and still answers
    assert busy.state == "shutdown", "a retired connection must be closed once nobody uses it"
    with cephpool.session(readonly_creds) as kept:
        assert kept is newer and kept.state == "connected"
