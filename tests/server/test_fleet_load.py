"""Many agents at once against one real server process."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.server.conftest import RunningServer, make_bundle, publish, unique

AGENTS = 50
POLLS = 4
BEATS = 2


async def _agent(
    server: RunningServer, store_id: str, model: str, region: str, statuses: Counter[str]
) -> None:
    """Created by the admin, enrolled, then polling and reporting like a store agent."""
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as anonymous:
        created = await anonymous.post(
            "/v1/stores", json={"store_id": store_id, "model_name": model, "region": region}, headers=admin
        )
        enrollment = {"store_id": store_id, "enrollment_token": created.json()["enrollment_token"]}
        token = (await anonymous.post("/v1/enroll", json=enrollment)).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
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
    """50 agents enrolling, polling with ETags and reporting at once all get correct answers, none lost."""
    model = unique("fleet")
    region = unique("r")
    with server.admin() as admin:
        publish(admin, make_bundle(tmp_path, signing_key, model, 1), model).raise_for_status()
        admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1}).raise_for_status()

    statuses: Counter[str] = Counter()

    async def main() -> None:
        await asyncio.wait_for(
            asyncio.gather(
                *(_agent(server, f"{region}-{i:03d}", model, region, statuses) for i in range(AGENTS))
            ),
            timeout=150,
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
