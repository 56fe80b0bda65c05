"""Storage errors that callers can turn into condition reasons.

librados and librbd report failures as errno-carrying exceptions of two
unrelated class trees (``rados.Error`` and ``rbd.Error``).  Handlers should not
care which library failed, only what it means for the user: the thing is
missing, we may not touch it, someone else holds it, the cluster is not
answering.  ``from_ceph`` maps both trees (by errno first, class name second)
onto one small hierarchy; each class carries a CamelCase ``reason`` ready for
``status.conditions``.

Pure Python on purpose: no rados/rbd import, so the mapping is unit-testable
anywhere and this module is safe to import from models and handlers.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class StorageError(Exception):
    """A storage operation failed; ``reason`` is a condition reason, ``message`` says what and where."""

    reason = "StorageError"

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno


class NotFound(StorageError):
    """Pool, namespace, image or snapshot does not exist (ENOENT)."""

    reason = "NotFound"


class PermissionDenied(StorageError):
    """The Ceph user's caps do not allow the operation (EPERM/EACCES)."""

    reason = "PermissionDenied"


class Busy(StorageError):
    """Another client holds the image (lock, watch, open handle) (EBUSY); may change later."""

    reason = "VolumeBusy"


class AlreadyExists(StorageError):
    """The image or snapshot to create exists already (EEXIST)."""

    reason = "AlreadyExists"


class HasDependents(StorageError):
    """Image has snapshots, or a snapshot has clones, so it cannot be removed (ENOTEMPTY)."""

    reason = "HasDependents"


class QuotaExceeded(StorageError):
    """Pool quota or cluster space exhausted (EDQUOT/ENOSPC)."""

    reason = "QuotaExceeded"


class Unsupported(StorageError):
    """The image lacks a feature the operation needs (e.g. exclusive-lock), or librbd lacks the call."""

    reason = "Unsupported"


class InvalidArgument(StorageError):
    """Ceph refused the request as malformed (EINVAL/ERANGE), e.g. an offset beyond the image."""

    reason = "InvalidArgument"


class SizeMismatch(StorageError):
    """Source and destination sizes do not fit together."""

    reason = "SizeMismatch"


class Unreachable(StorageError):
    """The cluster did not answer in time (timeout, no monitor reachable, auth handshake failed)."""

    reason = "CephUnreachable"


class VerifyFailed(StorageError):
    """Data read back after a copy differs from what was read from the source."""

    reason = "VerifyFailed"


class ConfigError(StorageError):
    """ceph-csi configuration (config.json, Secret) is malformed or lacks the cluster."""

    reason = "InvalidCephConfig"


_BY_ERRNO: dict[int, type[StorageError]] = {
    _errno.ENOENT: NotFound,
    _errno.EPERM: PermissionDenied,
    _errno.EACCES: PermissionDenied,
    _errno.EBUSY: Busy,
    _errno.EROFS: Busy,  # librbd: the exclusive lock is held (explicitly) by another client
    _errno.EEXIST: AlreadyExists,
    _errno.ENOTEMPTY: HasDependents,
    _errno.EDQUOT: QuotaExceeded,
    _errno.ENOSPC: QuotaExceeded,
    _errno.EOPNOTSUPP: Unsupported,
    _errno.ENOSYS: Unsupported,
    _errno.EINVAL: InvalidArgument,
    _errno.ERANGE: InvalidArgument,
    _errno.ETIMEDOUT: Unreachable,
    _errno.ENOTCONN: Unreachable,
    _errno.ESHUTDOWN: Unreachable,
}

# Some exceptions are raised by the Python bindings themselves without an
# errno (e.g. rbd.InvalidArgument for a bad argument type); fall back to names.
_BY_NAME: dict[str, type[StorageError]] = {
    "ObjectNotFound": NotFound,
    "ImageNotFound": NotFound,
    "PermissionError": PermissionDenied,
    "PermissionDeniedError": PermissionDenied,
    "ImageBusy": Busy,
    "ObjectBusy": Busy,
    "ImageExists": AlreadyExists,
    "ObjectExists": AlreadyExists,
    "ImageHasSnapshots": HasDependents,
    "NoSpace": QuotaExceeded,
    "DiskQuotaExceeded": QuotaExceeded,
    "FunctionNotSupported": Unsupported,
    "OperationNotSupported": Unsupported,
    "InvalidArgument": InvalidArgument,
    "InvalidArgumentError": InvalidArgument,
    "ArgumentOutOfRange": InvalidArgument,
    "ReadOnlyImage": Busy,
    "TimedOut": Unreachable,
    "Timeout": Unreachable,
    "InterruptedOrTimeoutError": Unreachable,
    "ConnectionShutdown": Unreachable,
    "NotConnected": Unreachable,
}


def _errno_of(exc: BaseException) -> int | None:
    value = getattr(exc, "errno", None)
    if isinstance(value, int) and value != 0:
        return abs(value)  # librbd sometimes reports -errno
    return None


def from_ceph(exc: BaseException, what: str) -> StorageError:
    """The StorageError for a rados/rbd exception; ``what`` names the object ("image rbd/vol1")."""
    if isinstance(exc, StorageError):
        return exc
    code = _errno_of(exc)
    cls = _BY_ERRNO.get(code) if code is not None else None
    if cls is None:
        cls = _BY_NAME.get(type(exc).__name__, StorageError)
    detail = str(exc) or type(exc).__name__
    err_name = f" ({_errno.errorcode[code]})" if code is not None and code in _errno.errorcode else ""
    return cls(f"{what}: {detail}{err_name}", errno=code)


def is_ceph_error(exc: BaseException) -> bool:
    """True for exceptions of the rados/rbd bindings (without importing them)."""
    return type(exc).__module__ in ("rados", "rbd")


@contextmanager
def ceph_errors(what: str) -> Iterator[None]:
    """Re-raise rados/rbd exceptions inside the block as StorageError naming ``what``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if is_ceph_error(exc):
            raise from_ceph(exc, what) from exc
        raise


def from_errno(code: int, what: str) -> StorageError:
    """The StorageError for a negative or positive errno (aio completions report only a return value)."""
    code = abs(code)
    cls = _BY_ERRNO.get(code, StorageError)
    name = _errno.errorcode.get(code, str(code))
    return cls(f"{what}: {os.strerror(code)} ({name})", errno=code)
