"""Helpers for the agent tests: signed bundles, a real server process, real agent processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from tests.conftest import free_port

STORE = "S001"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
SHELFCAST = [sys.executable, "-m", "shelfcast"]


def sales_frame(
    store_id: str = STORE, items: int = 4, days: int = 90, end: date | None = None
) -> pl.DataFrame:
    """A small deterministic canonical frame ending yesterday (weekly pattern per item)."""
    last = end or (datetime.now().astimezone().date() - timedelta(days=1))
    rows: dict[str, list[Any]] = {"store_id": [], "item_id": [], "category": [], "ds": [], "y": []}
    for i in range(items):
        for d in range(days):
            rows["store_id"].append(store_id)
            rows["item_id"].append(f"I{i + 1:05d}")
            rows["category"].append("food" if i % 2 == 0 else "drinks")
            rows["ds"].append(last - timedelta(days=days - 1 - d))
            rows["y"].append(float((i + 1) * 3 + (d % 7) + (d % 3)))
    return pl.DataFrame(rows, schema_overrides={"ds": pl.Date})


def make_keys(folder: Path) -> tuple[Path, Path]:
    """An ed25519 signing key pair (private, public)."""
    from forecasting.bundle.signing import generate_key_files

    private, public, _kid = generate_key_files(folder / "signing.key")
    return private, public


def make_bundle(
    folder: Path,
    private_key: Path,
    version: int,
    *,
    model_name: str = "demand",
    family: str = "SeasonalNaive",
) -> tuple[Path, str]:
    """A signed bundle (``family`` for every series, refit at the edge) and its archive; (archive, sha).

    A ``family`` that is no model (e.g. ``"Bogus"``) makes a correctly signed bundle that cannot score.
    """
    import io

    from forecasting.bundle.format import Manifest, ModelEntry, pack_archive, write_bundle

    series = sales_frame().select("store_id", "item_id", "category").unique().sort("item_id")
    series = series.with_columns(model=pl.lit(family))
    buffer = io.BytesIO()
    series.write_parquet(buffer)
    manifest = Manifest(
        model_name=model_name,
        version=version,
        created_at=datetime.now(UTC),
        horizon=14,
        season_length=7,
        models={"SeasonalNaive": ModelEntry(state="refit-at-edge", family="SeasonalNaive")},
        selection={"food": "SeasonalNaive", "drinks": "SeasonalNaive"},
        fallback_model=family,
    )
    name = f"{model_name}-v{version}" if family == "SeasonalNaive" else f"{model_name}-{family}-v{version}"
    bundle_dir = write_bundle(folder / name, manifest, {"series.parquet": buffer.getvalue()}, private_key)
    archive = folder / f"{name}.tar"
    sha = pack_archive(bundle_dir, archive)
    return archive, sha


def wait_until(check: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


@dataclass
class Proc:
    """A started shelfcast process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_process(
    name: str, args: list[str], log_dir: Path, url: str, env: dict[str, str] | None = None
) -> Proc:
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))} | (
        env or {}
    )
    with log_path.open("ab") as fh:
        popen = subprocess.Popen([*SHELFCAST, *args], stdout=fh, stderr=subprocess.STDOUT, env=full_env)
    return Proc(name, popen, log_path, url, env or {})


