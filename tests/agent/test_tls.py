"""TLS on the wire: an agent against an HTTPS server with a private CA, its own API over HTTPS, and the
refusal of plain HTTP to a server that is not on loopback."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import msgspec
import pytest
from click.testing import CliRunner

from shelfcast.cli import cli
from tests.agent.support import (
    ADMIN_TOKEN,
    STORE,
    AgentHandle,
    Proc,
    make_bundle,
    make_keys,
    sales_frame,
    start_process,
    wait_until,
)
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@dataclass
class Authority:
    """A private CA (what a retailer's IT runs) that issues certificates for 127.0.0.1."""

    folder: Path
    name: str

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} root CA")])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.subject)
            .issuer_name(self.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.folder / f"{self.name}-ca.pem"
        self.ca_file.write_bytes(self._pem(self.cert))

    @staticmethod
    def _pem(cert: object) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined,no-any-return]

    def issue(self, who: str) -> tuple[Path, Path]:
        """A leaf certificate for 127.0.0.1 signed by this CA: (certificate file, key file)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]))
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{who}.crt", self.folder / f"{who}.key"
        cert_file.write_bytes(self._pem(cert))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass
class HttpsFleet:
    root: Path
    ca: Authority
    server_url: str
    server: Proc
    admin: httpx.Client
    public_key: Path
    private_key: Path


@pytest.fixture(scope="module")
def https_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsFleet]:
    """A real server speaking HTTPS with a certificate from a private CA, v1 published as champion."""
    root = tmp_path_factory.mktemp("tls")
    ca = Authority(root / "pki", "store-it")
    cert_file, key_file = ca.issue("server")
    private, public = make_keys(root)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {
        "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
        "SHELFCAST_SERVER__TRUSTED_KEYS": f'["{public}"]',
        "SHELFCAST_SERVER__TLS_CERT_FILE": str(cert_file),
        "SHELFCAST_SERVER__TLS_KEY_FILE": str(key_file),
        "SHELFCAST_LOGGING__FORMAT": "json",
    }
    args = ["server", "run", "--port", str(port), "--state-dir", str(root / "server-state")]
    server = start_process("server", args, root, url, env)
    admin = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, verify=ca.context(), timeout=30
    )
    try:
        wait_until(lambda: admin.get("/livez").status_code == 200, 60, what="server over HTTPS")
        archive, _sha = make_bundle(root, private, 1)
        published = admin.post(
            "/v1/models/demand/versions",
            content=archive.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert published.status_code == 201, published.text
        promoted = admin.put("/v1/models/demand/aliases/champion", json={"version": 1, "reason": "tls"})
        assert promoted.status_code == 200, promoted.text
        yield HttpsFleet(root, ca, url, server, admin, public, private)
    finally:
        admin.close()
        server.stop()


def _enrollment(fleet: HttpsFleet, store_id: str) -> str:
    response = fleet.admin.post("/v1/stores", json={"store_id": store_id, "model_name": "demand"})
    assert response.status_code == 201, response.text
    token: str = response.json()["enrollment_token"]
    return token


def test_agent_enrolls_pulls_and_serves_over_https(https_fleet: HttpsFleet) -> None:
    """Trusting the private CA, the agent enrols, downloads and activates v1 over HTTPS and serves its own
    API over HTTPS; a client without the CA is refused by the agent's API."""
    root = https_fleet.root / "agent-ok"
    root.mkdir()
    api_cert, api_key = https_fleet.ca.issue("store-agent")
    agent = AgentHandle(
        root,
        https_fleet.server_url,
        https_fleet.public_key,
        enrollment_token=_enrollment(https_fleet, STORE),
        agent={"ca_file": str(https_fleet.ca.ca_file)},
        api={"tls_cert_file": str(api_cert), "tls_key_file": str(api_key)},
    )
    agent.url = agent.url.replace("http://", "https://")
    agent.client.close()
    agent.client = httpx.Client(base_url=agent.url, verify=https_fleet.ca.context(), timeout=10)
    agent.drop_sales(sales_frame())
    agent.start()
    try:
        status = agent.wait_serving(1, timeout=120)
        assert status["active_version"] == 1 and status["last_error"] is None
        assert (agent.state_dir / "credential").exists()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{agent.url}/livez", timeout=5)  # the system trust store does not know the CA

        def reported() -> bool:
            stores = https_fleet.admin.get("/v1/stores").json()["items"]
            mine = next(s for s in stores if s["store_id"] == STORE)
            return bool(mine["status"] and mine["status"]["active_version"] == 1)

        wait_until(reported, 30, what="the heartbeat reaching the server over HTTPS")
        assert f'"url": "https://127.0.0.1:{agent.port}"' in agent.proc.log()  # type: ignore[union-attr]
        asked = CliRunner().invoke(
            cli, ["agent", "status", "-o", "json", "--config", str(agent.config_path)], env={}
        )
        assert asked.exit_code == 0, asked.output  # the CLI asks the running agent over HTTPS
        assert msgspec.json.decode(asked.stdout)["served_version"] == 1
    finally:
        agent.close()


