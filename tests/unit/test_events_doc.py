"""docs/events.md documents every reason the operator can post or write.

Collected from the code, not from a list kept by hand:

- every member of ``savepoint.api.Reason`` (condition and Event reasons);
- the end Events ``<Verb>Succeeded`` / ``<Verb>Failed`` (``FlowContext._event_reason``);
- every string literal given as the reason of ``ctx.event``, ``ctx.fail``,
  ``ctx.wait``, ``ctx.set_phase``, ``ctx.succeed``, ``Wait``, ``RefusedError``,
  ``ActionFailed``, ``MoverRefused`` and ``MoverResult(reason=...)`` anywhere in
  operator/ (AST, so comments and other strings do not count);
- the ``reason`` class attributes of the storage errors (they reach conditions).

A reason counts as documented when it appears in backticks in docs/events.md.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from savepoint.api import KINDS, Reason

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "events.md").read_text()
# call name -> index of its reason argument
REASON_ARG = {"event": 1, "fail": 0, "wait": 0, "set_phase": 1, "succeed": 1, "Wait": 0, "RefusedError": 0,
              "ActionFailed": 0, "MoverRefused": 0}


def _literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason":
        return str(Reason[node.attr])
    return None


def reasons_in_code() -> dict[str, str]:
    """reason -> where it was found."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "operator").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                index = REASON_ARG.get(name or "")
                if index is not None and len(node.args) > index:
                    value = _literal(node.args[index])
                    if value:
                        found.setdefault(value, where)
                for kw in node.keywords:
                    if kw.arg == "reason" and name in ("MoverResult", "MoverRefused", "ActionFailed", "RefusedError"):
                        for sub in ast.walk(kw.value):
                            value = _literal(sub)
                            if value and re.fullmatch(r"[A-Z][A-Za-z]+", value):
                                found.setdefault(value, where)
            elif isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                            and getattr(stmt.targets[0], "id", None) == "reason"):
                        value = _literal(stmt.value)
                        if value:
                            found.setdefault(value, where)
    return found


def documented() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Za-z]+)`", DOC))


def test_every_reason_enum_member_is_documented() -> None:
    missing = [str(r) for r in Reason if str(r) not in documented()]
    assert not missing, f"add to docs/events.md: {missing}"


def test_end_events_of_every_kind_are_documented() -> None:
    import inspect

    from savepoint.engine.context import FlowContext

    source = inspect.getsource(FlowContext._event_reason)
    verbs = dict(re.findall(r'"(\w+)": "(\w+)"', source))
    assert set(verbs) == {k.crd.kind for k in KINDS if k.crd.immutable_spec}  # the one-shot kinds end with Events
    missing = [f"{verb}{outcome}" for verb in verbs.values() for outcome in ("Succeeded", "Failed")
               if f"{verb}{outcome}" not in documented()]
    assert not missing, f"add to docs/events.md: {missing}"


def test_every_reason_in_the_code_is_documented() -> None:
    found = reasons_in_code()
    assert "RevertStarted" in found and "PrivilegedMoverNotAllowed" in found, "the collector finds nothing?"
    missing = {reason: where for reason, where in found.items() if reason not in documented()}
    assert not missing, f"add to docs/events.md: {missing}"
