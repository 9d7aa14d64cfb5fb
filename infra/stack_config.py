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

from replicator.provision import rds, wal
from replicator.provision.accessspec import ALL_TABLES

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


class AdminAccess(_Model):
    """How this program reaches a database that is not publicly accessible, to create the replication user.

    ``vpc``: this machine is inside the VPC (or reaches it by peering, VPN or Direct Connect).
    ``tunnel``: through a local port forwarded to the database (SSM port forwarding, an SSH tunnel
    through a bastion); ``host``/``port`` are the local end.
    """

    via: Literal["vpc", "tunnel"]
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _tunnel_has_an_end(self) -> AdminAccess:
        if self.via == "tunnel" and not (self.host and self.port):
            raise ValueError("via: tunnel needs host and port (its local end, e.g. 127.0.0.1 and 15432)")
        if self.via == "vpc" and (self.host or self.port):
            raise ValueError("host and port belong to via: tunnel; via: vpc connects to the endpoint")
        return self


class Bastion(_Model):
    """``replicator:bastion``: the program reaches the database through its own SSH tunnel via this host.

    The same settings as a connection config's ``ssh-tunnel`` (camelCase here); ``knownHosts`` may give
    the bastion's known_hosts lines themselves (handy in CI). Set the key and passphrase as secrets:
    ``pulumi config set --secret --path 'replicator:bastion.privateKeyPassphrase' ...``.
    """

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    private_key_file: str | None = None
    private_key: str | None = Field(default=None, repr=False)
    private_key_passphrase: str | None = Field(default=None, repr=False)
    known_hosts_file: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: bool = True

    @model_validator(mode="after")
    def _one_key_one_known_hosts(self) -> Bastion:
        if (self.private_key_file is None) == (self.private_key is None):
            raise ValueError(
                "give the bastion key as privateKeyFile or privateKey (a secret), one of the two"
            )
        if self.known_hosts_file is not None and self.known_hosts is not None:
            raise ValueError("give knownHostsFile or knownHosts (the lines themselves), not both")
        return self

    @model_validator(mode="after")
    def _key_loads(self) -> Bastion:
        """Refuse before anything is declared: a key file missing, not a key, or not decrypted by the
        passphrase."""
        from replicator.provision.adminsession import AccessError
        from replicator.provision.bastion import STACK_KEYS, tunnel_settings
        from replicator.ssh.keys import config_problems

        try:
            problems = config_problems(tunnel_settings(self.tunnel_props()))
        except AccessError as e:
            raise ValueError(str(e).removeprefix("replicator:bastion: ")) from None
        camel = {kebab: name for name, kebab in STACK_KEYS.items()}
        if problems:
            p = problems[0]
            message = p.message.replace("private-key-passphrase", "privateKeyPassphrase").replace(
                "private-key-file", "privateKeyFile").replace("private-key", "privateKey")
            raise ValueError(f"{camel.get(p.key, p.key)}: {message}")
        return self

    def handoff_props(self) -> dict[str, Any]:
        """What ``replicator handoff`` writes as the source's ``ssh-tunnel``: no key, no passphrase."""
        secret = ("private-key", "private-key-passphrase")
        props = {k: v for k, v in self.tunnel_props().items() if k not in secret}
        if self.private_key_passphrase is not None:
            props["private-key-encrypted"] = True  # the config then reads the passphrase from a variable
        return props

    def tunnel_props(self) -> dict[str, Any]:
        """The ``ssh-tunnel`` keys the providers open the tunnel with (replicator/provision/bastion.py)."""
        from replicator.provision.bastion import STACK_KEYS

        values = self.model_dump(by_alias=True)
        props = {kebab: values[camel] for camel, kebab in STACK_KEYS.items() if values.get(camel) is not None}
        if self.known_hosts is not None:
            props["known-hosts"] = self.known_hosts
        return props


