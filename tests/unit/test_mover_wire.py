"""The mover's stdlib request/result format (savepoint.mover.wire) agrees with the operator's pydantic models,
and the registry imports only the requested action's module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from savepoint.mover import registry, wire
from savepoint.mover.request import TERMINATION_MESSAGE_LIMIT, MoverRequest, MoverResult

pytestmark = pytest.mark.unit


def test_every_builtin_action_is_registered_by_the_module_named_for_it() -> None:
    registry.load_all()
    assert set(registry._ACTIONS) == set(registry.BUILTIN_ACTIONS)
    for name, module in registry.BUILTIN_ACTIONS.items():
        assert registry.get(name).__module__ == module, name


def test_a_mover_imports_only_its_action_and_neither_pydantic_nor_kubernetes() -> None:
    code = ("import sys; from savepoint.mover import __main__, registry; registry.get('rbd-copy'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'kubernetes', 'savepoint')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.replace("'", '"'))
    assert not [m for m in loaded if not m.startswith("savepoint")], loaded
    assert "savepoint.mover.rbdcopy" in loaded
    assert not {"savepoint.mover.blocks", "savepoint.mover.files", "savepoint.storage.repository",
                "savepoint.kube.k8s"} & set(loaded), loaded


def test_unknown_action_lists_the_known_ones_without_importing_them() -> None:
    assert registry.get("no-such-action") is None
    assert "rbd-copy" in registry.names() and "blocks-restore" in registry.names()


def test_request_written_by_the_operator_reads_in_the_mover() -> None:
    request = MoverRequest(action="rbd-copy", params={"source": {"pool": "rbd", "image": "ü"}}, needs_ceph=True)
    got = wire.parse_request(request.to_env())
    assert got == wire.Request("rbd-copy", {"source": {"pool": "rbd", "image": "ü"}})


@pytest.mark.parametrize("raw", ["", "[]", '{"params": {}}', '{"action": "", "params": {}}',
                                 '{"action": "x", "params": []}', "{not json"])
def test_bad_requests_are_refused(raw: str) -> None:
    with pytest.raises(wire.BadRequest):
        wire.parse_request(raw)


@pytest.mark.parametrize("result", [
    wire.Result(ok=True, data={"bytes": 5, "checksum": "sp1"}, bytes_read=5, bytes_written=3),
    wire.Result(ok=False, reason="VolumeInUse", message="ä watcher", data={}),
    wire.Result(ok=True, data={"list": ["x" * 100] * 100}, bytes_read=1, bytes_written=0),
    wire.Result(ok=False, message="m" * 5000, data={"x": "y" * 5000}),
])
def test_results_written_by_the_mover_parse_in_the_operator(result: wire.Result) -> None:
    text = wire.termination_message(result.as_dict())
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = MoverResult.parse(text)
    assert parsed is not None and parsed.ok == result.ok
    assert (parsed.bytes_read, parsed.bytes_written) == (result.bytes_read, result.bytes_written)
    as_model = MoverResult(**result.as_dict())
    assert MoverResult.parse(as_model.to_termination_message()) == parsed  # both sides cut the same way
    if len(result.to_json().encode()) <= TERMINATION_MESSAGE_LIMIT:
        assert parsed == as_model
    else:
        assert parsed.data == {"truncated": True}
        assert parsed.reason == (None if result.ok else result.reason or "ResultTooLarge")


def test_old_results_without_byte_counts_still_parse() -> None:
    parsed = MoverResult.parse('{"ok":true,"data":{"bytes":1}}')
    assert parsed is not None and parsed.bytes_read is None and parsed.bytes_written is None


def test_the_bytes_an_action_counted_become_the_results_fields() -> None:
    from savepoint.mover.__main__ import _moved

    assert _moved({"bytesRead": 10, "bytesReadRepository": 5, "bytesStored": 7}) == {"bytes_read": 15,
                                                                                     "bytes_written": 7}
    assert _moved({"bytesRead": 1, "bytesWritten": 0, "bytesStored": 9}) == {"bytes_read": 1, "bytes_written": 0}
    assert _moved({"bytes": 3, "bytesRead": -1, "bytesWritten": "x"}) == {"bytes_read": None, "bytes_written": None}
