"""The invariant every fault test asserts: one whole verified version served, every report counted once."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx

from tests.agent.support import AgentHandle


def served_versions(agent: AgentHandle) -> set[int]:
    """Versions found in one whole forecast listing plus one item document (one version when whole)."""
    listing = agent.client.get("/v1/forecasts", params={"limit": 1000})
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert len(body["rows"]) == 4 * 14, len(body["rows"])
    item = agent.client.get("/v1/forecasts/I00002").json()
    return (
        {row["model_version"] for row in body["rows"]}
        | {row["model_version"] for row in item["rows"]}
        | {body["model_version"]}
    )


def assert_one_whole_verified_version(agent: AgentHandle, public_key: Path, allowed: set[int]) -> int:
    """The agent serves exactly one of ``allowed``, and the version it runs passes signature checks."""
    from forecasting.bundle.format import verify

    versions = served_versions(agent)
    assert len(versions) == 1 and versions <= allowed, (versions, allowed)
    current = (agent.state_dir / "current").resolve()
    manifest = verify(current, [public_key])
    assert current.name == f"{manifest.model_name}-{manifest.version}"
    assert manifest.version in allowed, (manifest.version, allowed)
    return versions.pop()


@contextmanager
def watch_serving(agent: AgentHandle, allowed: set[int], interval: float = 0.25) -> Iterator[list[set[int]]]:
    """Sample what the agent serves all along the block; every sample must be one version of ``allowed``."""
    samples: list[set[int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(base_url=agent.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    listing = client.get("/v1/forecasts", params={"limit": 1000})
                    if listing.status_code != 200:
                        failures.append(f"forecasts answered {listing.status_code}: {listing.text[:200]}")
                    else:
                        body = listing.json()
                        found = {row["model_version"] for row in body["rows"]} | {body["model_version"]}
                        samples.append(found)
                        if len(found) != 1 or not found <= allowed or len(body["rows"]) != 4 * 14:
                            failures.append(f"served {found} ({len(body['rows'])} rows), allowed {allowed}")
                except httpx.HTTPError as exc:
                    failures.append(f"inventory API unreachable: {exc!r}")
                stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(15)
    assert not failures, failures[:5]
    assert samples, "no sample taken"


def reports_queued(agent: AgentHandle) -> int:
    """The agent's count of reports it ever queued for the server (heartbeats and monitoring reports)."""
    metrics = agent.client.get("/metrics").text
    found = re.search(r"^shelfcast_agent_reports_queued_total (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return int(float(found.group(1)))


def stored_report_keys(db_file: Path, store_id: str = "S001") -> list[str]:
    """Idempotency keys of everything the (stopped) server stored for ``store_id``.

    Heartbeats (``report_keys``), accuracy and drift reports (``monitoring_reports``) and actuals
    batches (``actuals_batches``): a key listed twice would be a report counted twice.
    """
    db = duckdb.connect(str(db_file), read_only=True)
    try:
        rows = db.execute(
            "SELECT idempotency_key FROM report_keys WHERE store_id = $s "
            "UNION ALL SELECT report_id FROM monitoring_reports WHERE store_id = $s "
            "UNION ALL SELECT batch_id FROM actuals_batches WHERE store_id = $s",
            {"s": store_id},
        ).fetchall()
    finally:
        db.close()
    return [key for (key,) in rows]


def events(agent: AgentHandle, name: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines whose event is ``name``."""
    found = []
    for line in (agent.proc.log() if agent.proc else "").splitlines():
        if f'"event": "{name}"' in line:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def has_event(agent: AgentHandle, name: str, **match: str) -> bool:
    """Whether the log holds ``name`` with every ``match`` value found in the named field."""
    return any(all(value in str(e.get(key)) for key, value in match.items()) for e in events(agent, name))


def signed_bundle(
    folder: Path, private_key: Path, version: int, *, expires_in: timedelta | None = None, padding: int = 0
) -> Path:
    """A signed bundle the agent can score (SeasonalNaive refit at the edge); may expire or be padded."""
    import io
    import secrets

    import polars as pl

    from forecasting.bundle.format import Manifest, ModelEntry, pack_archive, write_bundle
    from tests.agent.support import sales_frame

    series = sales_frame().select("store_id", "item_id", "category").unique().sort("item_id")
    buffer = io.BytesIO()
    series.with_columns(model=pl.lit("SeasonalNaive")).write_parquet(buffer)
    now = datetime.now(UTC)
    manifest = Manifest(
        model_name="demand",
        version=version,
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
        horizon=14,
        season_length=7,
        models={"SeasonalNaive": ModelEntry(state="refit-at-edge", family="SeasonalNaive")},
        selection={"food": "SeasonalNaive", "drinks": "SeasonalNaive"},
        fallback_model="SeasonalNaive",
    )
    payloads = {"series.parquet": buffer.getvalue()}
    if padding:
        payloads["padding.bin"] = secrets.token_bytes(padding)
    bundle_dir = write_bundle(
        folder / f"signed-v{version}-{secrets.token_hex(3)}", manifest, payloads, private_key
    )
    archive = bundle_dir.with_suffix(".tar")
    pack_archive(bundle_dir, archive)
    return archive
