"""What every API model shares: the group/version, camelCase JSON, and CEL rules.

The models are the single source of truth: the CRD schemas (``savepoint.crdgen``)
and the operator's parsing both come from them, so a rule declared here is
enforced by the API server (as CEL) *and* by pydantic with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "savepoint.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "savepoint"

CelRule = Mapping[str, str]


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; a message is mandatory so users read English, not CEL."""
    return {"rule": rule, "message": message, **extra}


class ApiModel(BaseModel):
    """Base of every spec/status part: camelCase on the wire, snake_case in Python.

    Attribute docstrings become the field descriptions in the CRD and in
    ``docs/api.md``. Unknown fields are refused so typos in code fail loudly
    (the API server refuses them for users).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )

    #: CEL rules of this object, emitted as ``x-kubernetes-validations``.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def all_cel_rules(cls) -> list[CelRule]:
        return list(cls.cel_rules)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        rules = cls.all_cel_rules()
        if rules:
            target["x-kubernetes-validations"] = [dict(r) for r in rules]
        return json_schema

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase, JSON types, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """Status parts tolerate fields they do not know: an older operator must read a newer status."""

    model_config = ConfigDict(extra="ignore")


def json_name(model: type[BaseModel], field: str) -> str:
    info = model.model_fields[field]
    return info.alias or field


def one_of_message(names: list[str]) -> str:
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"exactly one of {listed} must be set"


class ExactlyOne(ApiModel):
    """A choice between references: exactly one field must be set.

    Subclasses list their alternatives in ``choices`` (all fields by default).
    The same rule becomes CEL (``exists_one``) for the API server and a
    validator here, both with the message "exactly one of a or b must be set".
    """

    choices: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def choice_fields(cls) -> tuple[str, ...]:
        return cls.choices or tuple(cls.model_fields)

    @classmethod
    def choice_names(cls) -> list[str]:
        return [json_name(cls, f) for f in cls.choice_fields()]

    @classmethod
    def all_cel_rules(cls) -> list[CelRule]:
        names = cls.choice_names()
        has = ", ".join(f"has(self.{n})" for n in names)
        return [cel(f"[{has}].exists_one(x, x)", one_of_message(names)), *cls.cel_rules]

    @model_validator(mode="after")
    def _exactly_one(self) -> ExactlyOne:
        set_fields = [f for f in self.choice_fields() if getattr(self, f) is not None]
        if len(set_fields) != 1:
            raise ValueError(one_of_message(self.choice_names()))
        return self

    def chosen(self) -> tuple[str, Any]:
        """The JSON name and value of the alternative that is set."""
        for field in self.choice_fields():
            value = getattr(self, field)
            if value is not None:
                return json_name(type(self), field), value
        raise AssertionError("validated model has no choice set")