class WalAlarms(_Model):
    """CloudWatch alarms on the source's WAL and storage, to an SNS topic (replicator/provision/wal.py)."""

    enabled: bool = True
    # The same numbers as the replicator's log-monitoring (max-wal-size-gb, alert-threshold-percent).
    max_wal_size_gb: float | None = Field(default=None, gt=0)
    alert_threshold_percent: int = Field(default=wal.DEFAULT_ALERT_THRESHOLD_PERCENT, ge=50, le=80)
    free_storage_gb: float | None = Field(default=None, gt=0)
    email: str | None = None  # subscribed to the topic (AWS mails a confirmation link first)
    period_seconds: int = Field(default=300, ge=60)

    @field_validator("email")
    @classmethod
    def _looks_like_an_address(cls, value: str | None) -> str | None:
        if value is not None and (value.count("@") != 1 or " " in value or value.strip("@") != value):
            raise ValueError(f"not an e-mail address: {value!r}")
        return value


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
    admin_access: AdminAccess | None = None
    bastion: Bastion | None = None  # the program's own SSH tunnel to a private database
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
    # WAL protection: the server-side bound (GB; -1 = unbounded) and the alarms.
    max_slot_wal_keep_size_gb: float | None = None
    wal_alarms: WalAlarms = WalAlarms()
    # Destroying an adopted database would switch logical replication off while slots still exist:
    # refused unless this drops the inactive ones (active ones always refuse).
    drop_inactive_slots_on_destroy: bool = False
    # replication access
    replication_user: str = "replicator"
    password_version: int = 1
    schemas: list[str] = ["public"]
    table_owners: list[str] = []
    heartbeat_table: str | None = None
    slots: dict[str, Literal["pgoutput", "wal2json"]] = {"replicator_slot": "pgoutput"}
    publication: str | None = "replicator_pub"
    publication_tables: list[str] | Literal["*"] | None = None
    # Install the DDL capture (schema changes follow realtime streams; needs the master user).
    ddl_capture: bool = False
    secret_name: str | None = None
    # Secrets Manager keeps a deleted secret (and its name) this many days: 7-30, or 0 to delete at once.
    secret_recovery_window_days: int = 30
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
        seen: dict[str, int] = {}
        for i, allowed in enumerate(self.allowlist):
            if allowed.cidr in seen:
                first = seen[allowed.cidr]
                raise ValueError(
                    f"allowlist[{i}]: {allowed.cidr} is already allowlist[{first}]; list it once"
                )
            seen[allowed.cidr] = i
        if self.secret_recovery_window_days != 0 and not 7 <= self.secret_recovery_window_days <= 30:
            days = self.secret_recovery_window_days
            raise ValueError(f"secretRecoveryWindowDays must be 0 (delete at once) or 7 to 30, not {days}")
        self._check_wal_protection()
        if self.bastion is not None and self.admin_access is not None:
            raise ValueError(
                "bastion and adminAccess both say how this program reaches the database: keep one (bastion "
                "opens "
                "the SSH tunnel itself; adminAccess: {via: tunnel} uses one you started)"
            )
        if (
            self.source == "create"
            and not self.publicly_accessible
            and self.admin_access is None
            and not self.bastion
        ):
            raise ValueError(
                "the database will not be publicly accessible (publiclyAccessible: false), so this program "
                "can reach it, to create the replication user, only from inside its VPC. Say how: "
                "adminAccess: {via: vpc} when pulumi runs in the VPC (or reaches it by peering or VPN), "
                "or adminAccess: {via: tunnel, host: 127.0.0.1, port: 15432} through SSM port forwarding or "
                "an SSH tunnel via a bastion, or bastion: {host, username, privateKeyFile} to let the "
                "program "
                'open the SSH tunnel itself (infra/README.md, "Private databases"); or set '
                'publiclyAccessible: true'
            )
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
        parameters = self.parameters  # validates extra parameter names, values and apply methods
        instance_level = rds.split_by_level(self.engine, parameters)[1]
        if self.source == "adopt" and self.is_cluster and instance_level:
            raise ValueError(
                f"extraParameters: {', '.join(p.name for p in instance_level)} are instance-level parameters "
                "on Aurora; for a cluster it adopts, the program manages only the cluster parameter group: "
                "set them in the DB parameter group of the cluster's instances yourself"
            )
        return self

    def _check_wal_protection(self) -> None:
        keep = self.max_slot_wal_keep_size_gb
        if keep is not None and keep != -1 and keep <= 0:
            raise ValueError(
                f"maxSlotWalKeepSizeGb must be a number of GB above 0, or -1 (unbounded), not {keep:g}"
            )
        if keep is not None and keep != -1 and self.major < 13:
            raise ValueError(
                "maxSlotWalKeepSizeGb: max_slot_wal_keep_size exists from PostgreSQL 13 on; this is "
                f"PostgreSQL {self.major} (remove the key, and rely on the WAL alarms)"
            )
        if keep is not None and keep != -1 and self.is_cluster:
            raise ValueError(
                "maxSlotWalKeepSizeGb: Aurora PostgreSQL does not document max_slot_wal_keep_size (its WAL "
                "lives in the cluster volume); remove the key and rely on the WAL alarms"
            )
        budget = self.wal_budget
        if budget.keep_size_gb is not None and budget.keep_size_gb < budget.max_wal_size_gb:
            raise ValueError(
                f"maxSlotWalKeepSizeGb ({budget.keep_size_gb:g}) is below walAlarms.maxWalSizeGb "
                f"({budget.max_wal_size_gb:g}): the server would invalidate the slot before the replicator "
                "stops cleanly at its budget; raise the first or lower the second"
            )
        storage = self._known_storage_gb
        if storage is not None and budget.keep_size_gb is not None and budget.keep_size_gb >= storage:
            raise ValueError(
                f"maxSlotWalKeepSizeGb ({budget.keep_size_gb:g}) is not below allocatedStorageGb "
                f"({storage}): the disk would fill before the bound is reached"
            )

    @property
    def major(self) -> int:
        return rds.major_version(self.engine_version)

    @property
    def _known_storage_gb(self) -> int | None:
        # Only a database the program creates has a disk size we know here (Aurora storage grows by itself).
        return self.allocated_storage_gb if self.source == "create" and not self.is_cluster else None

    @property
    def wal_budget(self) -> wal.WalBudget:
        a = self.wal_alarms
        return wal.default_budget(
            self._known_storage_gb, a.max_wal_size_gb, self.max_slot_wal_keep_size_gb, a.free_storage_gb,
            a.alert_threshold_percent,
            # RDS for PostgreSQL 13+ only: see _check_wal_protection.
            keep_size_applies=self.is_rds and not self.is_cluster and self.major >= 13,
        )

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
        keep = self.wal_budget.keep_size_gb
        if keep is not None:
            required.append(rds.wal_keep_size_parameter(keep))
        merged = rds.merge_parameters(required, self.extra_parameters)
        return rds.validate_parameters(self.engine, merged, self.major)

    @property
    def engine_version_for_aws(self) -> str:
        """RDS instances get the major only, so AWS's automatic minor upgrades are not drift that Pulumi
        would try to undo; Aurora clusters get the version as written (their engine version is then ignored
        after creation, see database.py)."""
        return self.engine_version if self.is_cluster else str(self.major)

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


def _is_secret(key: str) -> bool:
    """Keys whose values are never quoted in a message (passwords, the bastion's key and passphrase)."""
    return any(word in key for word in ("password", "Password", "privateKey", "Passphrase"))


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
        not _is_secret(key)
        and isinstance(err.get("input"), (str, int, float))
        and err["type"] != "value_error"
    ):
        msg += f" (got {err['input']!r})"
    return f"{where}: {NAMESPACE}:{key}: {msg}" if key else f"{where}: {msg}"
