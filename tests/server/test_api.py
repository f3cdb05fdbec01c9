"""The server's HTTP API against a real server process on loopback."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.server.conftest import RunningServer, create_store, enroll, make_bundle, publish, unique


def _ready_store(server: RunningServer, tmp_path: Path, key: Path) -> tuple[str, str, str, Path]:
    model = unique("m")
    store = unique("S")
    with server.admin() as admin:
        token = enroll(server.url, store, create_store(admin, store, model, region="north"))
        archive = make_bundle(tmp_path, key, model, 1)
        assert publish(admin, archive, model).status_code == 201
        response = admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1, "reason": "first"})
        assert response.status_code == 200, response.text
    return model, store, token, archive


def test_health_metrics_and_schema(server: RunningServer) -> None:
    """livez, readyz, Prometheus metrics and the OpenAPI document answer without a credential."""
    with server.client() as client:
        assert client.get("/livez").text == "ok"
        assert client.get("/readyz").json()["ready"] is True
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "shelfcast_http_request_duration_seconds_bucket" in metrics.text
        assert "shelfcast_stale_agents" in metrics.text
        schema = client.get("/schema/openapi.json").json()
        assert "/v1/stores/{store_id}/assignment" in schema["paths"]


def test_enroll_assignment_etag_and_304(server: RunningServer, tmp_path: Path, signing_key: Path) -> None:
    """An enrolled store gets its champion with a strong ETag; the same ETag gives 304; a move changes it."""
    model = unique("m")
    store = unique("S")
    with server.admin() as admin:
        enrollment = create_store(admin, store, model)
        token = enroll(server.url, store, enrollment)
        again = httpx.post(
            f"{server.url}/v1/enroll", json={"store_id": store, "enrollment_token": enrollment}
        )
        assert again.status_code == 401
        assert "already used" in again.json()["detail"]
        with server.client(token) as agent:
            missing = agent.get(f"/v1/stores/{store}/assignment")
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("application/problem+json")
            archive = make_bundle(tmp_path, signing_key, model, 1)
            created = publish(admin, archive, model)
            assert created.status_code == 201, created.text
            assert created.json()["bundle_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
            admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1}).raise_for_status()
            first = agent.get(f"/v1/stores/{store}/assignment")
            assert first.status_code == 200
            etag = first.headers["etag"]
            assert etag.startswith('"') and not etag.startswith("W/")
            assert first.json()["version"] == 1
            assert first.json()["bundle_sha256"] == created.json()["bundle_sha256"]
            cached = agent.get(f"/v1/stores/{store}/assignment", headers={"If-None-Match": etag})
            assert cached.status_code == 304
            assert cached.content == b""
            publish(admin, make_bundle(tmp_path, signing_key, model, 2), model).raise_for_status()
            admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 2}).raise_for_status()
            moved = agent.get(f"/v1/stores/{store}/assignment", headers={"If-None-Match": etag})
            assert moved.status_code == 200
            assert moved.json()["version"] == 2
            assert moved.headers["etag"] != etag


def test_bundle_download_range_and_etag(server: RunningServer, tmp_path: Path, signing_key: Path) -> None:
    """Bundles download whole or by Range (206), with ETag = sha256 and 304 on a match."""
    _, store, token, archive = _ready_store(server, tmp_path, signing_key)
    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with server.client(token) as agent:
        whole = agent.get(f"/v1/bundles/{sha}")
        assert whole.status_code == 200
        assert whole.content == data
        assert whole.headers["etag"] == f'"{sha}"'
        part = agent.get(f"/v1/bundles/{sha}", headers={"Range": "bytes=100-"})
        assert part.status_code == 206
        assert part.content == data[100:]
        assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        tail = agent.get(f"/v1/bundles/{sha}", headers={"Range": "bytes=-10"})
        assert tail.content == data[-10:]
        assert agent.get(f"/v1/bundles/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
        assert agent.get(f"/v1/bundles/{sha}", headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        assert agent.get(f"/v1/bundles/{'0' * 64}").status_code == 404
        assert agent.get("/v1/bundles/not-a-digest").status_code == 404
    assert store


def test_upload_refusals_say_why(
    server: RunningServer, tmp_path: Path, signing_key: Path, other_key: Path
) -> None:
    """Duplicate, non-increasing, untrusted, tampered and misnamed bundles are refused with the reason."""
    model = unique("m")
    with server.admin() as admin:
        v2 = make_bundle(tmp_path, signing_key, model, 2)
        assert publish(admin, v2, model).status_code == 201
        dup = publish(admin, v2, model)
        assert dup.status_code == 409
        assert "already registered" in dup.json()["detail"]
        older = publish(admin, make_bundle(tmp_path, signing_key, model, 1), model)
        assert older.status_code == 409
        assert "not newer" in older.json()["detail"]
        untrusted = publish(admin, make_bundle(tmp_path, other_key, model, 3), model)
        assert untrusted.status_code == 422
        assert "bundle refused" in untrusted.json()["detail"]
        wrong_name = publish(admin, make_bundle(tmp_path, signing_key, "other-model", 3), model)
        assert wrong_name.status_code == 422
        assert "other-model" in wrong_name.json()["detail"]
        tampered = _tamper(make_bundle(tmp_path, signing_key, model, 3), tmp_path)
        refused = publish(admin, tampered, model)
        assert refused.status_code == 422
        assert "sha256" in refused.json()["detail"] or "size" in refused.json()["detail"]
        garbage = admin.post(f"/v1/models/{model}/versions", content=b"not a tar at all" * 10)
        assert garbage.status_code == 422
        assert admin.post(f"/v1/models/{model}/versions", content=b"").status_code == 422
        assert admin.get(f"/v1/models/{model}").json()["latest_version"] == 2


def test_upload_of_colliding_or_climbing_members_is_422(
    server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A signed bundle plus a file ``fitted`` before ``fitted/AutoETS.parquet``, or a ``../../..`` directory
    member: 422 naming the member, nothing registered."""
    model = unique("m")
    signed = make_bundle(tmp_path, signing_key, model, 1)
    for name, extra in (
        (
            "fitted/AutoETS.parquet",
            [("fitted", tarfile.REGTYPE), ("fitted/AutoETS.parquet", tarfile.REGTYPE)],
        ),
        ("../../..", [("../../..", tarfile.DIRTYPE)]),
    ):
        out = tmp_path / f"evil-{len(extra)}.tar"
        with tarfile.open(signed) as src, tarfile.open(out, "w") as dst:
            for member in src:
                dst.addfile(member, src.extractfile(member))
            for member_name, kind in extra:
                info = tarfile.TarInfo(member_name)
                info.type = kind
                info.size = 1 if kind == tarfile.REGTYPE else 0
                dst.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
        with server.admin() as admin:
            refused = publish(admin, out, model)
            assert refused.status_code == 422, refused.text
            assert name in refused.json()["detail"]
            assert admin.get(f"/v1/models/{model}").status_code == 404