class ServerHandle:
    """A real ``shelfcast server run`` on loopback plus the admin calls the tests need."""

    def __init__(self, root: Path, public_key: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = root / "server-state"
        self.env = {
            "SHELFCAST_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
            "SHELFCAST_SERVER__TRUSTED_KEYS": f'["{public_key}"]',
            "SHELFCAST_LOGGING__FORMAT": "json",
        }
        self.proc: Proc | None = None
        self.admin = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def start(self) -> None:
        args = [
            "server",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
        ]
        self.proc = start_process("server", args, self.root, self.url, self.env)
        wait_until(
            lambda: httpx.get(f"{self.url}/livez", timeout=1).status_code == 200, 30, what="server /livez"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)

    def create_store(self, store_id: str = STORE) -> str:
        response = self.admin.post(
            "/v1/stores", json={"store_id": store_id, "name": store_id, "model_name": "demand"}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["enrollment_token"]
        return token

    def publish(self, archive: Path, model_name: str = "demand") -> dict[str, Any]:
        response = self.admin.post(
            f"/v1/models/{model_name}/versions",
            content=archive.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert response.status_code == 201, response.text
        info: dict[str, Any] = response.json()
        return info

    def promote(self, version: int, model_name: str = "demand") -> None:
        response = self.admin.put(
            f"/v1/models/{model_name}/aliases/champion", json={"version": version, "reason": "test"}
        )
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.stop()
        self.admin.close()


class AgentHandle:
    """A real ``shelfcast agent run`` process with its own config file and state dir."""

    def __init__(
        self, root: Path, server_url: str, public_key: Path, *, enrollment_token: str = "", **extra: Any
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = root / "agent-state"
        self.config_path = root / "agent.toml"
        agent_section = {
            "store_id": STORE,
            "server_url": server_url,
            "enrollment_token": enrollment_token,
            "trusted_keys": [str(public_key)],
            "poll_interval_seconds": 0.5,
            "heartbeat_interval_seconds": 1.0,
            "max_backoff_seconds": 2.0,
            "request_timeout_seconds": 5.0,
            **extra.pop("agent", {}),
        }
        sections: dict[str, dict[str, Any]] = {
            "agent": agent_section,
            "api": {"host": "127.0.0.1", "port": self.port, **extra.pop("api", {})},
            "scoring": {"horizon": 14, "threads": 1, **extra.pop("scoring", {})},
            "logging": {"format": "json"},
        }
        self.config_path.write_text(_toml(sections))
        self.proc: Proc | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
        args = ["agent", "run", "--config", str(self.config_path), "--state-dir", str(self.state_dir)]
        self.proc = start_process("agent", args, self.root, self.url, env)
        if wait:
            wait_until(lambda: self.client.get("/livez").status_code == 200, 30, what="agent /livez")
        return self.proc

    def drop_sales(self, frame: pl.DataFrame, name: str = "sales.parquet") -> None:
        inbox = self.state_dir / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        tmp = inbox / f".{name}.tmp"
        if name.endswith(".csv"):
            frame.write_csv(tmp)
        else:
            frame.write_parquet(tmp)
        tmp.rename(inbox / name)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get("/v1/status").json()
        return result

    def wait_serving(self, version: int, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if status.get("served_version") == version else None

        try:
            return dict(wait_until(check, timeout, 0.2, what=f"agent serving v{version}"))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- agent log ---\n{self.proc.log()[-4000:] if self.proc else ''}"
            ) from None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.client.close()


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def fleet(tmp_path: Path) -> Iterator[tuple[ServerHandle, Path, Path]]:
    """A running server with a signing key trusted by it: (server, private key, public key)."""
    private, public = make_keys(tmp_path)
    server = ServerHandle(tmp_path, public)
    server.start()
    try:
        yield server, private, public
    finally:
        server.close()


def forecast_frame(
    items: int, horizon: int, *, version: int = 1, start: date = date(2026, 1, 1)
) -> pl.DataFrame:
    """A scored-run frame shaped like the scoring engine's output (for serving tests without scoring)."""
    import numpy as np

    n = items * horizon
    item_ids = [f"I{i + 1:05d}" for i in range(items) for _ in range(horizon)]
    steps = np.tile(np.arange(horizon), items)
    base = np.repeat(np.arange(items, dtype=np.float64) % 50, horizon) + steps * 0.25
    return pl.DataFrame(
        {
            "store_id": [STORE] * n,
            "item_id": item_ids,
            "category": [f"cat{(i // horizon) % 7}" for i in range(n)],
            "ds": [start + timedelta(days=int(s)) for s in steps],
            "forecast": base,
            "forecast-lo-80": base - 1.5,
            "forecast-hi-80": base + 1.5,
            "forecast-lo-95": base - 3.0,
            "forecast-hi-95": base + 3.0,
            "model": ["AutoETS"] * n,
            "model_name": ["demand"] * n,
            "model_version": [version] * n,
        },
        schema_overrides={"ds": pl.Date, "model_version": pl.Int32},
    )


def prepare_served_state(state_dir: Path, items: int, horizon: int, *, version: int = 1) -> str:
    """A state dir whose serving pointer names a finished scoring run (what a scored agent leaves)."""
    import msgspec

    from agent.serving import ServingPointer

    run_id = f"20260101T000000Z-v{version}-test"
    run_dir = state_dir / "runs" / run_id
    run_dir.mkdir(parents=True)
    frame = forecast_frame(items, horizon, version=version)
    frame.write_parquet(run_dir / "forecasts.parquet")
    pointer = ServingPointer(
        run_id=run_id,
        model_name="demand",
        version=version,
        path=f"runs/{run_id}/forecasts.parquet",
        scored_at=datetime(2026, 1, 1, tzinfo=UTC),
        n_series=items,
        n_rows=frame.height,
    )
    (state_dir / "serving.json").write_bytes(msgspec.json.encode(pointer))
    return run_id
