"""VolumeRevert handlers: thin; the flow is savepoint.flows.revert."""

from __future__ import annotations

from typing import Any

import kopf

from savepoint.api import GROUP, VERSION
from savepoint.flows import revert
from savepoint.handlers import usage
from savepoint.handlers.common import drive, finalize

PLURAL = "volumereverts"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def volumerevert_reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, claim_users: kopf.Index[Any, Any],
                           pv_attachments: kopf.Index[Any, Any], **_: object) -> None:
    drive(revert.reconcile, body, memo, logger, usage.of(claim_users, pv_attachments))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def volumerevert_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    finalize(revert.finalize, body, memo, logger)