def test_publish_load_checks_payloads_and_aliases_refuse_expired_versions(
    server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A validly signed bundle whose series.parquet is a pickle is refused (422, nothing registered); an
    alias move or a rollout to a version that has expired since its upload is refused (409)."""
    import pickle

    model = unique("m")
    with server.admin() as admin:
        hostile = make_bundle(tmp_path, signing_key, model, 1, raw_payload=pickle.dumps({"state": "x"}))
        refused = publish(admin, hostile, model)
        assert refused.status_code == 422, refused.text
        assert "'series.parquet' does not load as Parquet" in refused.json()["detail"]
        assert admin.get(f"/v1/models/{model}").status_code == 404
        assert publish(admin, make_bundle(tmp_path, signing_key, model, 1), model).status_code == 201
        champion = admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 1})
        assert champion.status_code == 200, champion.text
        soon = datetime.now(UTC) + timedelta(seconds=2)
        assert (
            publish(admin, make_bundle(tmp_path, signing_key, model, 2, expires_at=soon), model).status_code
            == 201
        )
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.5)
        moved = admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 2})
        assert moved.status_code == 409, moved.text
        assert "expired" in moved.json()["detail"]
        rollout = admin.post(
            "/v1/rollouts", json={"model_name": model, "version": 2, "plan": {"waves": [{"share": 1.0}]}}
        )
        assert rollout.status_code == 409, rollout.text
        assert admin.get(f"/v1/models/{model}/aliases/champion").json()["version"] == 1


def _tamper(archive: Path, tmp_path: Path) -> Path:
    """The same archive with one payload byte flipped (signature and manifest left as they were)."""
    out = tmp_path / f"tampered-{archive.name}"
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src:
            fh = src.extractfile(member)
            assert fh is not None
            data = bytearray(fh.read())
            if member.name == "series.parquet":
                data[0] ^= 0xFF
            dst.addfile(member, io.BytesIO(bytes(data)))
    return out


def test_heartbeats_idempotent_and_scoped(server: RunningServer, tmp_path: Path, signing_key: Path) -> None:
    """Heartbeats record state, version, contact; repeats and late reports change nothing; others refused."""
    model, store, token, _ = _ready_store(server, tmp_path, signing_key)
    beat = {
        "store_id": store,
        "state": "serving",
        "model_name": model,
        "active_version": 1,
        "agent_version": "test",
        "sent_at": datetime.now(UTC).isoformat(),
    }
    with server.client(token) as agent:
        first = agent.post("/v1/heartbeats", json=beat, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202
        assert first.json() == {"accepted": True, "duplicate": False}
        repeat = agent.post("/v1/heartbeats", json=beat, headers={"Idempotency-Key": "k1"})
        assert repeat.json()["duplicate"] is True
        foreign = agent.post("/v1/heartbeats", json={**beat, "store_id": "S-somebody-else"})
        assert foreign.status_code == 403
        bad = agent.post("/v1/heartbeats", json={**beat, "unknown_field": 1})
        assert bad.status_code == 422
        late = {**beat, "state": "syncing", "active_version": None, "sent_at": "2020-01-01T00:00:00Z"}
        assert agent.post("/v1/heartbeats", json=late).status_code == 202  # older than what is stored
    with server.admin() as admin:
        status = admin.get(f"/v1/stores/{store}").json()["status"]
    assert status["state"] == "serving"
    assert status["active_version"] == 1
    assert status["stale"] is False
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'shelfcast_stores_by_version{{model_name="{model}",version="1"}} 1.0' in metrics
    assert 'route="/v1/heartbeats",status="202"' in metrics


def test_alias_history_and_rollback(server: RunningServer, tmp_path: Path, signing_key: Path) -> None:
    """Every alias move is kept (from, to, who, why); rollback is one call and is itself recorded."""
    model = unique("m")
    with server.admin() as admin:
        for version in (1, 2, 3):
            publish(admin, make_bundle(tmp_path, signing_key, model, version), model).raise_for_status()
        for version, why in ((1, "first"), (2, "better"), (3, "best")):
            admin.put(f"/v1/models/{model}/aliases/champion", json={"version": version, "reason": why})
        rolled = admin.post(f"/v1/models/{model}/aliases/champion/rollback", json={"reason": "v3 regressed"})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["version"] == 2
        assert rolled.json()["previous_version"] == 3
        history = admin.get(f"/v1/models/{model}/aliases/champion/history").json()["items"]
        moves = [(e["from_version"], e["to_version"], e["reason"]) for e in history]
        assert moves == [(3, 2, "v3 regressed"), (2, 3, "best"), (1, 2, "better"), (None, 1, "first")]
        assert all(e["actor"] == "admin:config" for e in history)
        assert admin.put(f"/v1/models/{model}/aliases/champion", json={"version": 9}).status_code == 404
        assert admin.get(f"/v1/models/{model}").json()["aliases"] == {"champion": 2}
        page = admin.get(f"/v1/models/{model}/aliases/champion/history", params={"limit": 3}).json()
        assert len(page["items"]) == 3
        rest = admin.get(
            f"/v1/models/{model}/aliases/champion/history", params={"cursor": page["next_cursor"]}
        ).json()
        assert [e["to_version"] for e in rest["items"]] == [1]


def test_runs_datasets_and_lineage_both_ways(
    server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """A run record links dataset and version: version -> run -> dataset and dataset -> runs -> versions."""
    model = unique("m")
    dataset_id = hashlib.sha256(model.encode()).hexdigest()
    runs = []
    with server.admin() as admin:
        for i in (1, 2):
            record = {
                "run_id": unique("run"),
                "model_name": model,
                "params": {"season_length": 7, "horizon": 14 * i},
                "metrics": {"all": {"mase": 0.8 + i / 10}},
                "selection": {"grocery": "AutoETS" if i == 1 else "AutoTheta"},
                "dataset": {
                    "dataset_id": dataset_id,
                    "row_count": 1000,
                    "date_min": "2024-01-01",
                    "date_max": "2024-12-31",
                    "stores": ["S001", "S002"],
                    "schema": {"y": "Float64"},
                    "source": "synthetic",
                },
                "code_version": "abc123",
                "started_at": "2024-06-01T10:00:00Z",
                "extra_field": "kept",
            }
            created = admin.post("/v1/runs", json=record)
            assert created.status_code == 201, created.text
            runs.append(record["run_id"])
        archive = make_bundle(tmp_path, signing_key, model, 1, run_id=runs[1], dataset_fingerprint=dataset_id)
        publish(admin, archive, model).raise_for_status()
        lineage = admin.get(f"/v1/models/{model}/versions/1/lineage").json()
        assert lineage["run"]["run_id"] == runs[1]
        assert lineage["dataset"]["dataset_id"] == dataset_id
        assert lineage["dataset"]["stores"] == ["S001", "S002"]
        back = admin.get(f"/v1/datasets/{dataset_id}/lineage").json()
        assert sorted(r["run_id"] for r in back["runs"]) == sorted(runs)
        assert [(v["model_name"], v["version"]) for v in back["versions"]] == [(model, 1)]
        compare = admin.get("/v1/runs/compare", params=[("run_id", runs[0]), ("run_id", runs[1])]).json()
        rows = {row["field"]: row for row in compare["rows"]}
        assert rows["params.horizon"][runs[0]] == 14
        assert rows["params.horizon"]["differs"] is True
        assert rows["params.season_length"]["differs"] is False
        assert rows["selection.grocery"][runs[1]] == "AutoTheta"
        listed = admin.get("/v1/runs", params={"model_name": model}).json()["items"]
        assert {r["run_id"] for r in listed} == set(runs)
        assert admin.get("/v1/runs/compare", params={"run_id": runs[0]}).status_code == 422


def test_pagination_cursor_and_cap(server: RunningServer) -> None:
    """Listings page with an opaque cursor; the page size is capped by the server."""
    region = unique("region")
    with server.admin() as admin:
        ids = sorted(unique("P") for _ in range(5))
        for store_id in ids:
            create_store(admin, store_id, "demand", region=region)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params = {"region": region, "limit": 2} | ({"cursor": cursor} if cursor else {})
            page = admin.get("/v1/stores", params=params).json()
            seen += [s["store_id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids
        capped = admin.get("/v1/stores", params={"limit": 100000}).json()
        assert len(capped["items"]) <= 500
        assert admin.get("/v1/stores", params={"cursor": "!!bad"}).status_code == 422


def test_body_limit_and_problem_details(server: RunningServer) -> None:
    """Oversized JSON bodies get 413; validation errors and unknown routes are problem details."""
    with server.admin() as admin:
        huge = admin.post("/v1/stores", content=b'{"store_id": "' + b"x" * (2 * 1024 * 1024) + b'"}')
        assert huge.status_code == 413
        assert huge.headers["content-type"].startswith("application/problem+json")
        invalid = admin.post("/v1/stores", json={"store_id": "S1", "bogus": 1})
        assert invalid.status_code == 422
        assert "bogus" in invalid.json()["detail"]
        assert admin.get("/v1/nowhere").json()["status"] == 404


def test_credentials_roles_and_revocation(server: RunningServer, tmp_path: Path, signing_key: Path) -> None:
    """Readers read but cannot write; revoking a store or rotating its credential cuts the old token off."""
    _, store, token, _ = _ready_store(server, tmp_path, signing_key)
    with server.admin() as admin:
        created = admin.post("/v1/credentials", json={"role": "reader", "label": "analyst"})
        assert created.status_code == 201
        reader_token = created.json()["token"]
        with server.client(reader_token) as reader:
            assert reader.get("/v1/stores").status_code == 200
            assert reader.post("/v1/stores", json={"store_id": unique("S")}).status_code == 403
        with server.client(token) as agent:
            rotated = agent.post(f"/v1/stores/{store}/credentials/rotate")
            assert rotated.status_code == 200
            assert agent.get(f"/v1/stores/{store}/assignment").status_code == 401
        with server.client(rotated.json()["token"]) as agent:
            assert agent.get(f"/v1/stores/{store}/assignment").status_code == 200
            assert admin.post(f"/v1/stores/{store}/revoke").json()["revoked_at"] is not None
            assert agent.get(f"/v1/stores/{store}/assignment").status_code == 401
        admin.delete(f"/v1/credentials/{created.json()['credential_id']}").raise_for_status()
        with server.client(reader_token) as reader:
            assert reader.get("/v1/stores").status_code == 401
        fresh = admin.post(f"/v1/stores/{store}/enrollment-tokens").json()["enrollment_token"]
        new_token = enroll(server.url, store, fresh)
        with server.client(new_token) as agent:
            assert agent.get(f"/v1/stores/{store}/assignment").status_code == 200
