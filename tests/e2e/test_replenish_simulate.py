"""`shelfcast replenish simulate` on one real Walmart store: an agent process orders, the books balance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from shelfcast.cli import cli

CONFIG = """
[data]
format = "long"
freq = "W"
store_id = "Store"
item_id = "Dept"
category = "Dept"
ds = "Date"
y = "Weekly_Sales"
negative_values = "keep"
fill_gaps = "zero"

[train]
model_name = "walmart-weekly"
horizon = 4
season_length = 52
models = ["SeasonalNaive", "WindowAverage"]
windows = 1
step = 4
metric = "mae"
select_by = "all"
fallback = "Naive"
"""
KEYS = (
    "achieved_cycle_service_level",
    "fill_rate",
    "average_stock",
    "classic_average_stock",
    "stockout_rate",
)
LEAD_TIME = 2


def _shelfcast(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shelfcast", "--log-level", "warning", "replenish", "simulate", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_one_walmart_store_replayed_with_an_agent_process_ordering(shared_data: Path, tmp_path: Path) -> None:
    """Seven weeks of six departments: the JSON has every figure, stock never goes negative, sold + lost is
    the demand, orders arrive exactly after the lead time, and the agent's service level is sensible."""
    config = tmp_path / "walmart.toml"
    config.write_text(CONFIG)
    state = tmp_path / "replenish"
    result = _shelfcast(
        "--config", str(config), "--data", str(shared_data / "walmart" / "train.csv.gz"),
        "--service-level", "0.95", "--lead-time", str(LEAD_TIME), "--periods", "7", "--stores", "1",
        "--items", "6", "--state-dir", str(state), "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["stores"], report["items"], report["periods"]) == (["1"], 6, 7)
    assert len(report["categories"]) == 6
    for group in (report, *report["categories"].values()):
        assert all(np.isfinite(group[key]) for key in KEYS), group
        assert 0.0 <= group["fill_rate"] <= 1.0 and 0.0 <= group["achieved_cycle_service_level"] <= 1.0
        assert group["perfect_foresight"]["lost_demand"] == 0.0
        assert group["perfect_foresight"]["average_stock"] <= group["average_stock"]
    assert report["cycles"] == 6 * (7 - LEAD_TIME)
    assert report["achieved_cycle_service_level"] >= 0.75, report
    assert report["stock_vs_classic_ratio"] == pytest.approx(
        report["average_stock"] / report["classic_average_stock"]
    )

    ledgers = pl.read_parquet(report["ledgers"])
    assert sorted(ledgers["policy"].unique().to_list()) == ["agents", "classic", "perfect_foresight"]
    for (policy, item), rows in ledgers.sort("period").group_by("policy", "item_id"):
        start, end = rows["start_stock"].to_numpy(), rows["end_stock"].to_numpy()
        sold, lost, demand = rows["sold"].to_numpy(), rows["lost"].to_numpy(), rows["demand"].to_numpy()
        received, ordered = rows["received"].to_numpy(), rows["ordered"].to_numpy()
        assert (start >= 0).all() and (end >= 0).all() and (sold <= start + 1e-9).all(), (policy, item)
        np.testing.assert_allclose(sold + lost, demand)
        np.testing.assert_allclose(start[1:], end[:-1] + received[1:])
        assert start[0] == ordered[0]  # the opening stock
        # an order placed at period t (after the opening stock) arrives at t + lead time, not before
        np.testing.assert_allclose(received[LEAD_TIME + 1 :], ordered[1 : len(ordered) - LEAD_TIME])
        assert (received[: LEAD_TIME + 1] == 0).all()
    agents = ledgers.filter(pl.col("policy") == "agents")
    assert agents.filter(pl.col("period") > 0)["ordered"].sum() > 0
    assert (state / "logs" / "agent-1.log").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lead-time", "0"), "--lead-time must be at least 1"),
        (("--lead-time", "2", "--service-level", "1"), "--service-level must be between 0 and 1"),
        (("--lead-time", "3", "--periods", "3"), "--periods (3) must cover at least"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """A lead time of 0, a service level outside (0, 1) or a window shorter than a cycle: usage error."""
    config = tmp_path / "walmart.toml"
    config.write_text(CONFIG)
    data = tmp_path / "sales.csv"
    data.write_text("Store,Dept,Date,Weekly_Sales\n1,1,2012-01-06,10\n")
    result = CliRunner().invoke(
        cli,
        [
            "replenish",
            "simulate",
            "--config",
            str(config),
            "--data",
            str(data),
            "--state-dir",
            str(tmp_path / "s"),
            *args,
        ],
    )
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "s").exists()
