"""The admin CLI talks to a real server over HTTP (never its database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from click.testing import CliRunner

from shelfcast.cli import cli
from tests.server.conftest import RunningServer, parquet_payload, unique


def _run(server: RunningServer, *args: str, token: str | None = None) -> Any:
    runner = CliRunner()
    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": token or server.admin_token}
    result = runner.invoke(cli, [*args, "-o", "json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _bundle_dir_with_run(tmp_path: Path, key: Path, model: str, version: int, run_id: str) -> Path:
    """A bundle directory with its ``<DIR>.run/run.json`` beside it, as ``shelfcast train`` leaves them."""
    from forecasting.bundle.format import Lineage, Manifest, write_bundle

    fingerprint = f"{model}-data".ljust(64, "0")[:64]
    out = tmp_path / f"{model}-v{version}"
    manifest = Manifest(
        model_name=model,
        version=version,
        created_at=datetime(2024, 6, 1, tzinfo=UTC),
        lineage=Lineage(run_id=run_id, dataset_fingerprint=fingerprint),
    )
    write_bundle(out, manifest, {"series.parquet": parquet_payload(b"x" * (100 + version))}, key)
    run_dir = tmp_path / f"{out.name}.run"
    run_dir.mkdir()
    record = {
        "run_id": run_id,
        "model_name": model,
        "version": version,
        "status": "finished",
        "dataset_fingerprint": fingerprint,
        "dataset": {
            "fingerprint": fingerprint,
            "rows": 7300,
            "first_ds": "2023-01-01",
            "last_ds": "2024-12-30",
        },
        "params": {"horizon": 28, "season_length": 7 * version},
        "metrics": {"selected": {"mase": 0.9 - version / 10}},
        "selection": {"metric": "mase"},
        "artifacts": {"selection": "selection.csv"},
    }
    (run_dir / "run.json").write_bytes(msgspec.json.encode(record))
    return out


def test_publish_alias_runs_datasets_and_stores(
    server: RunningServer, tmp_path: Path, signing_key: Path
) -> None:
    """publish registers the version and its run record; alias, runs, datasets, stores commands round-trip."""
    model = unique("cli")
    runs = [unique("run"), unique("run")]
    for version, run_id in ((1, runs[0]), (2, runs[1])):
        info = _run(
            server,
            "models",
            "publish",
            str(_bundle_dir_with_run(tmp_path, signing_key, model, version, run_id)),
            "--alias",
            "champion",
            "--reason",
            f"v{version} is better",
        )
        assert (info["version"], info["alias"]) == (version, "champion")
    assert _run(server, "models", "show", model)["aliases"] == {"champion": 2}
    assert [v["version"] for v in _run(server, "models", "versions", model)] == [2, 1]
    detail = _run(server, "models", "versions", model, "--version", "2")
    assert detail["lineage"]["run"]["run_id"] == runs[1]
    assert any(m["name"] == model for m in _run(server, "models", "list"))
    rolled = _run(server, "models", "alias", "rollback", model, "champion", "--reason", "regression")
    assert rolled["version"] == 1
    history = _run(server, "models", "alias", "history", model, "champion")
    assert [(h["from_version"], h["to_version"]) for h in history] == [(2, 1), (1, 2), (None, 1)]
    assert _run(server, "models", "alias", "set", model, "challenger", "2")["version"] == 2

    assert {r["run_id"] for r in _run(server, "runs", "list", "--model", model)} == set(runs)
    assert _run(server, "runs", "show", runs[0])["params"]["season_length"] == 7
    compared = {row["field"]: row for row in _run(server, "runs", "compare", *runs, "--only-differences")}
    assert compared["params.season_length"][runs[1]] == 14
    assert "params.horizon" not in compared

    dataset_id = detail["lineage"]["dataset"]["dataset_id"]
    shown = _run(server, "datasets", "show", dataset_id)
    assert (shown["row_count"], shown["date_min"], shown["date_max"]) == (7300, "2023-01-01", "2024-12-30")
    lineage = _run(server, "datasets", "lineage", dataset_id)
    assert {r["run_id"] for r in lineage["runs"]} == set(runs)
    assert sorted(v["version"] for v in lineage["versions"]) == [1, 2]
    assert any(d["dataset_id"] == dataset_id for d in _run(server, "datasets", "list"))

    store = unique("CLI")
    created = _run(
        server, "stores", "create", store, "--model", model, "--region", "west", "--group", "pilot"
    )
    assert created["enrollment_token"].startswith("sce_")
    listed = _run(server, "stores", "list", "--group", "pilot")
    assert store in {s["store_id"] for s in listed}
    assert _run(server, "stores", "show", store)["region"] == "west"
    updated = _run(
        server, "stores", "update", store, "--region", "east", "--group", "wave-1", "--group", "pilot"
    )
    assert (updated["region"], updated["groups"]) == ("east", ["pilot", "wave-1"])
    described = _run(server, "models", "update", model, "--description", "daily demand", "--tag", "grocery")
    assert (described["description"], described["tags"]) == ("daily demand", ["grocery"])
    assert _run(server, "stores", "enroll", store)["enrollment_token"] != created["enrollment_token"]
    assert _run(server, "stores", "revoke", store)["revoked_at"] is not None


def test_refusals_are_one_clear_line(server: RunningServer, tmp_path: Path) -> None:
    """A refused request exits 1 with the server's reason on stderr; a wrong token says so."""
    runner = CliRunner()
    env = {"SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": "wrong"}
    result = runner.invoke(cli, ["models", "list"], env=env)
    assert result.exit_code == 1
    assert "server refused (401): unknown or revoked credential" in result.stderr
    env["SHELFCAST_TOKEN"] = server.admin_token
    result = runner.invoke(cli, ["models", "show", "no-such-model"], env=env)
    assert result.exit_code == 1
    assert "no model named 'no-such-model'" in result.stderr
    config = tmp_path / "client.toml"
    config.write_text(f'[client]\nserver_url = "{server.url}"\ntoken = "{server.admin_token}"\n')
    result = runner.invoke(cli, ["stores", "list", "--client-config", str(config), "--limit", "1"], env={})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("STORE_ID")
