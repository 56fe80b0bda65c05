"""``docs/api.md``: the API reference, rendered from the generated CRDs.

It reads the CRD dicts (not the models) so the reference shows exactly what
the API server enforces: the same descriptions, defaults, patterns and CEL
messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from savepoint.api import types
from savepoint.api.base import API_VERSION, CATEGORY
from savepoint.api.conditions import READY, SUCCEEDED
from savepoint.api.reasons import Handling, Reason
from savepoint.api.resource import NAME_MAX_LENGTH
from savepoint.api.status import CONDITION_REASON_PATTERN, CONDITION_TYPE_PATTERN, SETTLED_PHASES

Schema = dict[str, Any]

PATTERN_NAMES = {
    types.DNS1123_SUBDOMAIN: "a DNS-1123 subdomain (lower case letters, digits, `-`, `.`)",
    types.DNS1123_LABEL: "a DNS-1123 label (lower case letters, digits, `-`)",
    types.CEPH_NAME: "a Ceph name (letters, digits, `_ . + : = -`; not starting with `-` or `.`)",
    types.NFS_SERVER: "a host name or IP address",
    types.NFS_PATH: "an absolute path without `..` segments",
    types.QUANTITY: "a Kubernetes quantity such as `10Gi` (no sign, no milli units)",
    CONDITION_TYPE_PATTERN: "CamelCase, optionally prefixed by a DNS subdomain and `/`",
    CONDITION_REASON_PATTERN: "one CamelCase word",
}

HANDLING_TEXT = {
    Handling.PROGRESS: "—",
    Handling.WAIT: "waits (`Pending`), retried until `deadlineSeconds`",
    Handling.FAIL: "fails at once (`Failed`)",
    Handling.RETRY_DELETE: "`ErrorDeleting`, retried with backoff; the object stays until its data is gone",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(node: Schema) -> str:
    if node.get("format") == "date-time":
        return "timestamp"
    if node["type"] == "array":
        return f"list of {_type(node['items'])}"
    return str(node["type"])


def _validation(node: Schema, required: bool) -> str:
    parts = ["required"] if required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "pattern" in node:
        parts.append(PATTERN_NAMES.get(node["pattern"], f"matches `{node['pattern']}`"))
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "minimum" in node:
        parts.append(f"≥ {node['minimum']}")
    if "maximum" in node:
        parts.append(f"≤ {node['maximum']}")
    if node.get("x-kubernetes-list-type") == "map":
        parts.append("list keyed by " + ", ".join(f"`{k}`" for k in node["x-kubernetes-list-map-keys"]))
    for rule in node.get("x-kubernetes-validations", []):
        parts.append("immutable" if rule["rule"] == "self == oldSelf" else rule["message"])
    return "; ".join(parts)


def _rows(node: Schema, prefix: str) -> Iterator[str]:
    """One table row per field, depth first, in declaration order."""
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        default = f"`{json.dumps(child['default'])}`" if "default" in child else ""
        yield (
            f"| `{path}` | {_type(child)} | {default} | {_cell(_validation(child, name in required))} "
            f"| {_cell(child.get('description', ''))} |"
        )
        target = child["items"] if child["type"] == "array" else child
        if target.get("type") == "object":
            yield from _rows(target, f"{path}[]." if child["type"] == "array" else f"{path}.")


def _table(title: str, node: Schema) -> list[str]:
    lines = [f"### {title}", ""]
    if node.get("description"):
        lines += [node["description"], ""]
    extra = _validation(node, False)
    if extra:
        lines += [f"Rules: {extra}.", ""]
    lines += ["| Field | Type | Default | Validation | Description |", "|---|---|---|---|---|", *_rows(node, ""), ""]
    return lines


def _kind_section(crd: Schema) -> list[str]:
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    columns = version["additionalPrinterColumns"]
    short = names["shortNames"][0]
    normal = ", ".join(c["name"] for c in columns if not c.get("priority"))
    wide = ", ".join(c["name"] for c in columns if c.get("priority"))
    phases = root["properties"]["status"]["properties"]["phase"]["enum"]
    lines = [
        f"## {names['kind']}",
        "",
        root["description"],
        "",
        f"- `kubectl get {short}` (or `{names['plural']}`) shows {normal}; `-o wide` adds {wide}.",
        "- Phases: " + ", ".join(f"`{p}`" for p in phases)
        + " (settled: " + ", ".join(f"`{p}`" for p in phases if p in SETTLED_PHASES) + ").",
        "",
    ]
    lines += _table("spec", root["properties"]["spec"])
    lines += _table("status", root["properties"]["status"])
    return lines


def render(crds: list[Schema]) -> str:
    """The whole reference as Markdown."""
    lines = [
        "<!-- Generated by `python -m savepoint.crdgen` from the models in operator/api/; do not edit. -->",
        "# Savepoint API reference",
        "",
        f"All kinds are namespaced and served as `{API_VERSION}`; `kubectl get {CATEGORY}` lists them all.",
        "Every `spec` but a SavepointSchedule's is immutable once created: each such resource is one action, like a Job —",
        "to change it, create a new one. A SavepointSchedule is a controller, like a CronJob: edit it freely.",
        f"Names (`metadata.name`) are DNS-1123 labels of at most {NAME_MAX_LENGTH} characters: they name the mover Jobs"
        " (a SavepointSchedule's at most 47: its children's names add a timestamp).",
        "Volumes, snapshots and backups are always looked up in the resource's own namespace; raw `rbd`/`nfs`",
        "references are accepted only in namespaces the operator's settings allow.",
        "",
        "| Kind | Short name | What it does |",
        "|---|---|---|",
    ]
    for crd in crds:
        names = crd["spec"]["names"]
        description = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
        lines.append(f"| [{names['kind']}](#{names['kind'].lower()}) | `{names['shortNames'][0]}` | {_cell(description)} |")
    lines.append("")
    for crd in crds:
        lines += _kind_section(crd)
    lines += [
        "## Conditions",
        "",
        "Conditions follow the Kubernetes API conventions; `lastTransitionTime` changes only when `status` does.",
        "",
        f"- `{READY}`: always present. `True` once the result is usable, `False` with a reason while waiting,"
        " working or after a failure, `Unknown` on first sight.",
        f"- `{SUCCEEDED}`: summary of the action (VolumeRevert, ShareBackup creation, ShareRestore, ImageSnapshot):"
        " `Unknown` while it runs, then `True` or `False`.",
        "",
        "## Reasons",
        "",
        "Reasons are stable: condition reasons and Event reasons use the same words.",
        "",
        "| Reason | The resource | Meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{r.value}` | {HANDLING_TEXT[r.handling]} | {_cell(r.description)} |" for r in Reason]
    return "\n".join(lines) + "\n"
