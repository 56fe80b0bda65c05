"""The fix of kopf's namespace observation (savepoint.kube.kopf_namespaces) on the kopf installed here:
a namespace in the watch's own listing is served, as one in an event is. The end-to-end proof (namespaces
made while an operator starts) is tests/e2e/test_operator_runtime.py."""

from __future__ import annotations

import asyncio

import pytest

from savepoint.kube.kopf_namespaces import serve_namespaces_of_every_listing

pytestmark = pytest.mark.unit


def namespace(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}}


def test_a_namespace_in_a_relisting_is_served_and_one_deleted_is_not() -> None:
    assert serve_namespaces_of_every_listing(), "this kopf is not the one the fix knows"
    assert serve_namespaces_of_every_listing(), "applying it twice is harmless"
    from kopf._cogs.structs import references
    from kopf._core.reactor import observation

    insights = references.Insights()

    async def seen(event_type: str | None, body: dict[str, object]) -> set[str | None]:
        await observation.process_discovered_namespace_event(
            raw_event={"type": event_type, "object": body}, namespaces=["team-*"], insights=insights)
        return set(insights.namespaces)

    async def story() -> None:
        assert await seen(None, namespace("team-a")) == {"team-a"}  # kopf 1.45.2 alone: set()
        assert await seen(None, namespace("kube-system")) == {"team-a"}  # not a pattern's
        assert await seen("ADDED", namespace("team-b")) == {"team-a", "team-b"}
        assert await seen("DELETED", namespace("team-a")) == {"team-b"}

    asyncio.run(story())
