"""ShareRestore handlers: thin; the flow is savepoint.flows.restore."""

from __future__ import annotations

import kopf
from savepoint.api import GROUP, VERSION
from savepoint.flows import restore
from savepoint.handlers.common import drive, finalize

PLURAL = "sharerestores"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def sharerestore_reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    drive(restore.reconcile, body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def sharerestore_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    finalize(restore.finalize, body, memo, logger)
