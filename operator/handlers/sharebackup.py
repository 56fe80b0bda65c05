"""ShareBackup handlers: thin; the flow is savepoint.flows.backup."""

from __future__ import annotations

from typing import Any

import kopf
from savepoint.api import GROUP, VERSION
from savepoint.flows import backup
from savepoint.handlers import usage
from savepoint.handlers.common import drive, finalize

PLURAL = "sharebackups"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def sharebackup_reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, claim_users: kopf.Index[Any, Any],
                          pv_attachments: kopf.Index[Any, Any], **_: object) -> None:
    drive(backup.reconcile, body, memo, logger, usage.of(claim_users, pv_attachments))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def sharebackup_delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: object) -> None:
    finalize(backup.finalize, body, memo, logger)
