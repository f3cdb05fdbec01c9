"""Many agents at once against one real server process (the load suite's simulator, small)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.server.conftest import launch, make_bundle, publish

AGENTS = 50


def _bench_load() -> ModuleType:
    """benchmarks/bench_load.py as a module: the suite's fleet simulator, run here at a small size."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_load.py"
    spec = importlib.util.spec_from_file_location("bench_load_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fleet_load_counts_every_report_exactly_once(tmp_path: Path, signing_key: Path) -> None:
    """50 agents polling, beating and reporting (with resends) for 10 s: no error, and every heartbeat
    key, accuracy and drift report is counted once, through the API and in the stopped server's file."""
    bench = _bench_load()
    running = launch(tmp_path, signing_key.with_name(signing_key.name + ".pub"))
    try:
        with running.admin() as admin:
            publish(admin, make_bundle(tmp_path, signing_key, bench.MODEL, 1), bench.MODEL).raise_for_status()
            admin.put(f"/v1/models/{bench.MODEL}/aliases/champion", json={"version": 1}).raise_for_status()
        load = bench.simulate_fleet(running.url, running.admin_token, AGENTS, 10.0, "QL")
        api_problems = bench.counted_through_api(running.url, running.admin_token, load)
        with running.admin() as admin:
            stores = admin.get("/v1/stores", params={"region": "QL", "limit": 100}).json()["items"]
    finally:
        running.process.stop()
    assert load.errors == [], load.errors[:5]
    assert api_problems == []
    assert bench.counted_in_database(running.state_dir, load, "QL") == []
    assert load.duplicates_acknowledged > 0
    assert load.statuses["poll 200"] == AGENTS and load.statuses["poll 304"] > 0
    assert sum(len(v) for v in load.accuracy_sent.values()) >= AGENTS
    assert len(stores) == AGENTS
    assert all(s["status"]["state"] == "serving" and s["status"]["active_version"] == 1 for s in stores)
