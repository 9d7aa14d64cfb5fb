"""SSL for real: a server with ssl=on, a throwaway CA, server and client certificates."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicator.config import load_connection
from replicator.connect import ConnectError, connect
from replicator.localpg import LocalCluster, start_cluster
from tests.conftest import Database
from tests.support import checksum, run_cli

CERT_USER = "cert_user"


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer: str | None,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _write(
    path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def ssl_setup(
    cluster_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalCluster, Pki]]:
    yield from ssl_cluster(cluster_root, tmp_path_factory, "ssl")


def ssl_cluster(
    cluster_root: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[tuple[LocalCluster, Pki]]:
    """A server with ssl=on under ``cluster_root / name`` (unique per module using it), and its PKI."""
    certs = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _issue("replicator test CA", None, None, ca=True)
    other_ca_cert, _ = _issue("some other CA", None, None, ca=True)
    # The server certificate names only "localhost": connecting to 127.0.0.1 with verify-full must fail.
    server_cert, server_key = _issue(
        "localhost", ca_key, "replicator test CA", ca=False, sans=[x509.DNSName("localhost")]
    )
    client_cert, client_key = _issue(CERT_USER, ca_key, "replicator test CA", ca=False)
    server_dir = cluster_root / f"{name}-files"
    server_dir.mkdir()
    files = {
        "server.crt": _write(server_dir / "server.crt", server_cert),
        "server.key": _write(server_dir / "server.key", key=server_key),
        "ca.crt": _write(server_dir / "ca.crt", ca_cert),
    }
    if os.geteuid() == 0:
        for f in [server_dir, *files.values()]:
            shutil.chown(f, "postgres", "postgres")
    cluster = start_cluster(
        cluster_root / name,
        settings={
            "ssl": "on",
            "ssl_cert_file": str(files["server.crt"]),
            "ssl_key_file": str(files["server.key"]),
            "ssl_ca_file": str(files["ca.crt"]),
        },
        hba_lines=[
            f"hostssl all {CERT_USER} 127.0.0.1/32 cert",
            "hostssl all all 127.0.0.1/32 scram-sha-256",
        ],
    )
    try:
        import psycopg

        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {CERT_USER} LOGIN SUPERUSER")
        pki = Pki(
            ca=_write(certs / "ca.crt", ca_cert),
            other_ca=_write(certs / "other-ca.crt", other_ca_cert),
            client_cert=_write(certs / "client.crt", client_cert),
            client_key=_write(certs / "client.key", key=client_key),
        )
        yield cluster, pki
    finally:
        cluster.destroy()


def _config(tmp_path: Path, cluster: LocalCluster, **extra: object) -> Path:
    import yaml

    path = tmp_path / "conn.yaml"
    path.write_text(yaml.safe_dump(cluster.connection_config(**extra)))
    return path


def _ssl_in_use(conn: object) -> bool:
    return bool(conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = "
                             "pg_backend_pid()").fetchone()[0])  # type: ignore[attr-defined]


def test_verify_full_with_the_right_ca_connects(ssl_setup: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    cluster, pki = ssl_setup
    path = _config(
        tmp_path, cluster, host="localhost", ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)}
    )
    with connect(load_connection(path, "source").value, "source") as conn:
        assert _ssl_in_use(conn)


def test_wrong_host_name_is_refused_clearly(ssl_setup: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    cluster, pki = ssl_setup
    path = _config(
        tmp_path, cluster, host="127.0.0.1", ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)}
    )
    with pytest.raises(ConnectError) as err:
        connect(load_connection(path, "source").value, "source")
    text = str(err.value)
    assert "does not match host name" in text and "127.0.0.1" in text
    assert "hint: check ssl.root-cert" in text


def test_wrong_ca_is_refused_clearly(ssl_setup: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    cluster, pki = ssl_setup
    path = _config(
        tmp_path, cluster, host="localhost", ssl={"ssl-mode": "verify-full", "root-cert": str(pki.other_ca)}
    )
    with pytest.raises(ConnectError) as err:
        connect(load_connection(path, "source").value, "source")
    assert "certificate verify failed" in str(err.value)


def test_client_certificate_authenticates(ssl_setup: tuple[LocalCluster, Pki], tmp_path: Path) -> None:
    cluster, pki = ssl_setup
    ssl = {
        "ssl-mode": "verify-full",
        "root-cert": str(pki.ca),
        "ssl-cert": str(pki.client_cert),
        "ssl-key": str(pki.client_key),
    }
    path = _config(tmp_path, cluster, host="localhost", username=CERT_USER, password=None, ssl=ssl)
    with connect(load_connection(path, "source").value, "source") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CERT_USER,)
        assert _ssl_in_use(conn)
    # Without the client certificate the same user is refused: the server really asked for it.
    path = _config(tmp_path, cluster, host="localhost", username=CERT_USER, password=None,
                   ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)})
    with pytest.raises(ConnectError):
        connect(load_connection(path, "source").value, "source")


def test_snapshot_over_ssl(ssl_setup: tuple[LocalCluster, Pki], dest_db: Database, tmp_path: Path) -> None:
    cluster, pki = ssl_setup
    cluster.create_database("ssl_src")
    source = Database(cluster, "ssl_src")
    source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM "
        "generate_series(1, 1000) g"
    )
    src_path = _config(
        tmp_path,
        cluster,
        dbname="ssl_src",
        host="localhost",
        ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)},
    )
    dst_path = dest_db.write_config(tmp_path / "dest.yaml")
    assert run_cli("run", "snapshot", "--source", src_path, "--destination", dst_path) == 0
    assert checksum(dest_db, "public", "t") == checksum(source, "public", "t")
