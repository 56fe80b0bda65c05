"""The generated CRDs and docs: up to date, structural, and carrying the contract."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from savepoint import crdgen
from savepoint.api import KINDS, ApiModel
from savepoint.api.schema import SchemaError, crd, structural

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = {kind.crd.kind: crd(kind) for kind in KINDS}
FORBIDDEN = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "nullable", "title", "x-kubernetes-preserve-unknown-fields"}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")


def root_schema(kind: str) -> dict[str, Any]:
    return CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_files_equal_the_generator_output() -> None:
    problems = crdgen.check(ROOT)
    assert not problems, "run `python -m savepoint.crdgen`:\n" + "\n".join(problems)


def test_committed_crds_are_what_kubectl_reads() -> None:
    for kind, generated in CRDS.items():
        path = ROOT / "crds" / crdgen.crd_filename(generated["spec"]["names"]["plural"])
        assert yaml.safe_load(path.read_text()) == generated, kind


def test_check_fails_on_a_stale_or_extra_file(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    api_md = tmp_path / "docs" / "api.md"
    api_md.write_text(api_md.read_text().replace("VolumeRevert", "VolumeRevirt", 1))
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    crdgen.write(tmp_path)
    shutil.copy(tmp_path / "crds" / "volumereverts.savepoint.dev.yaml", tmp_path / "crds" / "oldkinds.savepoint.dev.yaml")
    assert any("oldkinds" in p for p in crdgen.check(tmp_path))
    crdgen.write(tmp_path)
    assert not (tmp_path / "crds" / "oldkinds.savepoint.dev.yaml").exists()


@pytest.mark.parametrize("kind", CRDS)
def test_schema_is_structural(kind: str) -> None:
    for path, node in nodes(root_schema(kind)):
        assert not FORBIDDEN & node.keys(), f"{kind} {path}: {FORBIDDEN & node.keys()}"
        assert "type" in node, f"{kind} {path} has no type"
        assert node.get("additionalProperties") is not False, f"{kind} {path}"
        if node["type"] == "object" and path not in {".metadata"}:
            assert node.get("properties"), f"{kind} {path}: an object without properties would be pruned empty"
        if node["type"] == "array":
            assert "items" in node, f"{kind} {path}"
        if node["type"] == "string" and path.startswith((".spec", ".status")) and "enum" not in node and node.get("format") != "date-time":
            assert "maxLength" in node, f"{kind} {path}: unbounded strings make CEL cost estimates explode"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert not isinstance(node.get(bound), (int, float)) or isinstance(node.get(bound), bool), f"{kind} {path}"
        if "default" in node:
            assert node["default"] is not None, f"{kind} {path}: default null"
            if "enum" in node:
                assert node["default"] in node["enum"], f"{kind} {path}"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{kind} {path}: a CEL rule without a message reads as CEL to users"


@pytest.mark.parametrize("kind", CRDS)
def test_status_has_a_real_schema(kind: str) -> None:
    status = root_schema(kind)["properties"]["status"]
    for field in ("phase", "conditions", "observedGeneration", "startTime", "completionTime", "progress", "message"):
        assert field in status["properties"], f"{kind}.status.{field}"
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
    assert set(status["properties"]["progress"]["properties"]) == {"percent", "bytesDone", "bytesTotal", "files"}


@pytest.mark.parametrize("kind", CRDS)
def test_spec_is_immutable_and_names_are_labels(kind: str) -> None:
    root = root_schema(kind)
    rules = root["properties"]["spec"].get("x-kubernetes-validations", [])
    immutable = {"rule": "self == oldSelf", "message": f"spec is immutable: create a new {kind} instead"}
    if kind == "SavepointSchedule":  # a controller, like a CronJob: suspend, resume, retune in place
        assert immutable not in rules
        assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 47  # + "-YYYYMMDD-HHMMSS"
    else:
        assert immutable in rules
        assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63
    assert root["required"] == ["spec"]


@pytest.mark.parametrize(
    ("kind", "short", "columns"),
    [
        ("VolumeRevert", "vrev", ["Phase", "Progress", "Source", "Reason", "Age"]),
        ("ShareBackup", "sbak", ["Phase", "Progress", "Source", "Size", "Reason", "Age"]),
        ("ShareRestore", "srst", ["Phase", "Progress", "Backup", "Target", "Reason", "Age"]),
        ("ImageSnapshot", "isnap", ["Phase", "Progress", "Source", "Location", "Reason", "Age"]),
        ("SavepointSchedule", "spsched", ["Schedule", "Suspended", "Last Success", "Next Run", "Kept", "Reason", "Age"]),
    ],
)
def test_names_and_columns(kind: str, short: str, columns: list[str]) -> None:
    spec = CRDS[kind]["spec"]
    assert spec["group"] == "savepoint.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == [short] and spec["names"]["categories"] == ["savepoint"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    printer = version["additionalPrinterColumns"]
    assert [c["name"] for c in printer if not c.get("priority")] == columns
    assert all(c.get("priority") == 1 for c in printer if c["name"] not in columns)


@pytest.mark.parametrize("kind", CRDS)
def test_printer_columns_point_at_fields_that_exist(kind: str) -> None:
    root = root_schema(kind)
    for column in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[", 1)[0].strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = root
        for part in path:
            node = node["items"] if node["type"] == "array" else node
            assert part in node.get("properties", {}), f"{kind} column {column['name']}: {column['jsonPath']}"
            node = node["properties"][part]


@pytest.mark.parametrize("kind", CRDS)
def test_every_spec_field_is_described(kind: str) -> None:
    for path, node in nodes(root_schema(kind)["properties"]["spec"], ".spec"):
        assert node.get("description"), f"{kind} {path}: add a docstring under the field"


def test_converter_refuses_what_the_api_server_would() -> None:
    class Union(ApiModel):
        value: int | str

    with pytest.raises(SchemaError, match="union"):
        structural(Union.model_json_schema(by_alias=True))

    class Exclusive(ApiModel):
        value: int = 1

    schema = Exclusive.model_json_schema(by_alias=True)
    schema["properties"]["value"]["exclusiveMinimum"] = 0
    with pytest.raises(SchemaError, match="ge/le"):
        structural(schema)


def test_field_docs_win_over_the_referenced_type_and_rules_add_up() -> None:
    volume = root_schema("VolumeRevert")["properties"]["spec"]["properties"]["volume"]
    assert volume["description"] == "The volume to revert in place."
    assert volume["x-kubernetes-validations"][0]["message"] == "exactly one of persistentVolumeClaim or rbd must be set"
    size = root_schema("ShareRestore")["properties"]["spec"]["properties"]["target"]["properties"]["newClaim"]["properties"]["size"]
    assert size["x-kubernetes-validations"][0]["message"] == "size must be greater than zero"


def test_docs_cover_every_field_and_reason() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for kind in CRDS:
        assert f"## {kind}" in text
        for path, _ in nodes(root_schema(kind)["properties"]["spec"]):
            if path != "<root>":
                assert f"| `{path.lstrip('.')}` |" in text, path
    assert "| `SnapshotNotLatest` | fails at once" in text
    assert "exactly one of persistentVolumeClaim, nfs or rbd must be set" in text
