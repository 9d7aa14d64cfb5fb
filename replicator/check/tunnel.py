"""``replicator check`` through an ``ssh-tunnel``: each hop on its own, before the database checks.

Hop 1 is this machine to the bastion (reachable, host key as in known_hosts, our key accepted),
hop 2 the bastion to the database (a ``direct-tcpip`` channel opened and closed at once). The
database login that follows is the ``connect`` check, as without a tunnel.
"""

from __future__ import annotations

from replicator import ssh
from replicator.check.report import CheckResult, fail, ok, warn
from replicator.config.connection import ConnectionConfig


def check_tunnel(cfg: ConnectionConfig, layer: str) -> list[CheckResult]:
    """Results for both hops (empty without an ssh-tunnel); a failed hop ends the list."""
    settings = cfg.ssh_tunnel
    if settings is None:
        return []
    from replicator.ssh.keys import keyscan  # paramiko: only with a tunnel

    tunnel = ssh.tunnel_for(cfg)
    try:
        tunnel.ensure()
    except ssh.TunnelError as e:
        return [fail(layer, "ssh bastion", e.problem, e.fix or "see the message")]
    if settings.strict_host_key_checking:
        bastion = ok(
            layer,
            "ssh bastion",
            f"{tunnel.bastion}: host key matches {settings.known_hosts_file}, key accepted",
        )
    else:
        bastion = warn(
            layer, "ssh bastion",
            f"{tunnel.bastion}: key accepted, but the host key is not verified if it is missing from "
            f"{settings.known_hosts_file} (strict-host-key-checking: false)",
            f"add the bastion's key to known_hosts ({keyscan(settings)}) and remove strict-host-key-checking",
        )
    try:
        tunnel.probe()
    except ssh.TunnelError as e:
        return [bastion, fail(layer, "ssh forward", e.problem, e.fix or "see the message")]
    return [bastion, ok(layer, "ssh forward", f"the bastion reaches {cfg.host}:{cfg.port}")]

