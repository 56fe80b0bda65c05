"""Mover actions by name.  Each action is a plain function of its params.

A mover process runs one action, so only that action's module is imported
(``BUILTIN_ACTIONS`` maps each name to its module): an ``rbd-copy`` does not
pay for the repository code (pydantic) that the backup actions need.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Protocol


class ProgressFn(Protocol):
    def __call__(self, done: int, total: int, *, files: int | None = None) -> None: ...


@dataclasses.dataclass
class ActionContext:
    """What an action gets besides its params."""

    progress: ProgressFn
    ceph: dict[str, Any] | None = None  # monitors/user_id/key when the request needs Ceph


class ActionFailed(Exception):
    """An expected failure with a reason a user can act on (not a crash)."""

    def __init__(self, reason: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.data = data or {}


Action = Callable[[dict[str, Any], ActionContext], dict[str, Any]]
_ACTIONS: dict[str, Action] = {}

# Every built-in action and the module that registers it with @action; a test checks both directions.
BUILTIN_ACTIONS: dict[str, str] = {
    "blocks-backup": "savepoint.mover.blocks",
    "blocks-restore": "savepoint.mover.blocks",
    "blocks-verify": "savepoint.mover.blocks",
    "blocks-delete": "savepoint.mover.blocks",
    "checksum-tree": "savepoint.mover.checksum",
    "rbd-copy": "savepoint.mover.rbdcopy",
    "rbd-flatten": "savepoint.mover.rbdflatten",
    "files-backup": "savepoint.mover.files",
    "files-restore": "savepoint.mover.files",
    "files-verify": "savepoint.mover.files",
    "repository-delete": "savepoint.mover.files",
    "repository-list": "savepoint.mover.files",
}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        if name in _ACTIONS:
            raise ValueError(f"mover action {name!r} registered twice")
        _ACTIONS[name] = fn
        return fn

    return register


def get(name: str) -> Action | None:
    """The action ``name``, importing only the module that defines it."""
    if name not in _ACTIONS and name in BUILTIN_ACTIONS:
        importlib.import_module(BUILTIN_ACTIONS[name])
    return _ACTIONS.get(name)


def names() -> list[str]:
    """Every action's name, without importing any of them."""
    return sorted(set(BUILTIN_ACTIONS) | set(_ACTIONS))


def load_all() -> None:
    """Import every built-in action module (for tests and tools that list what is registered)."""
    for module in sorted(set(BUILTIN_ACTIONS.values())):
        importlib.import_module(module)
