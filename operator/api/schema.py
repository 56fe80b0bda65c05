"""pydantic JSON Schema → Kubernetes structural schema, and the CRD around it.

pydantic writes JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3 subset. The differences that matter here, each handled once:

* ``$ref``/``$defs`` are not allowed: references are inlined, and the field's
  own keywords (its docstring, its default, its CEL rules) win over the
  referenced model's;
* ``X | None`` becomes ``anyOf: [X, {type: null}]``, which is not structural:
  the field is simply optional (unset fields are left out when serializing,
  and ``default: null`` is dropped: it would make ``has()`` true in CEL);
* ``additionalProperties: false`` (``extra="forbid"``) may not sit beside
  ``properties``; the API server prunes and, with strict field validation,
  refuses unknown fields anyway;
* ``title`` is noise in ``kubectl explain``.

Anything else that is not structural (a real union, a numeric
``exclusiveMinimum``) raises ``SchemaError`` instead of producing a CRD the API
server would refuse.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from savepoint.api.base import CATEGORY, GROUP, VERSION
from savepoint.api.resource import NAME_MAX_LENGTH, CustomResource, immutable_spec_rule
from savepoint.api.types import DNS1123_LABEL

Schema = dict[str, Any]

_RULES = "x-kubernetes-validations"


class SchemaError(ValueError):
    """The models produced something the API server would refuse."""


def _merge(inner: Schema, outer: Schema) -> Schema:
    """``outer`` (the field) overrides ``inner`` (the referenced type); CEL rules of both apply."""
    merged = {**inner, **outer}
    if _RULES in inner and _RULES in outer:
        merged[_RULES] = [*inner[_RULES], *outer[_RULES]]
    return merged


def structural(schema: Schema, defs: dict[str, Schema] | None = None) -> Schema:
    """A self-contained structural schema from a pydantic JSON schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = {k: copy.deepcopy(v) for k, v in schema.items() if k != "$defs"}

    if "allOf" in node:  # older pydantic wraps a described $ref in a one-element allOf
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"allOf with {len(parts)} parts is not structural: {parts}")
        node = _merge(parts[0], node)
    if "$ref" in node:
        name = node.pop("$ref").removeprefix("#/$defs/")
        node = _merge(structural(defs[name], defs), node)
    if "anyOf" in node:
        alternatives = [a for a in node.pop("anyOf") if a != {"type": "null"}]
        if len(alternatives) != 1:
            raise SchemaError(f"a union is not structural; use an ExactlyOne model instead: {alternatives}")
        if node.get("default", ...) is None:
            del node["default"]
        node = _merge(structural(alternatives[0], defs), node)

    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if isinstance(node.get("exclusiveMinimum"), (int, float)) or isinstance(node.get("exclusiveMaximum"), (int, float)):
        raise SchemaError(f"use ge/le, not gt/lt: OpenAPI v3 exclusive bounds are booleans: {node}")
    if "type" not in node:
        raise SchemaError(f"every node of a structural schema needs a type: {node}")

    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = structural(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    return node


def model_schema(model: type[BaseModel]) -> Schema:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def _field_model(resource: type[CustomResource], field: str) -> type[BaseModel]:  # type: ignore[type-arg]
    """The model class of ``spec``/``status`` (the annotation may be ``X | None``)."""
    annotation = resource.model_fields[field].annotation
    candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(candidates) != 1:
        raise SchemaError(f"{resource.__name__}.{field} must be one model, got {annotation}")
    return candidates[0]


def openapi_schema(resource: type[CustomResource]) -> Schema:  # type: ignore[type-arg]
    """The whole object's schema: metadata.name as a DNS label, immutable spec, typed status."""
    kind = resource.crd.kind
    spec = model_schema(_field_model(resource, "spec"))
    if resource.crd.immutable_spec:
        spec[_RULES] = [*spec.get(_RULES, []), immutable_spec_rule(kind)]
    status = model_schema(_field_model(resource, "status"))
    return {
        "type": "object",
        "description": (resource.__doc__ or kind).strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{GROUP}/{VERSION}"},
            "kind": {"type": "string", "description": kind},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": min(NAME_MAX_LENGTH, resource.crd.name_max_length),
                             "pattern": DNS1123_LABEL},
                },
            },
            "spec": spec,
            "status": status,
        },
    }


def crd(resource: type[CustomResource]) -> Schema:  # type: ignore[type-arg]
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of one kind."""
    info = resource.crd
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_dict() for c in info.printer_columns],
                }
            ],
        },
    }
