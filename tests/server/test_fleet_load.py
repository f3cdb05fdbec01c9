"""Many agents at once against one real server process."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.server.conftest import RunningServer, create_store, enroll, make_bundle, publish, unique

AGENTS = 50
POLLS = 6
BEATS = 2


async def _agent(url: str, store_id: str, token: str, model: str, statuses: Counter[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        etag = None
        for i in range(POLLS):
            extra = {"If-None-Match": etag} if etag else {}
            response = await client.get(f"/v1/stores/{store_id}/assignment", headers=extra)
            statuses[f"poll {response.status_code}"] += 1
            etag = response.headers.get("etag", etag)
            if i < BEATS:
                beat = {
                    "store_id": store_id,
                    "state": "serving",
                    "model_name": model,
                    "active_version": 1,
                    "sent_at": datetime.now(UTC).isoformat(),
                }
                sent = await client.post(
                    "/v1/heartbeats", json=beat, headers={"Idempotency-Key": f"{store_id}-{i}"}
                )
                statuses[f"beat {sent.status_code}"] += 1


def test_fifty_agents_poll_and_report_concurrently(
    server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """50 agents polling with ETags and sending heartbeats at once all get correct answers, none lost."""
    model = unique("fleet")
    region = unique("r")
    with server.admin() as admin:
        publish(admin, make_bundle(tmp_path, signing_key, model, 1), model).raise_for_status()
        admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1}).raise_for_status()
        tokens = {}
        for i in range(AGENTS):
            store_id = f"{region}-{i:03d}"
            tokens[store_id] = enroll(
                server.url, store_id, create_store(admin, store_id, model, region=region)
            )

    statuses: Counter[str] = Counter()

    async def main() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(_agent(server.url, s, t, model, statuses) for s, t in tokens.items())),
            timeout=120,
        )

    asyncio.run(main())
    assert statuses == {
        "poll 200": AGENTS,
        "poll 304": AGENTS * (POLLS - 1),
        "beat 202": AGENTS * BEATS,
    }
    with server.admin() as admin:
        stores = admin.get("/v1/stores", params={"region": region, "limit": 100}).json()["items"]
    assert len(stores) == AGENTS
    assert all(s["status"]["state"] == "serving" and s["status"]["active_version"] == 1 for s in stores)
