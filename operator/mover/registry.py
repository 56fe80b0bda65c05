"""Mover actions by name.  Each action is a plain function of its params."""

from __future__ import annotations

import dataclasses
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


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        if name in _ACTIONS:
            raise ValueError(f"mover action {name!r} registered twice")
        _ACTIONS[name] = fn
        return fn

    return register


def get(name: str) -> Action | None:
    _load_builtin_actions()
    return _ACTIONS.get(name)


def names() -> list[str]:
    _load_builtin_actions()
    return sorted(_ACTIONS)


def _load_builtin_actions() -> None:
    # Imported for their @action side effect; late, so a mover only pays for
    # what exists and the registry module has no import cycle.
    from savepoint.mover import blocks, checksum, files, rbdcopy, rbdflatten  # noqa: F401
