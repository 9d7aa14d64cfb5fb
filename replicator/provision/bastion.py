"""The provisioning program's own SSH tunnel: stack config ``replicator:bastion`` -> the admin connection.

With a bastion, the dynamic providers (replication user, RDS attachment) reach a private database
through the replicator's own tunnel (``replicator.ssh``), opened in the provider's process: no
``ssh -L`` or SSM session to start by hand, and ``sslMode: verify-full`` keeps verifying the
endpoint's name (libpq gets ``host`` = endpoint, ``hostaddr`` = the forward).

The bastion settings travel in the providers' inputs (``props["bastion"]``), which Pulumi keeps
in the stack's state: the program passes them as a Pulumi secret (a private key or passphrase
must never sit there in clear text), under the kebab-case keys of the ``ssh-tunnel`` block.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from replicator import ssh
from replicator.config.connection import ConnectionConfig, SshTunnelConfig
from replicator.provision.adminsession import AccessError

# Stack config (camelCase) -> ssh-tunnel key (kebab-case); ``knownHosts`` (the lines themselves) is ours.
STACK_KEYS = {
    "host": "host",
    "port": "port",
    "username": "username",
    "privateKeyFile": "private-key-file",
    "privateKey": "private-key",
    "privateKeyPassphrase": "private-key-passphrase",
    "knownHostsFile": "known-hosts-file",
    "strictHostKeyChecking": "strict-host-key-checking",
}


def tunnel_settings(bastion: dict[str, Any]) -> SshTunnelConfig:
    """``props["bastion"]`` (kebab-case ssh-tunnel keys, plus ``known-hosts`` text) as validated settings."""
    values = {k: v for k, v in bastion.items() if v is not None and k != "known-hosts"}
    if "port" in values:
        values["port"] = int(values["port"])  # Pulumi hands numbers over as floats
    if bastion.get("known-hosts"):
        values["known-hosts-file"] = str(_known_hosts_file(str(bastion["known-hosts"])))
    try:
        return SshTunnelConfig.model_validate(values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'bastion'}: {err['msg']}" for err in e.errors()
        )
        raise AccessError(f"replicator:bastion: {problems}") from None


def admin_route(props: dict[str, Any]) -> dict[str, Any] | None:
    """libpq's ``host``/``hostaddr``/``port`` through the bastion (the tunnel opened and both hops tested);
    None without a bastion."""
    bastion = props.get("bastion")
    if not bastion:
        return None
    settings = tunnel_settings(bastion)
    cfg = ConnectionConfig.model_validate(
        {
            "type": "POSTGRESQL",
            "host": props["host"],
            "port": int(props["port"]),
            "database": props["database"],
            "username": props["admin_user"],
            "ssh-tunnel": settings,
        }
    )
    tunnel = ssh.tunnel_for(cfg)
    try:
        tunnel.ensure()
        tunnel.probe()  # hop 2 now: "the bastion cannot reach the database" beats a libpq timeout
    except ssh.TunnelError as e:
        raise AccessError(f"replicator:bastion: {e}") from None
    return {"host": str(props["host"]), **ssh.libpq_params(cfg)}


_known_hosts_files: dict[str, Path] = {}


def _known_hosts_file(lines: str) -> Path:
    """``knownHosts`` given as text (CI): a file in a private directory of this process (never a shared,
    guessable path in /tmp, which another local user could have filled with a key of their own)."""
    found = _known_hosts_files.get(lines)
    if found is None:
        directory = Path(tempfile.mkdtemp(prefix="replicator-known-hosts-"))  # mode 0700
        found = directory / "known_hosts"
        found.write_text(lines if lines.endswith("\n") else lines + "\n")
        _known_hosts_files[lines] = found
    return found
