"""A throwaway OpenSSH server: ``sshd -D -f CONFIG`` on a free port, key-only, forwarding allowed.

Debian's ``openssh-server`` (installed by scripts/setup.sh). Keys come from ``ssh-keygen``; the
server logs at DEBUG1, so tests can read ``server_request_direct_tcpip`` lines: the proof that
a connection really went through the bastion.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.localpg import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path, passphrase: str = "", kind: str = "ed25519", fmt: str = "RFC4716") -> Path:
    """A new private key at ``path`` (public key at ``path.pub``); ``fmt``: RFC4716 (OpenSSH), PEM or
    PKCS8."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-m", fmt, "-N", passphrase, "-C", "replicator-test",
                    "-f", str(path)], check=True)
    return path


def public_line(key: Path) -> str:
    return Path(f"{key}.pub").read_text().strip()


@dataclass
class Sshd:
    """One throwaway sshd; ``stop()`` ends its connections too, as a bastion reboot would."""

    root: Path
    port: int
    user_key: Path
    known_hosts: Path
    username: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.root / "sshd_config"

    @property
    def log_file(self) -> Path:
        return self.root / "sshd.log"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    def write_config(self) -> None:
        self.config_file.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_key'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PidFile none",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "MaxStartups 100",
            "LogLevel DEBUG1",
        ]) + "\n")

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config_file), "-E", str(self.log_file)],
                                     start_new_session=True)  # Ctrl-C of pytest does not reach it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self.proc.returncode}: {self.log_file.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start within 10 s")

    def stop(self) -> None:
        """Kill sshd and its per-connection children (they call setsid(), so the process group is not
        enough)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def tunnel(self, **overrides: Any) -> dict[str, Any]:
        """An ``ssh-tunnel`` block for this server."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.username,
            "private-key-file": str(self.user_key),
            "known-hosts-file": str(self.known_hosts),
            **overrides,
        }

    def forwards(self) -> list[str]:
        """sshd's log lines for forwarded connections (one per channel the tunnel opened)."""
        return [line for line in self.log_file.read_text(errors="replace").splitlines()
                if "server_request_direct_tcpip" in line]

    def forwards_to(self, port: int) -> int:
        return sum(1 for line in self.forwards() if re.search(rf"target 127\.0\.0\.1 port {port}\b", line))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def make_sshd(root: Path) -> Sshd:
    if not Path(SSHD).exists():
        raise RuntimeError("sshd not found: install openssh-server (scripts/setup.sh does)")
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_key")
    user_key = keygen(root / "user_key")
    port = free_port()
    known_hosts = root / "known_hosts"
    kind, blob = public_line(host_key).split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    server = Sshd(root, port, user_key, known_hosts)
    server.authorized_keys.write_text(public_line(user_key) + "\n")
    server.write_config()
    server.start()
    return server
