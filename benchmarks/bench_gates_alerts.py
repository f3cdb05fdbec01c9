"""Alerts that mean something: the default accuracy-degradation rule on a healthy fleet replay, no rollout.

``shelfcast simulate`` replays the last weeks of the real Walmart sales (45 stores, 6 complete departments)
for a real server and one real agent per store, with the champion trained on the weeks before and no
candidate. Nothing is wrong with the model, so every accuracy-degradation alert is a false one.

- ``false_alert_rate``: accuracy-degradation alerts fired (firing now or since resolved) per store x
  department x week with a served accuracy report; target <= 0.01 (one per 100).
- ``false_alerts`` and ``store_category_weeks``: the two counts behind it.

The replay is 26 weeks (2012-02-03 .. 2012-07-27); the tiny size replays 8 weeks of 3 stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shelfcast.simulate import SimulationOptions, simulation

pytestmark = pytest.mark.timeout(3 * 3600)
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SHELFCAST_TEST_DATA", ROOT.parent / "shared" / "data"))
RULE = "accuracy-degradation"
SIZES = {"full": (None, 26), "tiny": (3, 8)}  # stores (None: all 45), weeks replayed


def _walmart() -> Path:
    folder = DATA / "walmart"
    if not (folder / "train.csv.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {folder} (required when CI is set)")
        pytest.skip(f"real data not found at {folder}")
    return folder


def test_false_alert_rate(benchmark: Any, figures: Any, bench_size: str, tmp_path: Path) -> None:
    """Accuracy-degradation alerts per store x department x week of a healthy 26-week Walmart replay."""
    figures.timing(None)
    stores, weeks = SIZES[bench_size]
    options = SimulationOptions(
        state_dir=tmp_path / "replay", source="walmart", data_path=_walmart(), stores=stores, periods=weeks
    )
    with simulation(options) as sim:
        report = benchmark.pedantic(sim.run, rounds=1, iterations=1)
        with sim.admin() as client:
            alerts = client.get("/v1/alerts", params={"limit": 1000}).json()
            groups = client.get(
                "/v1/accuracy",
                params={"group_by": ["store_id", "category", "period"], "role": "served", "period": "week"},
            ).json()
    assert len(alerts) < 1000, "more alerts than one page lists"
    assert report.periods_replayed == weeks
    fired = sum(a["rule"] == RULE for a in alerts)
    figures.value("false_alerts", fired, "alerts")
    figures.value("store_category_weeks", len(groups), "weeks")
    figures.value("false_alert_rate", fired / len(groups), "alerts/week", target="value <= 0.01")
