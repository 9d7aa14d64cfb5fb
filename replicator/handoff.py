"""The hand-off: Pulumi stack outputs -> a ready source connection config for the replicator.

``pulumi stack output --json`` prints the outputs the program exports (names in ``OUTPUT_NAMES``);
this turns them into the YAML a user passes as ``--source``. The password never appears: the
config names the Secrets Manager secret, which the replicator reads at start-up.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from replicator.config.connection import ConnectionConfig
from replicator.config.model import validate
from replicator.config.yamlfile import parse_yaml
from replicator.errors import ConfigError


class OutputNames:
    """The stack outputs the program exports and the hand-off reads (one place for both sides)."""

    HOST = "host"
    PORT = "port"
    DATABASE = "database"
    SECRET_ARN = "secretArn"
    REGION = "region"
    SLOTS = "slots"
    PUBLICATION = "publication"
    SSL_MODE = "sslMode"
    ENGINE = "engine"
    INSTANCE_ID = "dbInstanceIdentifier"
    CLUSTER_ID = "dbClusterIdentifier"
    USER = "replicationUser"
    SSH_TUNNEL = "sshTunnel"  # replicator:bastion without its secrets (ssh-tunnel keys, plus known-hosts)


REQUIRED = (
    OutputNames.HOST,
    OutputNames.PORT,
    OutputNames.DATABASE,
    OutputNames.SECRET_ARN,
    OutputNames.REGION,
)
_SECRET_PLACEHOLDER = "[secret]"
# A bastion key given inline in the stack config (a secret) is not handed over: the config reads it
# from this variable where the replicator runs.
SSH_KEY_VARIABLE = "REPLICATOR_SSH_PRIVATE_KEY"
SSH_PASSPHRASE_VARIABLE = "REPLICATOR_SSH_KEY_PASSPHRASE"
_VARIABLES = (SSH_KEY_VARIABLE, SSH_PASSPHRASE_VARIABLE)


def read_stack_outputs(source: str) -> dict[str, Any]:
    """Read ``pulumi stack output --json`` from a file, or from standard input when ``source`` is ``-``."""
    name = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: file not found (expected the output of `pulumi stack output --json`)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{name}:{e.lineno}: not JSON ({e.msg}); produce it with `pulumi stack output --json`"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a JSON object of stack outputs, got {type(data).__name__}")
    return data


def source_config(outputs: Mapping[str, Any], origin: str = "stack outputs") -> dict[str, Any]:
    """The source connection config (as a mapping ready for YAML) described by the stack outputs."""
    missing = [k for k in REQUIRED if outputs.get(k) in (None, "")]
    if missing:
        raise ConfigError(
            f"{origin}: missing output(s) {', '.join(missing)}: is this the replicator stack, and has "
            "`pulumi up` completed?"
        )
    hidden = [k for k, v in outputs.items() if v == _SECRET_PLACEHOLDER]
    if hidden:
        raise ConfigError(
            f"{origin}: output(s) {', '.join(hidden)} are hidden as [secret]; add --show-secrets"
        )
    try:
        port = int(outputs[OutputNames.PORT])
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: output port must be a number, got {outputs[OutputNames.PORT]!r}"
        ) from None
    config: dict[str, Any] = {
        "type": "POSTGRESQL",
        "host": str(outputs[OutputNames.HOST]),
        "port": port,
        "database": str(outputs[OutputNames.DATABASE]),
        "credential-store": {
            "type": "AWS_SECRETS_MANAGER",
            "secret-id": str(outputs[OutputNames.SECRET_ARN]),
            "region": str(outputs[OutputNames.REGION]),
        },
    }
    if outputs.get(OutputNames.SSL_MODE):
        config["ssl"] = {"ssl-mode": str(outputs[OutputNames.SSL_MODE])}
    slots = outputs.get(OutputNames.SLOTS) or {}
    if not isinstance(slots, dict):
        raise ConfigError(f"{origin}: output slots must map slot names to decoders, got {slots!r}")
    if slots:
        config["replication-slots"] = {str(name): [str(plugin)] for name, plugin in slots.items()}
    if outputs.get(OutputNames.PUBLICATION):
        config["publication"] = str(outputs[OutputNames.PUBLICATION])
    config["aws-region"] = str(outputs[OutputNames.REGION])
    for output, key in (
        (OutputNames.INSTANCE_ID, "db-instance-identifier"),
        (OutputNames.CLUSTER_ID, "db-cluster-identifier"),
    ):
        if outputs.get(output):
            config[key] = str(outputs[output])
    tunnel = outputs.get(OutputNames.SSH_TUNNEL)
    if tunnel:
        if not isinstance(tunnel, dict):
            raise ConfigError(f"{origin}: output {OutputNames.SSH_TUNNEL} must be a mapping, got {tunnel!r}")
        config["ssh-tunnel"] = _ssh_tunnel(tunnel)
    return config


def _ssh_tunnel(tunnel: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ssh-tunnel`` block: the bastion the program went through is the replicator's way in too."""
    block: dict[str, Any] = {
        "host": str(tunnel["host"]),
        "port": int(tunnel.get("port") or 22),
        "username": str(tunnel["username"]),
    }
    if tunnel.get("private-key-file"):
        block["private-key-file"] = str(tunnel["private-key-file"])
    else:
        block["private-key"] = "${" + SSH_KEY_VARIABLE + "}"
    if tunnel.get("private-key-encrypted"):
        block["private-key-passphrase"] = "${" + SSH_PASSPHRASE_VARIABLE + "}"
    if tunnel.get("known-hosts-file"):
        block["known-hosts-file"] = str(tunnel["known-hosts-file"])
    if tunnel.get("strict-host-key-checking") is False:
        block["strict-host-key-checking"] = False
    return block


