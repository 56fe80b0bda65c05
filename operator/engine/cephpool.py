"""One Ceph connection per cluster and user, shared by every action of the operator.

Connecting costs monitor round trips and a cephx handshake (tens of milliseconds, more on a
busy monitor); an action runs several steps and the operator many actions at once, and
librados connections are thread-safe.  So the operator keeps one connection per (monitors,
user, key) -- a changed key in the ceph-csi Secret is a new entry -- and retires the least
recently used beyond ``MAX_CONNECTIONS``.  A retired connection is shut down when its last
user leaves, never under one: librados aborts the process when a handle is shut down while
another thread still uses it.  Movers, one process per Job, connect on their own.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from typing import Any, Iterator

from savepoint.storage import ceph

MAX_CONNECTIONS = 8


@dataclasses.dataclass
class _Entry:
    stack: contextlib.ExitStack
    cluster: Any
    users: int = 0
    retired: bool = False


_lock = threading.Lock()
_pool: collections.OrderedDict[tuple[Any, ...], _Entry] = collections.OrderedDict()


def _key(creds: ceph.CephCredentials) -> tuple[Any, ...]:
    return (tuple(creds.monitors), creds.user_id, creds.key)


@contextlib.contextmanager
def session(creds: ceph.CephCredentials) -> Iterator[Any]:
    """The shared connected ``rados.Rados`` for ``creds`` (not shut down on exit: others use it)."""
    key = _key(creds)
    to_close: list[contextlib.ExitStack] = []  # closed outside the lock: a shutdown takes a while
    with _lock:
        entry = _pool.get(key)
        if entry is not None:
            _pool.move_to_end(key)
            entry.users += 1
    if entry is None:
        stack = contextlib.ExitStack()
        cluster = stack.enter_context(ceph.connect(creds))  # raises Unreachable/PermissionDenied as connect does
        with _lock:
            if key in _pool:  # another thread connected meanwhile: keep one
                to_close.append(stack)
                entry = _pool[key]
                _pool.move_to_end(key)
            else:
                entry = _pool[key] = _Entry(stack, cluster)
                while len(_pool) > MAX_CONNECTIONS:
                    _, old = _pool.popitem(last=False)
                    old.retired = True  # out of the pool; shut down now only if nobody uses it
                    if old.users == 0:
                        to_close.append(old.stack)
            entry.users += 1
    for idle in to_close:
        idle.close()
    try:
        yield entry.cluster
    finally:
        with _lock:
            entry.users -= 1
            last = entry.retired and entry.users == 0
        if last:
            entry.stack.close()
