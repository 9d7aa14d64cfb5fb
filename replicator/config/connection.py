"""Connection config (source and destination), in the Arcion style."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from replicator.config.model import ConfigModel

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


class LogMonitoring(ConfigModel):
    max_wal_size_gb: float = Field(gt=0)
    alert_threshold_percent: int = Field(default=70, ge=50, le=80)


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
    # Source only (used by realtime and full modes).
    replication_slots: dict[str, list[LogDecoder]] | None = None
    publication: str | None = None
    log_reader_type: Literal["STREAM", "SQL"] = "STREAM"
    log_monitoring: LogMonitoring | None = None
    # AWS identifiers for `replicator check` (optional; inferred from an RDS endpoint otherwise).
    aws_region: str | None = None
    db_instance_identifier: str | None = None
    db_cluster_identifier: str | None = None
    # Destination only.
    deletes: Literal["hard", "soft"] = "hard"

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

    @property
    def slots(self) -> dict[str, str]:
        """Slot name -> decoder plugin."""
        return {name: plugins[0] for name, plugins in (self.replication_slots or {}).items()}