def _known_hosts_lines(outputs: Mapping[str, Any]) -> str | None:
    tunnel = outputs.get(OutputNames.SSH_TUNNEL)
    if isinstance(tunnel, dict) and tunnel.get("known-hosts") and not tunnel.get("known-hosts-file"):
        return str(tunnel["known-hosts"]).strip() + "\n"
    return None


def render(config: Mapping[str, Any], origin: str, known_hosts: str | None = None) -> str:
    header = (
        f"# Source connection for replicator, generated by `replicator handoff` from {origin}.\n"
        "# The credentials are read from AWS Secrets Manager at start-up (credential-store).\n"
    )
    tunnel = config.get("ssh-tunnel") or {}
    for key, variable in zip(("private-key", "private-key-passphrase"), _VARIABLES, strict=True):
        if key in tunnel:
            header += f"# The bastion's {key} is read from ${variable} (the stack keeps it secret).\n"
    if known_hosts is not None:
        header += "# Add the bastion's host key to ~/.ssh/known_hosts:\n" + "".join(
            f"#   {line}\n" for line in known_hosts.splitlines() if line.strip()
        )
    return header + yaml.safe_dump(dict(config), sort_keys=False)


def handoff(stack_outputs: str, output: str | None = None, force: bool = False) -> str:
    """Read the outputs, write the config to ``output`` (or return it when None); always validated first.

    An existing ``output`` is replaced only with ``force``; the file is written mode 0600 (it
    names the secret that holds the database password).
    """
    outputs = read_stack_outputs(stack_outputs)
    origin = "standard input" if stack_outputs == "-" else stack_outputs
    config = source_config(outputs, origin)
    known_hosts = _known_hosts_lines(outputs)
    target = Path(output) if output else Path("(generated source config)")
    hosts_file = target.with_name(target.name + ".known_hosts")
    if known_hosts is not None and output:
        # The bastion's host key (stack config knownHosts) beside the config, which points at it.
        config["ssh-tunnel"]["known-hosts-file"] = str(hosts_file.resolve())
    text = render(config, "`pulumi stack output --json`", None if output else known_hosts)
    # Refuse to hand over anything the replicator itself would refuse (the key variable is read
    # where the replicator runs, not here).
    checked = text
    for variable in _VARIABLES:
        checked = checked.replace("${" + variable + "}", "(read at start-up)")
    validate(ConnectionConfig, parse_yaml(checked, target), "source connection")
    if output:
        written = [target] + ([hosts_file] if known_hosts is not None else [])
        if not force and (there := [p for p in written if p.exists()]):  # refused before either is written
            raise ConfigError(f"{there[0]}: exists already; add --force to replace it")
        if known_hosts is not None:
            _write_private(hosts_file, known_hosts, force)
        _write_private(target, text, force)
    return text


def _write_private(target: Path, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise ConfigError(f"{target}: exists already; add --force to replace it") from None
    except OSError as e:
        raise ConfigError(f"{target}: cannot write: {e.strerror or e}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file replaced with --force keeps no wider mode
        f.write(text)


def run_handoff(stack_outputs: str, output: str | None, force: bool = False) -> int:
    """``replicator handoff``: print the config, or write it and say where."""
    text = handoff(stack_outputs, output, force)
    if output:
        print(
            f"wrote {output}: use it as --source (run `replicator check --source {output}` first)",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0
