"""Loading and validating the YAML config files (connection, filter, extractor)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from replicator import logs
from replicator.config.connection import ConnectionConfig, SshTunnelConfig
from replicator.config.extractor import ExtractorConfig
from replicator.config.filter import FilterConfig
from replicator.config.model import validate
from replicator.config.yamlfile import YamlDoc, load_yaml
from replicator.errors import ConfigError

__all__ = [
    "ConfigFile",
    "ConnectionConfig",
    "ExtractorConfig",
    "FilterConfig",
    "load_connection",
    "load_extractor",
    "load_filter",
]

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

Role = Literal["source", "destination"]

_SOURCE_ONLY = (
    "replication-slots", "publication", "log-monitoring", "log-reader-type", "wal2json-nan-becomes-null"
)
_DESTINATION_ONLY = ("deletes",)


@dataclass(frozen=True)
class ConfigFile(Generic[T]):
    """A validated config value and the document it came from (None for built-in defaults)."""

    value: T
    doc: YamlDoc | None = None

    def where(self, *loc: str | int) -> str:
        """``file:line`` of a key, for messages about values that only later prove wrong."""
        return self.doc.where(self.doc.written(tuple(loc))) if self.doc else "(defaults)"


def load_connection(path: str | os.PathLike[str], role: Role) -> ConfigFile[ConnectionConfig]:
    doc = load_yaml(path)
    value = validate(ConnectionConfig, doc, f"{role} connection")
    if value.credential_store is not None and value.password is not None:
        raise ConfigError(
            f"{doc.where(('password',))}: password: not allowed together with credential-store (the secret "
            f"supplies the password): remove one of them"
        )
    if value.password is not None:
        logs.register_secret(value.password.get_secret_value())
    wrong = _DESTINATION_ONLY if role == "source" else _SOURCE_ONLY
    for key in wrong:
        if isinstance(doc.data, dict) and key in doc.data:
            other = "destination" if role == "source" else "source"
            raise ConfigError(f"{doc.where((key,))}: {key}: only valid in a {other} connection config")
    if value.ssh_tunnel is not None:
        _check_ssh_tunnel(value.ssh_tunnel, doc)
    return ConfigFile(value, doc)


def _check_ssh_tunnel(settings: SshTunnelConfig, doc: YamlDoc) -> None:
    """Before any connection: the key loads and decrypts, known_hosts is there; remember where each key is."""
    block = doc.data.get("ssh-tunnel") if isinstance(doc.data, dict) else None
    written = block if isinstance(block, dict) else {}
    settings._origin = {"": doc.where(("ssh-tunnel",)), **{k: doc.where(("ssh-tunnel", k)) for k in written}}
    if settings.private_key_passphrase is not None:
        logs.register_secret(settings.private_key_passphrase.get_secret_value())
    from replicator.ssh.keys import config_problems  # paramiko: only for configs that use a tunnel

    problems = config_problems(settings)
    if problems:
        raise ConfigError("\n".join(
            f"{doc.where(('ssh-tunnel', p.key))}: ssh-tunnel.{p.key}: {p.message}" for p in problems
        ))
    key_file = settings.private_key_file
    if key_file is not None and key_file.stat().st_mode & 0o077:
        log.warning(
            "%s: ssh-tunnel.private-key-file %s can be read by other users of this machine (mode %o); "
            "OpenSSH would refuse it: chmod 600 %s",
            settings.where("private-key-file"),
            key_file,
            key_file.stat().st_mode & 0o777,
            key_file,
        )
    if not settings.strict_host_key_checking:
        log.warning(
            "%s: ssh-tunnel.strict-host-key-checking is false: a bastion missing from %s is accepted without "
            "verifying its identity, so whoever can intercept the connection can read and change everything "
            "sent through it. Add the bastion's key to that file (ssh-keyscan -p %d %s, after checking its "
            "fingerprint) and remove this setting",
            settings.where("strict-host-key-checking") or doc.path, settings.known_hosts_file, settings.port,
            settings.host,
        )


def load_filter(path: str | os.PathLike[str] | None) -> ConfigFile[FilterConfig] | None:
    if path is None:
        return None
    doc = load_yaml(path)
    return ConfigFile(validate(FilterConfig, doc, "filter"), doc)


def load_extractor(path: str | os.PathLike[str] | None) -> ConfigFile[ExtractorConfig]:
    if path is None:
        return ConfigFile(ExtractorConfig())
    doc = load_yaml(Path(path))
    return ConfigFile(validate(ExtractorConfig, doc, "extractor"), doc)
