"""Filter config: which tables, columns and rows to replicate (the Arcion `allow` format)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from replicator.config.model import ConfigModel


class TableRule(ConfigModel):
    """One allowed table: an optional column list and an optional row predicate."""

    allow: list[str] | None = None
    conditions: str | None = None

    @field_validator("allow", mode="before")
    @classmethod
    def _split_quirk(cls, value: object) -> object:
        # The documented quirk: ["FB, IG"] means two columns, FB and IG.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [c.strip() for v in value for c in v.split(",") if c.strip()]
        return value

    @field_validator("conditions")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("conditions must be a SQL predicate, not empty text")
        if value is not None:
            from replicator.conditions import shape_problem

            problem = shape_problem(value)
            if problem:
                raise ValueError(f"conditions must be one boolean expression: {problem}")
        return value


class SchemaFilter(ConfigModel):
    catalog: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    types: list[Literal["TABLE"]] = ["TABLE"]
    allow: dict[str, TableRule | None] | None = None


class FilterConfig(ConfigModel):
    # One schema's rules, or a list of them (several schemas).
    allow: list[SchemaFilter]

    @field_validator("allow", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    @property
    def schemas(self) -> list[SchemaFilter]:
        return self.allow
