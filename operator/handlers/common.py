"""The one bridge between kopf and the plain flow functions."""

from __future__ import annotations

import logging
from typing import Any, Callable

import kopf

from savepoint.api import Reason
from savepoint.engine.context import Failure, FlowContext, Stop, Wait
from savepoint.kube import references
from savepoint.settings import Settings

Flow = Callable[[FlowContext], None]
log = logging.getLogger("savepoint")


def settings_of(memo: kopf.Memo) -> Settings:
    settings = getattr(memo, "settings", None)
    if settings is None:
        settings = Settings.from_env()
        memo.settings = settings
    return settings


def drive(flow: Flow, body: kopf.Body, memo: kopf.Memo, logger: Any, usage: references.Usage | None = None) -> None:
    """Run one reconcile of ``flow``; ``Wait`` becomes ``kopf.TemporaryError``.

    An unexpected exception is shown on the CR (reason ``InternalError``,
    message without a stack trace) and retried with kopf's backoff: the flows
    are idempotent, so a retry resumes where the failure happened.
    """
    ctx = FlowContext.from_body(dict(body), settings_of(memo), logger, usage)
    if ctx.finished:
        return
    try:
        ctx.start()
        flow(ctx)
        ctx.flush_status()
    except Stop:
        return
    except Failure as failure:  # a mover failure outside the step runner: final as it is
        _end_failed(ctx, failure)
    except Wait as wait:
        ctx.flush_status()
        raise kopf.TemporaryError(wait.message, delay=wait.delay) from None
    except kopf.TemporaryError:
        raise
    except Exception as exc:
        logger.exception("unexpected error in %s", ctx.owner)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        try:
            ctx.set_phase(ctx.phase or "Pending", Reason.INTERNAL_ERROR, f"{message} (retrying)")
        except Exception:  # noqa: BLE001 - the API may be what failed
            pass
        raise kopf.TemporaryError(message, delay=15) from exc


def finalize(cleanup: Flow, body: kopf.Body, memo: kopf.Memo, logger: Any) -> None:
    """Run a deletion flow; ``Wait`` keeps the finalizer (and the object) until done."""
    ctx = FlowContext.from_body(dict(body), settings_of(memo), logger)
    try:
        cleanup(ctx)
    except Stop:
        return
    except Failure as failure:
        _end_failed(ctx, failure)
    except Wait as wait:
        raise kopf.TemporaryError(wait.message, delay=wait.delay) from None


def _end_failed(ctx: FlowContext, failure: Failure) -> None:
    ctx.abortable = False
    try:
        ctx.fail(failure.reason, failure.message)
    except Stop:
        return
