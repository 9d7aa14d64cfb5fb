"""One SSH tunnel: a connection to a bastion and a local forward, on 127.0.0.1, to one database.

libpq connects to the forward's local port (``hostaddr=127.0.0.1``); each accepted socket gets a
``direct-tcpip`` channel to the database through the SSH connection and two pump threads, one per
direction, so neither side can stall the other. The local port stays the same for the life of
the process: when the bastion goes away (sshd restarted, network drop), every forwarded socket is
closed, libpq reports a broken connection, the usual retry policy reconnects, and the next
``ensure()`` opens a new SSH connection behind the same port.

paramiko (not asyncssh): the replicator is threaded, not asyncio, and paramiko's blocking
channels fit a thread per direction; it is the SSH library COMMON.md names.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import paramiko

from replicator.config.connection import SshTunnelConfig
from replicator.ssh import keys
from replicator.ssh.errors import BastionUnreachable, ForwardFailed, TunnelError, TunnelRefused

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_WINDOW = 8 * 1024 * 1024  # channel window: a snapshot's COPY stream should not wait for acknowledgements
_MISSED_KEEPALIVES = 3  # unanswered keepalive intervals after which the bastion counts as gone


class Tunnel:
    """The SSH connection to ``settings.host`` and the local forward to ``target_host:target_port``."""

    def __init__(self, settings: SshTunnelConfig, target_host: str, target_port: int):
        self.settings = settings
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.local_port: int = self._listener.getsockname()[1]
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.connections_opened = 0  # SSH connections made: 1, plus one per reconnect
        self.channels_opened = 0
        self.last_failure: TunnelError | None = None
        self.last_failure_at = 0.0
        self._key: paramiko.PKey | None = None
        threading.Thread(target=self._accept_loop, name=f"ssh-forward-{self.local_port}", daemon=True).start()

    # -- naming ----------------------------------------------------------------------------------

    @property
    def bastion(self) -> str:
        return f"{self.settings.username}@{self.settings.host}:{self.settings.port}"

    @property
    def hop1(self) -> str:
        return f"ssh-tunnel hop 1 (this machine -> bastion {self.settings.host}:{self.settings.port})"

    @property
    def hop2(self) -> str:
        return (
            f"ssh-tunnel hop 2 (bastion {self.settings.host} -> database {self.target[0]}:{self.target[1]})"
        )

    # -- the SSH connection ----------------------------------------------------------------------

    def ensure(self) -> paramiko.Transport:
        """The live SSH connection, opened (or reopened after a loss) if need be."""
        with self._lock:
            if self._closed:
                raise BastionUnreachable(f"{self.hop1}: the tunnel is closed")
            t = self._transport
            if t is not None and t.is_active():
                return t
            if t is not None:
                log.warning("ssh-tunnel: lost the SSH connection to %s; reconnecting", self.bastion)
                t.close()
                self._transport = None
            t = self._connect()
            self._transport = t
            self.connections_opened += 1
            threading.Thread(target=self._watch, args=(t,), name=f"ssh-keepalive-{self.local_port}",
                             daemon=True).start()
            log.info("ssh-tunnel: %s:%d reached through %s (local forward 127.0.0.1:%d)",
                     self.target[0], self.target[1], self.bastion, self.local_port)
            return t

    def _connect(self) -> paramiko.Transport:
        s = self.settings
        try:
            # First: a key that cannot work needs no network. Kept: reconnecting must not need the store.
            key = self._key or keys.load_private_key(s)
        except keys.KeyProblem as p:  # a key from the credential store that does not load
            raise TunnelRefused(
                f"ssh-tunnel.{p.key}: {p.message}", "fix the key stored in the secret"
            ) from None
        try:
            sock = socket.create_connection((s.host, s.port), timeout=s.connect_timeout_s)
        except socket.gaierror as e:
            raise BastionUnreachable(f"{self.hop1}: cannot resolve {s.host}: {e.strerror or e}",
                                     "check ssh-tunnel.host") from None
        except OSError as e:
            raise BastionUnreachable(
                f"{self.hop1}: cannot connect: {_os_error(e)}",
                f"make sure the bastion runs sshd on port {s.port} and that its security group / "
                "firewall allows this machine",
            ) from None
        # A bastion that vanishes without closing the connection (network drop): keepalives left
        # unacknowledged fail the socket in the kernel; _watch() catches a peer that acknowledges but never
        # replies.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        s.keepalive_interval_s * _MISSED_KEEPALIVES * 1000)
        transport = paramiko.Transport(sock, default_window_size=_WINDOW)
        transport.banner_timeout = s.connect_timeout_s
        transport.handshake_timeout = s.connect_timeout_s
        try:
            known = keys.known_keys(s)
            options = transport.get_security_options()
            options.key_types = keys.preferred_algorithms(known, tuple(options.key_types))
            transport.start_client(timeout=s.connect_timeout_s)
            keys.verify_host_key(s, known, transport.get_remote_server_key())
            try:
                transport.auth_publickey(s.username, key)
            except paramiko.AuthenticationException as e:
                raise self._refused(key, e) from None
        except TunnelError:
            transport.close()
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            transport.close()
            raise BastionUnreachable(f"{self.hop1}: SSH handshake failed: {_os_error(e)}",
                                     f"check that {s.host}:{s.port} is an SSH server") from None
        self._key = key
        return transport

    def _watch(self, transport: paramiko.Transport) -> None:
        """Ask the bastion for a reply every keepalive interval; if none comes for ``_MISSED_KEEPALIVES``
        intervals, drop the connection (which breaks the forwarded ones: they are retried, and the next
        attempt reconnects). A bastion that vanished without closing the connection is found this way."""
        interval = self.settings.keepalive_interval_s
        while not self._closed and transport.is_active():
            time.sleep(interval)
            answered = threading.Event()
            threading.Thread(
                target=_ask,
                args=(transport, answered),
                name=f"ssh-keepalive-ask-{self.local_port}",
                daemon=True,
            ).start()
            if (
                not answered.wait(interval * _MISSED_KEEPALIVES)
                and transport.is_active()
                and not self._closed
            ):
                log.warning(
                    "ssh-tunnel: %s has not answered for %d s; dropping the SSH connection (the next "
                    "connection attempt reconnects)",
                    self.bastion,
                    interval * _MISSED_KEEPALIVES,
                )
                transport.close()
                return

    def _refused(self, key: paramiko.PKey, exc: Exception) -> TunnelRefused:
        s = self.settings
        origin = (
            "private-key-file"
            if s.private_key_file
            else ("private-key" if s.private_key else "credential-store")
        )
        where = s.where(origin) or s.where("username")
        prefix = f"{where}: " if where else ""
        return TunnelRefused(
            f"{prefix}{self.hop1}: the bastion refused our key ({keys.fingerprint(key)}) for user "
            f"{s.username!r}: {exc}",
            f"check ssh-tunnel.username and ssh-tunnel.{origin}, and that this public key is in "
            f"~{s.username}/.ssh/authorized_keys on the bastion",
        )

    def probe(self) -> None:
        """Hop 2 on its own: ask the bastion to connect to the database, then hang up (for ``check``)."""
        _close_channel(self._open_channel(("127.0.0.1", 0)))

    def _open_channel(self, origin: tuple[str, int]) -> paramiko.Channel:
        transport = self.ensure()
        s = self.settings
        try:
            chan = transport.open_channel("direct-tcpip", self.target, origin, window_size=_WINDOW,
                                          timeout=s.connect_timeout_s + 5)
        except paramiko.ChannelException as e:
            err = ForwardFailed(f"{self.hop2}: the bastion could not connect to the database: {e.text}",
                                _channel_hint(e.code))
            err.transient = e.code != paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            raise err from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise BastionUnreachable(
                f"{self.hop1}: the SSH connection failed while opening a forward: {_os_error(e)}",
                "retry; if it persists, check the bastion's sshd",
            ) from None
        self.channels_opened += 1
        return chan

    # -- the local forward -----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                local, peer = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.1)
                continue
            local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._forward, args=(local, peer), name=f"ssh-forward-{self.local_port}",
                             daemon=True).start()

    def _forward(self, local: socket.socket, peer: tuple[str, int]) -> None:
        try:
            chan = self._open_channel(peer)
        except TunnelError as e:
            # libpq sees the socket close and reports a broken connection (transient, retried);
            # connect() turns that into this error, which says which hop failed.
            self.last_failure, self.last_failure_at = e, time.monotonic()
            log.debug("ssh-tunnel: %s", e)
            _close(local)
            return
        threading.Thread(
            target=_pump, args=(local, chan, True), name=f"ssh-up-{self.local_port}", daemon=True
        ).start()
        _pump(local, chan, False)

    def failure_since(self, started: float) -> TunnelError | None:
        """The error that closed a forwarded socket after ``started`` (monotonic), if any."""
        return (
            self.last_failure if self.last_failure is not None and self.last_failure_at >= started else None
        )

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def drop_connection(self) -> None:
        """Close the SSH connection as a network failure would (tests); the next use reconnects."""
        with self._lock:
            if self._transport is not None:
                self._transport.close()


def _ask(transport: paramiko.Transport, answered: threading.Event) -> None:
    """One keepalive that wants a reply (any reply, even "unknown request", proves the bastion is there)."""
    try:
        transport.global_request("keepalive@openssh.com", wait=True)
    except (OSError, EOFError, paramiko.SSHException):
        return
    if transport.is_active():
        answered.set()


def _pump(local: socket.socket, chan: paramiko.Channel, upstream: bool) -> None:
    """Copy one direction until either side ends, then end both (which wakes the other direction)."""
    try:
        if upstream:
            while data := local.recv(_CHUNK):
                chan.sendall(data)
        else:
            while data := chan.recv(_CHUNK):
                local.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        _close_channel(chan)
        _close(local)


def _close_channel(chan: paramiko.Channel) -> None:
    try:
        chan.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the SSH connection is gone already, and the channel with it


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _os_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _channel_hint(code: Any) -> str:
    if code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
        return (
            "the bastion does not allow TCP forwarding for this user: set AllowTcpForwarding yes (and "
            "PermitOpen, "
            "if used, to include the database) in its sshd_config"
        )
    return (
        "check host and port as the bastion sees them, and that the database's security group allows "
        "the bastion"
    )
