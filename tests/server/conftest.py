"""Real server processes on loopback (one shared per session, fresh ones where isolation matters), bundles."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from shelfcast.procs import ServiceProcess
from tests.conftest import free_port

ADMIN_TOKEN = "sca_test-admin-" + "x" * 16
FRESH_MAX_BUNDLE_BYTES = 200_000


@dataclass
class RunningServer:
    """A ``shelfcast server run`` child process and what a test needs to talk to it."""

    url: str
    state_dir: Path
    process: ServiceProcess
    trusted_key: Path
    admin_token: str = ADMIN_TOKEN
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def restart(self) -> None:
        self.process.stop()
        self.process = start_process(self.state_dir, self.port, self.trusted_key, self.extra_env)


def start_process(state_dir: Path, port: int, trusted_key: Path, extra_env: dict[str, str]) -> ServiceProcess:
    env = {
        "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
        "SHELFCAST_SERVER__TRUSTED_KEYS": msgspec.json.encode([str(trusted_key)]).decode(),
        "SHELFCAST_LOGGING__FORMAT": "json",
        **extra_env,
    }
    process = ServiceProcess(
        "server",
        ["server", "run", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir)],
        log_path=state_dir.parent / f"{state_dir.name}.log",
        env=env,
    ).start()
    try:
        process.wait_http(f"http://127.0.0.1:{port}/readyz", timeout_seconds=60)
    except BaseException:
        process.stop()
        raise
    return process


def launch(base: Path, trusted_key: Path, extra_env: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    state_dir = base / "state"
    env = dict(extra_env or {})
    process = start_process(state_dir, port, trusted_key, env)
    return RunningServer(
        url=f"http://127.0.0.1:{port}",
        state_dir=state_dir,
        process=process,
        trusted_key=trusted_key,
        port=port,
        extra_env=env,
    )


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair; the server trusts its public half."""
    from forecasting.bundle.signing import generate_key_files

    private, _, _ = generate_key_files(tmp_path_factory.mktemp("keys") / "signing.key")
    return private


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key pair the server does not trust."""
    from forecasting.bundle.signing import generate_key_files

    private, _, _ = generate_key_files(tmp_path_factory.mktemp("other-keys") / "other.key")
    return private


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, signing_key: Path) -> Iterator[RunningServer]:
    """One server process shared by the tests that do not need isolation (use unique names)."""
    running = launch(tmp_path_factory.mktemp("server"), signing_key.with_name(signing_key.name + ".pub"))
    yield running
    running.process.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, signing_key: Path) -> Iterator[RunningServer]:
    """A server of its own on its own state folder (restart, backup), accepting bundles up to 200 kB."""
    running = launch(
        tmp_path,
        signing_key.with_name(signing_key.name + ".pub"),
        {"SHELFCAST_SERVER__MAX_REQUEST_BODY_BYTES": str(FRESH_MAX_BUNDLE_BYTES)},
    )
    yield running
    running.process.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def make_bundle(
    out: Path,
    key: Path,
    model_name: str,
    version: int,
    *,
    run_id: str = "",
    dataset_fingerprint: str = "",
    payload: bytes | None = None,
    raw_payload: bytes | None = None,
    expires_at: datetime | None = None,
) -> Path:
    """A real signed bundle packed as an archive; returns the archive path.

    ``series.parquet`` is a real (uncompressed) Parquet table holding ``payload`` (random bytes by
    default), so its size follows the payload's; ``raw_payload`` puts those exact bytes there instead.
    """
    from forecasting.bundle.format import Lineage, Manifest, pack_archive, write_bundle

    manifest = Manifest(
        model_name=model_name,
        version=version,
        created_at=datetime.now(UTC),
        expires_at=expires_at,
        selection={"all": "SeasonalNaive"},
        metrics={"all": {"mase": 0.9 + version / 100}},
        lineage=Lineage(run_id=run_id, dataset_fingerprint=dataset_fingerprint),
    )
    bundle_dir = out / f"{model_name}-v{version}-{secrets.token_hex(3)}"
    data = raw_payload if raw_payload is not None else parquet_payload(payload or secrets.token_bytes(2048))
    write_bundle(bundle_dir, manifest, {"series.parquet": data}, key)
    archive = bundle_dir.with_suffix(".tar")
    pack_archive(bundle_dir, archive)
    return archive


def parquet_payload(blob: bytes) -> bytes:
    """``blob`` as a one-cell, uncompressed Parquet table (about as large as ``blob``)."""
    import io

    import polars as pl

    buffer = io.BytesIO()
    pl.DataFrame({"blob": [blob]}).write_parquet(buffer, compression="uncompressed", statistics=False)
    return buffer.getvalue()


def create_store(client: httpx.Client, store_id: str, model_name: str, **attrs: Any) -> str:
    response = client.post("/v1/stores", json={"store_id": store_id, "model_name": model_name, **attrs})
    assert response.status_code == 201, response.text
    token: str = response.json()["enrollment_token"]
    return token


def enroll(url: str, store_id: str, enrollment_token: str) -> str:
    response = httpx.post(
        f"{url}/v1/enroll", json={"store_id": store_id, "enrollment_token": enrollment_token}, timeout=30
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def publish(client: httpx.Client, archive: Path, model_name: str) -> httpx.Response:
    return client.post(
        f"/v1/models/{model_name}/versions",
        content=archive.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
    )
