"""The mover's side of the request/result wire format, with the standard library only.

``savepoint.mover.request`` (pydantic) defines the format and is what the
operator builds and parses.  A mover process only needs the action's name
and params in, and a small JSON verdict out: importing pydantic for that
would cost most of a mover's start-up, so this module reads and writes the
same JSON by hand.  ``tests/unit/test_mover_wire.py`` checks that both sides
agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

TERMINATION_MESSAGE_LIMIT = 4096  # Kubernetes keeps at most 4096 bytes of a termination message


class BadRequest(ValueError):
    """The request is not a MoverRequest (first line: what is wrong)."""


@dataclass(frozen=True)
class Request:
    """What a mover needs of a ``MoverRequest``: the action and its params."""

    action: str
    params: dict[str, Any]


def parse_request(raw: str) -> Request:
    """``MoverRequest.to_env()`` text -> Request; ``BadRequest`` when it is not one."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"SAVEPOINT_MOVER_REQUEST is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("SAVEPOINT_MOVER_REQUEST must be a JSON object")
    action, params = doc.get("action"), doc.get("params", {})
    if not isinstance(action, str) or not action:
        raise BadRequest("SAVEPOINT_MOVER_REQUEST: action must be a non-empty string")
    if not isinstance(params, dict):
        raise BadRequest("SAVEPOINT_MOVER_REQUEST: params must be an object")
    return Request(action, params)


@dataclass
class Result:
    """A ``MoverResult`` (same fields, same JSON)."""

    ok: bool
    reason: str | None = None
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    bytes_read: int | None = None  # bytes the mover read through librbd/the file system
    bytes_written: int | None = None  # bytes it wrote (data, not zeroed ranges)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "reason": self.reason, "message": self.message, "data": self.data,
                               "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}
        return {k: v for k, v in out.items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"), ensure_ascii=False, default=str)


def termination_message(result: dict[str, Any]) -> str:
    """The JSON of a result (None fields left out), at most 4 KiB: too big, the verdict stays and the
    detail goes (``data: {"truncated": true}``) rather than cutting JSON in half."""
    compact = {k: v for k, v in result.items() if v is not None}
    text = json.dumps(compact, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    slim = {"ok": compact.get("ok", False),
            "reason": compact.get("reason") or ("ResultTooLarge" if not compact.get("ok") else None),
            "message": str(compact.get("message") or "")[:1024], "data": {"truncated": True},
            "bytes_read": compact.get("bytes_read"), "bytes_written": compact.get("bytes_written")}
    return json.dumps({k: v for k, v in slim.items() if v is not None}, separators=(",", ":"), ensure_ascii=False)
