"""``kubectl savepoint schedule ...``: the parser is wired into the plugin and builds valid specs."""

from __future__ import annotations

import pytest

from savepoint.api import SavepointScheduleSpec
from savepoint.cli.main import parser
from savepoint.cli.schedules import retention_of, template_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("argv", "kind"), [
    (["backup", "data", "--repository", "pvc/repo", "--full-every", "7", "--keep-daily", "7", "--keep-weekly", "4"],
     "shareBackup"),
    (["safe-point", "data", "--keep-last", "24"], "safePoint"),
    (["volume-snapshot", "data", "--snapshot-class", "csi-rbdplugin-snapclass", "--max-age", "30d"], "volumeSnapshot"),
    (["image", "vm", "--pool", "images", "--keep-monthly", "6"], "imageSnapshot"),
])
def test_create_builds_a_valid_spec(argv: list[str], kind: str) -> None:
    args = parser().parse_args(["schedule", "create", *argv, "--schedule", "@daily", "--time-zone", "Europe/Berlin"])
    spec = {"schedule": args.schedule, "timeZone": args.time_zone, "template": template_of(args),
            "retention": retention_of(args)}
    parsed = SavepointScheduleSpec.model_validate(spec)
    assert parsed.template.chosen()[0] == kind


@pytest.mark.parametrize("verb", ["list", "suspend x", "resume x", "run-now x"])
def test_other_verbs_parse(verb: str) -> None:
    args = parser().parse_args(["schedule", *verb.split(), "-o", "yaml"])
    assert callable(args.fn)
