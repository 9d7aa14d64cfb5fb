"""Validation of YAML documents into typed config values, with errors that name file, line and key.

pydantic does the type checking; this module turns its errors into one message per problem
in the form ``file:line: dotted.key: what is wrong``, adds "did you mean" for unknown keys,
and never echoes a secret's value.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, TypeVar, Union

import pydantic
from pydantic import BaseModel, ConfigDict, model_validator

from replicator.config.yamlfile import Loc, YamlDoc
from replicator.errors import ConfigError

SECRET_KEYS = frozenset(
    {"password", "secret", "ssl-key", "secret-access-key", "private-key", "private-key-passphrase"}
)

M = TypeVar("M", bound=BaseModel)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class ConfigModel(BaseModel):
    """Base for config sections: kebab-case keys, unknown keys refused, ``_keys`` ignored."""

    model_config = ConfigDict(
        alias_generator=_kebab,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_private_keys(cls, data: Any) -> Any:
        # Keys starting with "_" are tool-internal switches in the Arcion format (e.g. _traceDBTasks).
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
        return data


def validate(model: type[M], doc: YamlDoc, what: str) -> M:
    """Validate ``doc.data`` as ``model``; raise one ConfigError listing every problem."""
    data = doc.data
    if data is None:
        raise ConfigError(f"{doc.path}: the {what} file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{doc.where()}: the {what} file must be a mapping of keys, not {_kind(data)}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as e:
        problems = [_describe(err, model, doc) for err in e.errors(include_url=False)]
        raise ConfigError("\n".join(dict.fromkeys(problems))) from None


def _describe(err: Any, model: type[BaseModel], doc: YamlDoc) -> str:
    raw: Loc = tuple(p for p in err["loc"] if not _is_internal_loc(p))
    loc: Loc = doc.written(raw)
    key = dotted(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, raw[:-1])
        allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
        bad = str(loc[-1])
        hint = difflib.get_close_matches(bad, allowed, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed keys: {', '.join(allowed)}"
        return f"{doc.where(loc)}: {key}: unknown key{suggestion}"
    if kind == "missing":
        return f"{doc.where(loc[:-1] or loc)}: {key}: required key is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    is_secret = any(str(p) in SECRET_KEYS for p in loc)
    # A value from ${VAR} may be a secret written under the wrong key: never echo it.
    from_env = bool(doc.expansions_at(raw))
    given = err.get("input")
    if (
        not is_secret
        and not from_env
        and isinstance(given, (str, int, float, bool))
        and kind != "value_error"
    ):
        msg += f" (got {given!r})"
    if from_env:
        msg = doc.hide_expanded(msg, raw)
        msg += (
            " (the value comes from "
            + ", ".join(f"${{{n}}}" for n, _ in doc.expansions_at(raw))
            + "; not shown)"
        )
    return f"{doc.where(loc)}: {key}: {msg}"


def dotted(loc: Loc) -> str:
    """``snapshot.per-table-config[0].tables`` for a location tuple."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _is_internal_loc(part: Any) -> bool:
    # pydantic adds union-member and function names (e.g. "function-after[...]") to locations.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _model_at(model: Any, loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping found at ``loc``."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part or n == part),
                None,
            )
            if field is None:
                return None
            current = field.annotation
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin in (dict, typing.Mapping) and len(args) == 2:
                current = args[1]
            elif origin in (list, tuple) and args:
                current = args[0]
            else:
                return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Union/Annotated down to the one model or container inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            structured = [
                a for a in members if typing.get_origin(a) or isinstance(a, type) and issubclass(a, BaseModel)
            ]
            tp = structured[0] if structured else members[0]
        else:
            return tp


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
