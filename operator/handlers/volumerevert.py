"""VolumeRevert handlers: thin; the flow is savepoint.flows.revert."""

from __future__ import annotations

import kopf

from savepoint.api import GROUP, VERSION
from savepoint.flows import revert
from savepoint.handlers.common import drive, finalize

PLURAL = "volumereverts"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def volumerevert_reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    drive(revert.reconcile, body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def volumerevert_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    finalize(revert.finalize, body, memo, logger)
