"""One Ceph connection per cluster and user, shared by every action of the operator.

Connecting costs monitor round trips and a cephx handshake (tens of milliseconds, more on a
busy monitor); an action runs several steps and the operator many actions at once, and
librados connections are thread-safe.  So the operator keeps one connection per (monitors,
user, key) -- a changed key in the ceph-csi Secret is a new entry -- and closes the least
recently used beyond ``MAX_CONNECTIONS``.  Movers, one process per Job, connect on their own.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Iterator

from savepoint.storage import ceph

MAX_CONNECTIONS = 8

_lock = threading.Lock()
_pool: collections.OrderedDict[tuple[Any, ...], tuple[contextlib.ExitStack, Any]] = collections.OrderedDict()


def _key(creds: ceph.CephCredentials) -> tuple[Any, ...]:
    return (tuple(creds.monitors), creds.user_id, creds.key)


@contextlib.contextmanager
def session(creds: ceph.CephCredentials) -> Iterator[Any]:
    """The shared connected ``rados.Rados`` for ``creds`` (not shut down on exit: others use it)."""
    key = _key(creds)
    with _lock:
        entry = _pool.get(key)
        if entry is not None:
            _pool.move_to_end(key)
    if entry is None:
        stack = contextlib.ExitStack()
        cluster = stack.enter_context(ceph.connect(creds))  # raises Unreachable/PermissionDenied as connect does
        with _lock:
            if key in _pool:  # another thread connected meanwhile: keep one
                stack.close()
                entry = _pool[key]
            else:
                entry = _pool[key] = (stack, cluster)
                while len(_pool) > MAX_CONNECTIONS:
                    _, (old, _c) = _pool.popitem(last=False)
                    old.close()
    yield entry[1]


def close_all() -> None:
    with _lock:
        while _pool:
            _, (stack, _c) = _pool.popitem()
            stack.close()
