"""Connect through SSH: the ``ssh-tunnel`` block of a connection config.

Every connection to a tunnelled server goes through one ``Tunnel`` per server per process
(``tunnel.py``), shared by the sessions, the replication connection, snapshot workers, ``check``
and ``status``. ``replicator.connect`` calls two functions here and nothing else:

- ``libpq_params(cfg)``: ``hostaddr=127.0.0.1`` and the forward's local port. ``host`` stays the
  configured name, so ``ssl-mode: verify-full`` checks the database's real name, and nothing that
  identifies the server (the checkpoint ``job_id``, messages) ever sees the local port.
- ``ensure(cfg)``: opens (or reopens) the SSH connection before each connection attempt, so a
  bastion that went away is a transient failure under the usual retry policy.

paramiko is imported only when a config has an ``ssh-tunnel``.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from replicator.config.connection import ConnectionConfig, SshTunnelConfig
from replicator.ssh.errors import BastionUnreachable, ForwardFailed, TunnelError, TunnelRefused

if TYPE_CHECKING:
    from replicator.ssh.tunnel import Tunnel

__all__ = [
    "BastionUnreachable", "ForwardFailed", "TunnelError", "TunnelRefused",
    "close_all", "ensure", "failure_since", "libpq_params", "tunnel_for",
]

_tunnels: dict[tuple[object, ...], Tunnel] = {}
_lock = threading.Lock()


def _identity(settings: SshTunnelConfig, host: str, port: int) -> tuple[object, ...]:
    """Which configs share a tunnel: same bastion, user, key and host-key rules, same database."""
    inline = settings.private_key.get_secret_value() if settings.private_key else ""
    return (
        settings.host, settings.port, settings.username, str(settings.private_key_file),
        hashlib.sha256(inline.encode()).hexdigest(), settings.credential_store,
        str(settings.known_hosts_file), settings.strict_host_key_checking, host, port,
    )


def tunnel_for(cfg: ConnectionConfig) -> Tunnel:
    """This process's tunnel to ``cfg``'s server (its local forward is listening; SSH may not be up yet)."""
    assert cfg.ssh_tunnel is not None
    from replicator.ssh.tunnel import Tunnel

    key = _identity(cfg.ssh_tunnel, cfg.host, cfg.port)
    with _lock:
        found = _tunnels.get(key)
        if found is None:
            found = _tunnels[key] = Tunnel(cfg.ssh_tunnel, cfg.host, cfg.port)
        return found


def libpq_params(cfg: ConnectionConfig) -> dict[str, object]:
    """What replaces ``port`` (and adds ``hostaddr``) in the libpq parameters; empty without a tunnel."""
    if cfg.ssh_tunnel is None:
        return {}
    return {"hostaddr": "127.0.0.1", "port": tunnel_for(cfg).local_port}


def ensure(cfg: ConnectionConfig) -> None:
    """Open the SSH connection if it is not (a TunnelError otherwise); a no-op without a tunnel."""
    if cfg.ssh_tunnel is not None:
        tunnel_for(cfg).ensure()


def failure_since(cfg: ConnectionConfig, started: float) -> TunnelError | None:
    """Why the tunnel closed a connection attempted since ``started`` (``time.monotonic()``), if it did."""
    if cfg.ssh_tunnel is None:
        return None
    found = tunnel_for(cfg).failure_since(started)
    if found is None:
        return None
    copy = type(found)(
        found.problem, found.fix
    )  # each caller raises its own instance (tracebacks are per raise)
    copy.transient = found.transient
    return copy


def close_all() -> None:
    """Close every tunnel of this process (tests; a process's tunnels otherwise live as long as it)."""
    with _lock:
        tunnels = list(_tunnels.values())
        _tunnels.clear()
    for t in tunnels:
        t.close()
