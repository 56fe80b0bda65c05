"""Asking the operator to reset a volume's Savepoint state through the API (pure, no Kubernetes calls).

``kubectl savepoint reset-state`` writes a request annotation on the object
(a PVC, a VolumeSnapshot or a ShareBackup); the operator
(``savepoint.handlers.reset``) answers it: it clears ``savepoint.dev/state``
(and a dead holder's lock; a live holder's only when forced), removes the
request and writes the outcome in a result annotation, in one conditional
write, and posts an Event. So the plugin needs neither librados nor rights
on ``status``, and it works the same from a laptop as in the cluster.

Request ``savepoint.dev/reset-requested: {"id": "<id>", "force": false}``;
answer ``savepoint.dev/reset-result: {"id": "<id>", "ok": true, "cleared": "error", "message": "..."}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

REQUEST = "savepoint.dev/reset-requested"
RESULT = "savepoint.dev/reset-result"
MAX_MESSAGE = 1000  # a result must fit comfortably in an annotation (256 KiB for all of them)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


class BadRequest(ValueError):
    """The request annotation is not what the plugin writes (someone typed it by hand)."""


@dataclasses.dataclass(frozen=True)
class Request:
    id: str
    force: bool = False

    def to_annotation(self) -> str:
        return json.dumps({"id": self.id, "force": self.force}, separators=(",", ":"))


def parse_request(value: str) -> Request:
    """The request in an annotation value; bounded and typed, since a tenant wrote it."""
    if len(value) > 200:
        raise BadRequest(f"{REQUEST}: longer than 200 characters")
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or set(data) - {"id", "force"}:
        raise BadRequest(f'{REQUEST}: expected {{"id": "<id>", "force": false}}, got {value[:80]!r}')
    rid, force = data.get("id"), data.get("force", False)
    if not isinstance(rid, str) or not _ID.match(rid):
        raise BadRequest(f"{REQUEST}: id must be 1-63 letters, digits or '-'")
    if not isinstance(force, bool):
        raise BadRequest(f"{REQUEST}: force must be true or false")
    return Request(rid, force)


@dataclasses.dataclass(frozen=True)
class Result:
    id: str
    ok: bool
    message: str
    cleared: str | None = None  # the state removed ("" when only a dead holder's lock went); None: nothing to reset

    def to_annotation(self) -> str:
        body: dict[str, Any] = {"id": self.id, "ok": self.ok, "message": self.message[:MAX_MESSAGE]}
        if self.cleared is not None:
            body["cleared"] = self.cleared
        return json.dumps(body, separators=(",", ":"))


def parse_result(value: str | None) -> Result | None:
    """The operator's answer (None when absent or unreadable)."""
    if not value:
        return None
    try:
        data = json.loads(value)
        return Result(str(data["id"]), bool(data["ok"]), str(data.get("message", "")),
                      data.get("cleared") if isinstance(data.get("cleared"), str) else None)
    except (ValueError, KeyError, TypeError):
        return None
