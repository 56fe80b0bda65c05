"""Operator-wide kopf settings, metrics and health: one startup hook."""

from __future__ import annotations

import logging

import kopf

from savepoint import metrics
from savepoint.engine import movers
from savepoint.handlers.common import settings_of

FINALIZER = "savepoint.dev/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    ours = settings_of(memo)
    # Our own finalizer and annotations, so kubectl shows whose they are.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="savepoint.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="savepoint.dev", key="last-handled-configuration")
    # End watches before load balancers cut idle ones, and notice dead connections.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Our Events tell the story with stable reasons; kopf's per-handler ones would be noise.
    settings.posting.level = logging.WARNING
    # Handlers are sync (librbd and API calls block): enough threads for parallel CRs.
    settings.execution.max_workers = 32  # 16 queued 100 reverts 10-18 s each; 64 peaked at 178 MiB (bench_scale.py)
    # A stuck step retries for as long as the CR's own deadline allows.
    settings.execution.default_backoff = 10
    metrics.serve(ours.metrics_port)
    logger.info("savepoint operator configured: %s", ours.model_dump_json())



@kopf.on.startup()
def sweep_movers(memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    """Movers live in our namespace without owner references: remove those whose CR is gone.
    Best effort: a failed sweep is retried at the next start and never keeps the operator down."""
    ours = settings_of(memo)
    try:
        removed = movers.sweep_orphans(ours, ours.serves)
    except Exception as exc:  # noqa: BLE001 - e.g. RBAC of an older chart
        logger.warning("could not sweep orphaned mover Jobs: %s", str(exc).splitlines()[0])
        return
    if removed:
        metrics.LEFTOVERS.labels("Mover", "job").inc(len(removed))
        logger.info("removed %d orphaned mover Job(s): %s", len(removed), ", ".join(removed))
