"""What a tenant can write is input, not authority: annotations, status read back, deadlines, pools."""

from __future__ import annotations

import json
import logging

import pytest

from savepoint.kube import k8s
from savepoint.engine.context import FlowContext
from savepoint.flows import formats
from savepoint.settings import Settings

pytestmark = pytest.mark.unit

OTHER = {"nfs": {"server": "nfs.example", "path": "/other-teams"}}
DEFAULT = {"nfs": {"server": "nfs.example", "path": "/backups"}}


def _ctx(namespace: str = "team-a", settings: Settings | None = None, spec: dict | None = None) -> FlowContext:
    owner = k8s.Owner("ShareBackup", namespace, "b", "uid-1")
    return FlowContext(owner=owner, generation=1, spec=spec or {}, status={},
                       settings=settings or Settings(default_repository=DEFAULT, raw_reference_namespaces="admin-*"),
                       logger=logging.getLogger("test"))


def _backup(status: dict | None = None, annotation: dict | None = None) -> dict:
    meta: dict = {"name": "b"}
    if annotation is not None:
        meta["annotations"] = {formats.ANN_REPOSITORY: json.dumps(annotation)}
    return {"metadata": meta, "status": status or {}}


def test_the_operators_status_record_decides_the_repository() -> None:
    recorded = formats.recorded_repository(_ctx(), _backup({"repository": DEFAULT}, annotation=OTHER))
    assert recorded is not None and recorded.ref == DEFAULT


def test_an_annotation_naming_a_raw_export_is_ignored_in_a_tenant_namespace() -> None:
    assert formats.recorded_repository(_ctx(), _backup(annotation=OTHER)) is None


def test_an_annotation_is_accepted_where_a_spec_field_would_be() -> None:
    assert formats.recorded_repository(_ctx(), _backup(annotation=DEFAULT)).ref == DEFAULT  # the default
    claim = {"persistentVolumeClaim": {"name": "repo"}}
    assert formats.recorded_repository(_ctx(), _backup(annotation=claim)).ref == claim  # own namespace's claim
    assert formats.recorded_repository(_ctx("admin-1"), _backup(annotation=OTHER)).ref == OTHER  # raw allowed
    assert formats.recorded_repository(_ctx(), _backup(annotation={"nope": 1})) is None


def test_a_deadline_is_capped_by_the_setting() -> None:
    settings = Settings(max_deadline_seconds=3600)
    assert _ctx(settings=settings, spec={"deadlineSeconds": 10 ** 6}).deadline_seconds == 3600
    assert _ctx(settings=settings, spec={"deadlineSeconds": 60}).deadline_seconds == 60


def test_image_pools_a_tenant_may_write_to() -> None:
    settings = Settings(image_pool="images", image_pools="golden, images", raw_reference_namespaces="admin-*")
    assert settings.image_pools_allowed() == ["images", "golden"]
    assert settings.image_pool_allowed("team-a", "golden")
    assert not settings.image_pool_allowed("team-a", "rbd"), "the volumes' own pool is not an image pool"
    assert settings.image_pool_allowed("admin-x", "rbd")


def test_served_namespaces() -> None:
    assert Settings().serves("anything")
    settings = Settings(watch_namespaces="team-*")
    assert settings.serves("team-a") and not settings.serves("kube-system")


def test_an_image_without_exclusive_lock_is_refused_before_the_lock() -> None:
    from savepoint.flows.revert import lock_feature_refusal
    from savepoint.storage import rbd

    ref = rbd.ImageRef("rbd", "csi-vol-1")

    def info(*features: str) -> rbd.ImageInfo:
        return rbd.ImageInfo(name="csi-vol-1", id="1", size=1, object_size=1, features=features, parent=None,
                             snapshots=())

    assert lock_feature_refusal(info("layering", "exclusive-lock"), ref) is None
    message = lock_feature_refusal(info("layering"), ref)
    assert message and "rbd feature enable rbd/csi-vol-1 exclusive-lock" in message and "nothing was changed" in message


def test_api_paths_quote_names_a_tenant_may_write() -> None:
    """A lock annotation names its holder; that name goes into a request path and must stay one segment."""
    assert k8s.path("volumereverts", "../../secrets/x", namespace="ns") == \
        "/apis/savepoint.dev/v1alpha1/namespaces/ns/volumereverts/..%2F..%2Fsecrets%2Fx"
    assert k8s.path("persistentvolumeclaims", "data?watch=1", namespace="ns", group="", version="v1") == \
        "/api/v1/namespaces/ns/persistentvolumeclaims/data%3Fwatch%3D1"
    assert k8s.path("events", namespace="ns", group="", version="v1") == "/api/v1/namespaces/ns/events"
