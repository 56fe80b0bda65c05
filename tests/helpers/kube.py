"""Small, honest waiting helpers for end-to-end tests: watches, never sleeps."""

from __future__ import annotations

import time
from typing import Any, Callable

from kubernetes import client, watch

GROUP, VERSION = "savepoint.dev", "v1alpha1"


def wait_custom(api: client.CustomObjectsApi, namespace: str, plural: str, name: str,
                done: Callable[[dict[str, Any]], bool], timeout: float = 120, group: str = GROUP,
                version: str = VERSION) -> dict[str, Any]:
    """Watch one custom object until ``done(obj)``; returns it.  Fails with its last status."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        objs = api.list_namespaced_custom_object(group, version, namespace, plural,
                                                 field_selector=f"metadata.name={name}")
        for obj in objs["items"]:
            last = obj
            if done(obj):
                return obj
        w = watch.Watch()
        remaining = max(1, int(deadline - time.monotonic()))
        for event in w.stream(api.list_namespaced_custom_object, group, version, namespace, plural,
                              field_selector=f"metadata.name={name}", resource_version=objs["metadata"]["resourceVersion"],
                              timeout_seconds=min(remaining, 30)):
            last = event["object"]
            if event["type"] != "DELETED" and done(last):
                w.stop()
                return last
    raise AssertionError(f"{plural}/{name} did not get there in {timeout}s; last status: {last.get('status')}")


def phase_in(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def ready_reason(obj: dict[str, Any]) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("reason")
    return None


def reason_is(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: ready_reason(obj) == reason


def wait_gone(read: Callable[[], Any], timeout: float = 60) -> None:
    """Poll a read until it 404s (deletions have no watchable end state for one object)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            read()
        except client.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.2)
    raise AssertionError(f"still there after {timeout}s")
