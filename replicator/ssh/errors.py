"""What can go wrong with an SSH tunnel, sorted by what the caller should do about it.

No paramiko here: ``replicator.connect`` imports these for every connection, tunnelled or not.
"""

from __future__ import annotations

from replicator.errors import ReplicatorError


class TunnelError(ReplicatorError):
    """The SSH tunnel in front of a database could not be used: ``problem``, and what to do (``fix``)."""

    transient = False

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


class BastionUnreachable(TunnelError):
    """Hop 1 (this machine -> bastion) failed for a reason that may pass: network, sshd restarting.

    Retried like any transient connection failure.
    """

    transient = True


class ForwardFailed(TunnelError):
    """Hop 2 (bastion -> database) failed: the bastion could not open a connection to the database."""

    transient = True


class TunnelRefused(TunnelError):
    """A config value is at fault: the host key, the user key, its passphrase. Retrying cannot help."""

    exit_code = 2
