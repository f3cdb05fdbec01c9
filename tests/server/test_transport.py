"""HTTPS with a given certificate; plain HTTP refused off loopback unless allowed."""

from __future__ import annotations

import ssl
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
from click.testing import CliRunner

from shelfcast.cli import cli
from shelfcast.procs import ServiceProcess
from tests.conftest import free_port
from tests.server.conftest import ADMIN_TOKEN


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as an on-prem private CA would issue."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shelfcast test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_plain_http_off_loopback_is_refused(tmp_path: Path) -> None:
    """Listening on a non-loopback address without a certificate fails at start, saying what to set."""
    result = CliRunner().invoke(
        cli, ["server", "run", "--host", "0.0.0.0", "--state-dir", str(tmp_path / "state")], env={}
    )
    assert result.exit_code == 1
    assert "tls_cert_file" in result.stderr
    assert not (tmp_path / "state").exists()


def test_https_with_a_private_ca_certificate(tmp_path: Path) -> None:
    """Given a certificate and key, the server speaks HTTPS and clients trusting the CA get through."""
    cert_file, key_file = _self_signed(tmp_path)
    port = free_port()
    process = ServiceProcess(
        "server",
        ["server", "run", "--port", str(port), "--state-dir", str(tmp_path / "state")],
        log_path=tmp_path / "server.log",
        env={
            "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
            "SHELFCAST_SERVER__TLS_CERT_FILE": str(cert_file),
            "SHELFCAST_SERVER__TLS_KEY_FILE": str(key_file),
        },
    )
    context = ssl.create_default_context(cafile=str(cert_file))
    url = f"https://127.0.0.1:{port}"
    with process:
        deadline = time.monotonic() + 60
        while True:
            assert process.running(), (tmp_path / "server.log").read_text()
            try:
                ready = httpx.get(f"{url}/readyz", verify=context, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up over HTTPS"
                time.sleep(0.2)
        assert ready.status_code == 200
        listed = httpx.get(
            f"{url}/v1/stores", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, verify=context, timeout=10
        )
        assert listed.status_code == 200
        try:
            httpx.get(f"{url}/livez", timeout=5)  # the system trust store does not know this CA
            raise AssertionError("an untrusted certificate was accepted")
        except httpx.ConnectError as exc:
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    assert '"url": "https://127.0.0.1:' in (tmp_path / "server.log").read_text()
