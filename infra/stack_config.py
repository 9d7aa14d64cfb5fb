"""The stack config (``Pulumi.<stack>.yaml``, namespace ``replicator:``) as one typed, validated value.

Every key is checked before a single resource is declared: a typo in a key gets "did you mean",
a wrong value names the key, and parameter-group families and names are validated here because
moto (our test endpoint) accepts anything.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from collections.abc import Mapping
from typing import Any, Literal

import pulumi
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from replicator.provision import rds
from replicator.provision.pgaccess import ALL_TABLES

NAMESPACE = "replicator"

SourceKind = Literal["create", "adopt", "self-hosted"]


class StackConfigError(pulumi.RunError):
    """The stack config is wrong; Pulumi prints the message without a traceback."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AllowedCidr(_Model):
    """One address range allowed to reach the database port."""

    cidr: str
    description: str = "replicator"

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as e:
            raise ValueError(f"not a CIDR block: {e}") from None


class NetworkAcl(_Model):
    """Network ACL to open (stateless: an inbound rule for the port, an outbound one for replies)."""

    id: str
    first_rule_number: int = Field(default=100, ge=1, le=32766)


class StackConfig(_Model):
    engine: rds.Engine
    engine_version: str
    source: SourceKind = "create"
    identifier: str | None = None
    database_name: str
    admin_username: str
    admin_password: str = Field(repr=False)
    # TLS for the program's own connection and for the handed-off config; RDS always offers it.
    ssl_mode_setting: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        default=None, alias="sslMode"
    )
    # create
    instance_class: str = "db.t4g.medium"
    allocated_storage_gb: int = Field(default=20, ge=20)
    subnet_ids: list[str] = []
    publicly_accessible: bool = False
    # self-hosted
    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    # network
    vpc_id: str | None = None
    security_group_ids: list[str] = []
    allowlist: list[AllowedCidr] = []
    network_acl: NetworkAcl | None = None
    # logical replication
    max_replication_slots: int = Field(default=10, ge=1, le=262143)
    max_wal_senders: int = Field(default=10, ge=1, le=262143)
    backup_retention_days: int = Field(default=7, ge=3, le=35)
    extra_parameters: dict[str, str] = {}
    # replication access
    replication_user: str = "replicator"
    password_version: int = 1
    schemas: list[str] = ["public"]
    table_owners: list[str] = []
    heartbeat_table: str | None = None
    slots: dict[str, Literal["pgoutput", "wal2json"]] = {"replicator_slot": "pgoutput"}
    publication: str | None = "replicator_pub"
    publication_tables: list[str] | Literal["*"] | None = None
    secret_name: str | None = None
    region: str | None = None

    @field_validator("allowlist", mode="before")
    @classmethod
    def _plain_cidrs(cls, value: Any) -> Any:
        # `allowlist: [203.0.113.7/32]` is the short form of `[{cidr: 203.0.113.7/32}]`.
        if isinstance(value, list):
            return [{"cidr": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("extra_parameters", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        rds.parameter_family(self.engine, self.engine_version)  # raises on a family AWS lacks
        if self.source in ("create", "adopt") and not self.identifier:
            raise ValueError(
                f"identifier is required when source is {self.source} (the instance or cluster id)"
            )
        if self.source == "self-hosted" and not self.host:
            raise ValueError("host is required when source is self-hosted")
        if self.source == "self-hosted" and self.engine != "postgres":
            raise ValueError("a self-hosted source runs engine postgres")
        if self.publication_tables is not None and not self.publication:
            raise ValueError("publicationTables needs a publication name")
        if self.publication_tables == ALL_TABLES and self.source != "self-hosted":
            raise ValueError(
                'publicationTables: "*" (FOR ALL TABLES) needs a true superuser, which RDS and Aurora '
                "do not give; list the tables instead"
            )
        if self.max_wal_senders < len(self.slots):
            raise ValueError(f"maxWalSenders ({self.max_wal_senders}) is lower than the number of slots")
        if self.max_replication_slots < len(self.slots):
            raise ValueError(
                f"maxReplicationSlots ({self.max_replication_slots}) is lower than the number of slots"
            )
        _ = self.parameters  # validates extra parameter names, values and apply methods
        return self

    @property
    def is_rds(self) -> bool:
        return self.source != "self-hosted"

    @property
    def is_cluster(self) -> bool:
        return self.engine == "aurora-postgresql"

    @property
    def family(self) -> str:
        return rds.parameter_family(self.engine, self.engine_version)

    @property
    def parameters(self) -> list[rds.Parameter]:
        required = rds.required_parameters(self.max_replication_slots, self.max_wal_senders)
        return rds.validate_parameters(self.engine, rds.merge_parameters(required, self.extra_parameters))

    @property
    def ssl_mode(self) -> str:
        # RDS always offers TLS; a self-hosted server may not.
        return self.ssl_mode_setting or ("require" if self.is_rds else "prefer")

    @property
    def needs_publication(self) -> bool:
        return "pgoutput" in self.slots.values()


def parse_stack_config(raw: Mapping[str, Any], stack: str = "dev") -> StackConfig:
    """Validate ``{"replicator:key": value}`` (values as Pulumi hands them over: text or JSON text)."""
    where = f"Pulumi.{stack}.yaml"
    data: dict[str, Any] = {}
    for key, value in raw.items():
        ns, _, name = key.partition(":")
        if ns == NAMESPACE:
            data[name] = _decode(value)
    allowed = sorted((f.alias or n) for n, f in StackConfig.model_fields.items())
    problems = []
    for name in data:
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f"; did you mean {NAMESPACE}:{hint[0]}?" if hint else ""
            problems.append(f"{where}: {NAMESPACE}:{name}: unknown key{more}")
    if problems:
        raise StackConfigError("\n".join(problems))
    try:
        return StackConfig.model_validate(data)
    except pydantic.ValidationError as e:
        raise StackConfigError(
            "\n".join(_describe(where, err) for err in e.errors(include_url=False))
        ) from None
    except rds.ParameterError as e:
        raise StackConfigError(f"{where}: {e}") from None


def read_stack_config() -> StackConfig:
    """The running stack's config (from the Pulumi engine, or from ``set_all_config`` in tests)."""
    raw = {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    return parse_stack_config(raw, pulumi.get_stack())


def _decode(value: Any) -> Any:
    # Pulumi passes structured config (lists, objects) as JSON text.
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _describe(where: str, err: Any) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] != "value_error":  # pydantic's own sentences; ours keep their capitals (PostgreSQL)
        msg = msg[:1].lower() + msg[1:]
    if err["type"] == "missing":
        msg = "required key is missing"
    elif (
        "password" not in key
        and isinstance(err.get("input"), (str, int, float))
        and err["type"] != "value_error"
    ):
        msg += f" (got {err['input']!r})"
    return f"{where}: {NAMESPACE}:{key}: {msg}" if key else f"{where}: {msg}"