def test_wrong_ca_is_refused_with_a_clear_error(https_fleet: HttpsFleet) -> None:
    """An agent whose ca_file is another CA refuses the server: status and log say the certificate is
    not trusted by that file, and nothing is enrolled or activated."""
    root = https_fleet.root / "agent-wrong-ca"
    root.mkdir()
    other = Authority(root / "pki", "someone-else")
    agent = AgentHandle(
        root,
        https_fleet.server_url,
        https_fleet.public_key,
        enrollment_token=_enrollment(https_fleet, "S-WRONG-CA"),
        agent={"store_id": "S-WRONG-CA", "ca_file": str(other.ca_file)},
    )
    agent.start()
    try:
        status = wait_until(
            lambda: (s := agent.status())["last_error"] and s, 30, what="a TLS error in the status"
        )
        assert "not trusted by ca_file" in status["last_error"]
        assert str(other.ca_file) in status["last_error"]
        assert status["active_version"] is None
        assert not (agent.state_dir / "credential").exists()
        assert "CERTIFICATE_VERIFY_FAILED" in agent.proc.log()  # type: ignore[union-attr]
    finally:
        agent.close()


def _config(tmp_path: Path, agent: str, api: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n{agent}\n[api]\nport = 0\n{api}\n')
    return path


@pytest.mark.parametrize(
    ("agent", "api", "names"),
    [
        ('server_url = "http://192.0.2.10:8470"', "", ["server_url", "insecure = true", "$.agent"]),
        ('server_url = "ftp://example.com"', "", ["server_url", "$.agent"]),
        ("", 'tls_cert_file = "a.crt"', ["tls_cert_file and tls_key_file", "$.api"]),
        ('ca_file = "/nonexistent/ca.pem"', "", ["[agent] ca_file", "/nonexistent/ca.pem"]),
        ("", 'tls_cert_file = "x.crt"\ntls_key_file = "x.key"', ["[api] tls_cert_file", "x.crt"]),
    ],
)
def test_bad_transport_settings_fail_at_start_naming_the_field(
    tmp_path: Path, agent: str, api: str, names: list[str]
) -> None:
    """Plain HTTP off loopback without insecure, a bad URL, a certificate without key, unreadable CA or
    certificate files: the agent does not start and the error names the setting."""
    result = CliRunner().invoke(cli, ["agent", "run", "--config", str(_config(tmp_path, agent, api))], env={})
    assert result.exit_code == 1, result.output
    for name in names:
        assert name in result.stderr, result.stderr


def test_insecure_allows_plain_http_off_loopback_with_a_warning(tmp_path: Path) -> None:
    """With insecure = true the agent starts against http:// to a non-loopback address and says so in a
    warning at every start."""
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\n"
        'server_url = "http://192.0.2.10:8470"\ninsecure = true\nrequest_timeout_seconds = 1.0\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n[logging]\nformat = "json"\n'
    )
    for start in (1, 2):
        proc = start_process(
            f"agent-{start}", ["agent", "run", "--config", str(config)], tmp_path, f"http://127.0.0.1:{port}"
        )
        try:
            wait_until(lambda p=proc: "insecure_transport" in p.log(), 30, what="the insecure warning")
            line = next(x for x in proc.log().splitlines() if "insecure_transport" in x)
            assert '"level": "warning"' in line and '"plain_http_off_loopback": true' in line
        finally:
            assert proc.stop() == 0


def test_install_checks_transport_and_copies_the_ca(tmp_path: Path) -> None:
    """`agent install` refuses a plain http:// server off loopback without --insecure (naming the setting,
    writing nothing) and installs a CA bundle given with --ca-file as the config's ca_file."""
    ca = Authority(tmp_path / "pki", "install")
    key = tmp_path / "signing.key.pub"
    key.write_text("public key\n")
    common = ["agent", "install", "--store-id", "S1", "--enrollment-token", "sce_x",
              "--trusted-key", str(key), "--root"]  # fmt: skip
    refused = CliRunner().invoke(
        cli, [*common, str(tmp_path / "a"), "--server", "http://10.20.30.40:8470"], env={}
    )
    assert refused.exit_code == 1
    assert "server_url" in refused.stderr and "insecure" in refused.stderr
    assert not (tmp_path / "a" / "etc").exists()
    root = tmp_path / "b"
    args = [*common, str(root), "--server", "https://central.example:8470", "--ca-file", str(ca.ca_file)]
    installed = CliRunner().invoke(cli, [*args, "--executable", "/usr/bin/shelfcast"], env={})
    assert installed.exit_code == 0, installed.output
    assert (root / "etc" / "shelfcast" / "ca.pem").read_bytes() == ca.ca_file.read_bytes()
    text = (root / "etc" / "shelfcast" / "agent.toml").read_text()
    assert 'ca_file = "/etc/shelfcast/ca.pem"' in text and "insecure" not in text
    allowed = CliRunner().invoke(
        cli,
        [*common, str(tmp_path / "c"), "--server", "http://10.20.30.40:8470", "--insecure"],
        env={},
    )
    assert allowed.exit_code == 0, allowed.output
    assert "insecure = true" in (tmp_path / "c" / "etc" / "shelfcast" / "agent.toml").read_text()
