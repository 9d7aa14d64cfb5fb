"""Connection config (source and destination), in the Arcion style."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from replicator.config.model import ConfigModel
from replicator.lsn import Lsn

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
LogDecoder = Literal["pgoutput", "wal2json"]


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


class SslConfig(ConfigModel):
    ssl_mode: SslMode = "prefer"
    root_cert: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None

    _files_exist = field_validator("root_cert", "ssl_cert", "ssl_key")(_existing_file)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> SslConfig:
        if (self.ssl_cert is None) != (self.ssl_key is None):
            raise ValueError(
                "ssl-cert and ssl-key must be given together (a client certificate needs its key)"
            )
        return self


class CredentialStore(ConfigModel):
    """Where to fetch username and password at start-up instead of writing them in the file."""

    type: Literal["AWS_SECRETS_MANAGER"]
    secret_id: str
    region: str | None = None


class SshTunnelConfig(ConfigModel):
    """``ssh-tunnel``: reach the database through a bastion, over a local forward (see ``replicator.ssh``).

    ``host``/``port`` of the enclosing connection are then as the bastion sees them (e.g. the RDS
    endpoint). Checks that read files (the key decrypts, known_hosts exists) run in ``load_connection``,
    where the line of the key at fault is known.
    """

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    private_key_file: Path | None = None
    private_key: SecretStr | None = None  # the key itself, e.g. from ${VAR}
    private_key_passphrase: SecretStr | None = None
    # A Secrets Manager secret holding the key: the key text, or JSON {"private-key",
    # "private-key-passphrase"}.
    credential_store: CredentialStore | None = None
    known_hosts_file: Path = Field(default=Path("~/.ssh/known_hosts"), validate_default=True)  # ~ expanded
    strict_host_key_checking: bool = True
    keepalive_interval_s: int = Field(default=15, ge=1, le=3600)
    connect_timeout_s: int = Field(default=10, ge=1, le=300)
    # "file:line" of each key as written, for errors found only when connecting (host key, refused key).
    _origin: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("private_key_file", "known_hosts_file")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("private_key_passphrase", mode="before")
    @classmethod
    def _passphrase_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_key(self) -> SshTunnelConfig:
        given = [
            k
            for k, v in (
                ("private-key-file", self.private_key_file),
                ("private-key", self.private_key),
                ("credential-store", self.credential_store),
            )
            if v is not None
        ]
        if not given:
            raise ValueError("a key is required: private-key-file, private-key or credential-store "
                             "(the bastion is reached with key authentication only)")
        if len(given) > 1:
            raise ValueError(f"give only one of {' and '.join(given)}")
        return self

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` (or of the ssh-tunnel block) for messages; empty when unknown."""
        return self._origin.get(key) or self._origin.get("", "")


class LogMonitoring(ConfigModel):
    max_wal_size_gb: float = Field(gt=0)
    alert_threshold_percent: int = Field(default=70, ge=50, le=80)


class SchemaChangesConfig(ConfigModel):
    """Destination only: what happens there when the source drops a column or a table while
    realtime streams (with the DDL capture installed), or between two delta-snapshot passes."""

    dropped_columns: Literal["drop", "keep"] = "drop"  # keep: the column stays, NULL in rows written later
    dropped_tables: Literal["keep", "drop"] = "keep"  # keep: the table stays as it was, no longer fed

    # Positions (LSNs) of schema changes the capture could not describe, which stop the stream, and
    # which the operator has made good at the destination by hand: the stream goes past them.
    accept_unfollowed: list[str] = []

    @field_validator("accept_unfollowed")
    @classmethod
    def _lsns(cls, values: list[str]) -> list[str]:
        for v in values:
            Lsn.parse(v)  # ValueError: "an LSN looks like 16/B374D848, got ..."
        return values


class ConnectionConfig(ConfigModel):
    type: Literal["POSTGRESQL"]
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    username: str | None = None
    password: SecretStr | None = None
    max_connections: int = Field(default=30, ge=1)
    socket_timeout_s: int = Field(default=60, ge=0)
    max_retries: int = Field(default=10, ge=0)
    retry_wait_duration_ms: int = Field(default=1000, ge=0)
    ssl: SslConfig | None = None
    credential_store: CredentialStore | None = None
    ssh_tunnel: SshTunnelConfig | None = None
    # Source only (used by realtime and full modes).
    replication_slots: dict[str, list[LogDecoder]] | None = None
    publication: str | None = None
    log_reader_type: Literal["STREAM", "SQL"] = "STREAM"
    log_monitoring: LogMonitoring | None = None
    # wal2json 2.5 prints NaN and ±Infinity of numeric/real/double precision as null: refused
    # unless accepted here by name (source/wal2json_nan.py).
    wal2json_nan_becomes_null: bool = False
    # AWS identifiers for `replicator check` (optional; inferred from an RDS endpoint otherwise).
    aws_region: str | None = None
    db_instance_identifier: str | None = None
    db_cluster_identifier: str | None = None
    # Destination only.
    deletes: Literal["hard", "soft"] = "hard"
    schema_changes: SchemaChangesConfig = SchemaChangesConfig()

    @field_validator("type", mode="before")
    @classmethod
    def _type_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("password", mode="before")
    @classmethod
    def _password_as_text(cls, value: object) -> object:
        # YAML reads `password: 1234` as a number; it is still a password.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("replication_slots")
    @classmethod
    def _slots(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for name, plugins in (value or {}).items():
            if not _SLOT_NAME.match(name):
                raise ValueError(
                    f"slot name {name!r} is invalid: use 1-63 lower-case letters, digits and underscores"
                )
            if len(plugins) != 1:
                raise ValueError(
                    f"slot {name!r} needs exactly one decoder (pgoutput or wal2json), got {plugins}"
                )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> ConnectionConfig:
        if self.credential_store is None and self.username is None:
            raise ValueError("username is required (or a credential-store to fetch it from)")
        return self

    @model_validator(mode="after")
    def _tunnel_needs_tcp(self) -> ConnectionConfig:
        if self.ssh_tunnel is not None and self.host.startswith("/"):
            raise ValueError(f"host {self.host!r} is a socket directory; through an ssh-tunnel, host is the "
                             "database's address as the bastion sees it")
        return self

    @property
    def slots(self) -> dict[str, str]:
        """Slot name -> decoder plugin."""
        return {name: plugins[0] for name, plugins in (self.replication_slots or {}).items()}
