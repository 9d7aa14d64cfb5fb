"""The outputs the replicator needs, under the names ``replicator handoff`` reads."""

from __future__ import annotations

from typing import Any

import pulumi

from replicator.handoff import OutputNames as N


class Handoff(pulumi.ComponentResource):
    """Collects endpoint, database, secret, slots and publication; ``__main__`` exports them as stack
    outputs."""

    outputs: dict[str, pulumi.Output[Any]]

    def __init__(
        self,
        name: str,
        *,
        host: pulumi.Input[str],
        port: pulumi.Input[int],
        database: str,
        secret_arn: pulumi.Input[str],
        region: str,
        slots: dict[str, str],
        publication: str | None,
        ssl_mode: str,
        engine: str,
        replication_user: str,
        instance_identifier: str | None = None,
        cluster_identifier: str | None = None,
        ssh_tunnel: dict[str, Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:Handoff", name, None, opts)
        values: dict[str, pulumi.Input[Any] | None] = {
            N.HOST: host,
            N.PORT: port,
            N.DATABASE: database,
            N.SECRET_ARN: secret_arn,
            N.REGION: region,
            N.SLOTS: dict(slots),
            # A publication only matters to pgoutput slots.
            N.PUBLICATION: publication if "pgoutput" in slots.values() else None,
            N.SSL_MODE: ssl_mode,
            N.ENGINE: engine,
            N.USER: replication_user,
            N.INSTANCE_ID: instance_identifier,
            N.CLUSTER_ID: cluster_identifier,
            # The bastion, without its key or passphrase: the replicator goes in the same way.
            N.SSH_TUNNEL: ssh_tunnel,
        }
        self.outputs = {k: pulumi.Output.from_input(v) for k, v in values.items() if v is not None}
        self.register_outputs(self.outputs)
