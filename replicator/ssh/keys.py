"""Keys of an SSH tunnel: our private key (file, inline or credential store) and the bastion's host key.

Private keys are classified with ``cryptography`` first (paramiko's own loader reports a wrong
passphrase on an OpenSSH key as "no BEGIN/END delimiters"), so each failure names the config key
at fault. Host keys are checked against known_hosts (hashed entries included) by us, not by a
paramiko policy, so that nothing is ever written to that file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
from dataclasses import dataclass

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from replicator import logs
from replicator.config.connection import SshTunnelConfig
from replicator.ssh.errors import TunnelRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyProblem(Exception):
    """A private-key or known-hosts setting that cannot work; ``key`` is the ssh-tunnel key at fault."""

    key: str
    message: str

    def __str__(self) -> str:
        return self.message


_PARAMIKO_CLASS: list[tuple[type, type[paramiko.PKey]]] = [
    (rsa.RSAPrivateKey, paramiko.RSAKey),
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
]

# Decrypting an OpenSSH key runs bcrypt (deliberately slow): once per key and passphrase per process.
_parsed: dict[bytes, paramiko.PKey] = {}
_parsed_lock = threading.Lock()


def parse_private_key(text: str, passphrase: str | None, what: str) -> paramiko.PKey:
    """The paramiko key in ``text`` (OpenSSH or PEM format); ``what`` names its origin in messages."""
    digest = hashlib.sha256(text.encode() + b"\0" + (passphrase or "").encode()).digest()
    with _parsed_lock:
        if digest in _parsed:
            return _parsed[digest]
    data = text.encode()
    load = (
        serialization.load_ssh_private_key
        if b"OPENSSH PRIVATE KEY" in data
        else serialization.load_pem_private_key
    )
    try:
        loaded = load(data, None)
    except TypeError:  # encrypted
        if not passphrase:
            raise KeyProblem(
                "private-key-passphrase",
                f"{what} is encrypted: set private-key-passphrase (e.g. ${{BASTION_KEY_PASSPHRASE}})",
            ) from None
        try:
            loaded = load(data, passphrase.encode())
        except ValueError:
            raise KeyProblem(
                "private-key-passphrase", f"private-key-passphrase does not decrypt {what}"
            ) from None
    except ValueError:
        hint = " (that is a public key: give the private one, the file without .pub)" if text.startswith(
            ("ssh-", "ecdsa-")) else ""
        raise KeyProblem("", f"{what} is not a private key in OpenSSH or PEM format{hint}") from None
    except UnsupportedAlgorithm as e:
        raise KeyProblem(
            "", f"{what}: unsupported key type ({e}); use an Ed25519, ECDSA or RSA key"
        ) from None
    cls = next((pk for crypto, pk in _PARAMIKO_CLASS if isinstance(loaded, crypto)), None)
    if cls is None:
        raise KeyProblem(
            "", f"{what}: unsupported key type {type(loaded).__name__}; use an Ed25519, ECDSA or RSA key"
        )
    # Handed to paramiko decrypted, in OpenSSH format: its own readers know neither PKCS#8 ("BEGIN
    # ENCRYPTED PRIVATE KEY") nor how to skip a second, deliberately slow, decryption.
    plain = loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
    key = cls.from_private_key(io.StringIO(plain))
    with _parsed_lock:
        _parsed[digest] = key
    return key


def private_key_text(settings: SshTunnelConfig) -> tuple[str, str | None, str, str]:
    """``(key text, passphrase, what, config key)`` from wherever ``settings`` says the key is."""
    passphrase = (
        settings.private_key_passphrase.get_secret_value() if settings.private_key_passphrase else None
    )
    if settings.private_key_file is not None:
        path = settings.private_key_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KeyProblem("private-key-file", f"private-key-file {path}: cannot read: {e}") from None
        return text, passphrase, f"private-key-file {path}", "private-key-file"
    if settings.private_key is not None:
        text = _as_pem(settings.private_key.get_secret_value())
        _register_key(text)
        return text, passphrase, "private-key", "private-key"
    assert settings.credential_store is not None  # guaranteed by SshTunnelConfig
    text, stored_passphrase = _key_from_store(settings)
    return (
        text,
        stored_passphrase or passphrase,
        f"the key in secret {settings.credential_store.secret_id!r}",
        "credential-store",
    )


def load_private_key(settings: SshTunnelConfig) -> paramiko.PKey:
    """Our key, decrypted; a ``TunnelRefused`` naming ``file:line`` of the setting at fault otherwise."""
    text, passphrase, what, origin = private_key_text(settings)
    try:
        return parse_private_key(text, passphrase, what)
    except KeyProblem as p:
        key = p.key or origin
        fix = (
            "set ssh-tunnel.private-key-passphrase to the key's passphrase"
            if key == "private-key-passphrase"
            else f"give ssh-tunnel.{key} a private key in OpenSSH or PEM format"
        )
        raise TunnelRefused(_located(settings, key, f"ssh-tunnel.{key}: {p.message}"), fix) from None


def config_problems(settings: SshTunnelConfig) -> list[KeyProblem]:
    """What can be known wrong before connecting: the key does not load, known_hosts is missing."""
    problems = []
    if settings.private_key_file is not None and not settings.private_key_file.is_file():
        problems.append(KeyProblem("private-key-file", f"file not found: {settings.private_key_file}"))
    elif settings.credential_store is None:  # a stored key is read when the tunnel opens
        try:
            text, passphrase, what, origin = private_key_text(settings)
            parse_private_key(text, passphrase, what)
        except KeyProblem as p:
            problems.append(KeyProblem(p.key or origin, p.message))
    if settings.strict_host_key_checking and not settings.known_hosts_file.is_file():
        problems.append(KeyProblem(
            "known-hosts-file",
            f"file not found: {settings.known_hosts_file} (the bastion's host key is verified against it); "
            f"add the key once you have checked its fingerprint: {keyscan(settings)}",
        ))
    return problems


def keyscan(settings: SshTunnelConfig) -> str:
    return f"ssh-keyscan -p {settings.port} {settings.host} >> {settings.known_hosts_file}"


# -- the bastion's host key ------------------------------------------------------------------------


def known_host_name(host: str, port: int) -> str:
    """How known_hosts names a server: ``host``, or ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def known_keys(settings: SshTunnelConfig) -> dict[str, paramiko.PKey]:
    """The bastion's keys in known_hosts, by type (empty when it is not there)."""
    path = settings.known_hosts_file
    if not path.is_file():
        return {}
    try:
        hostkeys = paramiko.HostKeys(str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise TunnelRefused(
            _located(settings, "known-hosts-file", f"ssh-tunnel.known-hosts-file: cannot read {path}: {e}"),
            "point known-hosts-file at a readable known_hosts file") from None
    found = hostkeys.lookup(known_host_name(settings.host, settings.port))
    return dict(found) if found else {}


def preferred_algorithms(known: dict[str, paramiko.PKey], offered: tuple[str, ...]) -> tuple[str, ...]:
    """Host key algorithms with the known key's first, so a bastion with several keys shows the one we
    know."""
    first = {t for t in known}
    if "ssh-rsa" in first:
        first |= {"rsa-sha2-512", "rsa-sha2-256"}
    return tuple([a for a in offered if a in first] + [a for a in offered if a not in first])


def verify_host_key(
    settings: SshTunnelConfig, known: dict[str, paramiko.PKey], server_key: paramiko.PKey
) -> None:
    """Refuse a bastion whose key is not the one in known_hosts (or is missing, when strict). Writes
    nothing."""
    name = known_host_name(settings.host, settings.port)
    path = settings.known_hosts_file
    expected = known.get(server_key.get_name())
    if expected is not None and expected.asbytes() == server_key.asbytes():
        return
    if known:
        listed = ", ".join(fingerprint(k) for k in known.values())
        raise TunnelRefused(
            _located(
                settings,
                "known-hosts-file",
                (
                    f"ssh-tunnel: the bastion's host key does not match known_hosts: {name} presented "
                    f"{fingerprint(server_key)}, but {path} lists {listed}. Refused: someone may be "
                    "intercepting "
                    f"the connection"
                ),
            ),
            (
                f"if the bastion's host key really changed (ask its administrator for the fingerprint), "
                "replace the "
                f"entry: ssh-keygen -R '{name}' -f {path} && {keyscan(settings)}"
            ),
        )
    if settings.strict_host_key_checking:
        raise TunnelRefused(_located(settings, "known-hosts-file", (
            f"ssh-tunnel: the bastion {name} is not in known_hosts {path} (its host key is "
            f"{fingerprint(server_key)}). Refused: an unknown host could be anyone"
        )), f"check that fingerprint with the bastion's administrator, then add it: {keyscan(settings)}")
    log.warning("ssh-tunnel: accepting the unknown host key %s of %s (strict-host-key-checking: false); "
                "nothing is written to %s", fingerprint(server_key), name, path)


# -- helpers ---------------------------------------------------------------------------------------


def _located(settings: SshTunnelConfig, key: str, message: str) -> str:
    where = settings.where(key)
    return f"{where}: {message}" if where else message


def _as_pem(text: str) -> str:
    # A key pasted into one environment variable often loses its line breaks or gains literal "\n".
    text = text.replace("\\n", "\n").strip()
    return text + "\n"


def _register_key(text: str) -> None:
    logs.register_secret(text.strip())
    for line in text.splitlines():
        if len(line) >= 16 and not line.startswith("-----"):
            logs.register_secret(line.strip())


def _key_from_store(settings: SshTunnelConfig) -> tuple[str, str | None]:
    """The key (and optional passphrase) in a Secrets Manager secret: key text, or JSON with both."""
    from replicator.credentials import read_secret_text

    store = settings.credential_store
    assert store is not None
    text = read_secret_text(store.secret_id, store.region, what="ssh-tunnel.credential-store")
    passphrase: str | None = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        key = data.get("private-key") if isinstance(data, dict) else None
        if not isinstance(key, str) or not key:
            raise KeyProblem(
                "credential-store",
                f"ssh-tunnel.credential-store: secret {store.secret_id!r} is JSON "
                'without a "private-key" text field',
            )
        value = data.get("private-key-passphrase")
        passphrase = value if isinstance(value, str) and value else None
        text = key
    text = _as_pem(text)
    _register_key(text)
    logs.register_secret(passphrase)
    return text, passphrase
