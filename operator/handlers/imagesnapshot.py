"""ImageSnapshot handlers: thin; the flow is savepoint.flows.imagesnapshot."""

from __future__ import annotations

import kopf

from savepoint.api import GROUP, VERSION
from savepoint.flows import imagesnapshot
from savepoint.handlers.common import drive, finalize

PLURAL = "imagesnapshots"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def imagesnapshot_reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    drive(imagesnapshot.reconcile, body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def imagesnapshot_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    finalize(imagesnapshot.finalize, body, memo, logger)
