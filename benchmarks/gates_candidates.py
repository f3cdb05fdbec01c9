"""Which trained candidate is genuinely better than the gates benchmark's champion on the replayed weeks?

The offline check behind ``better_model`` in ``bench_gates.py``: every configuration is trained the way
``shelfcast simulate`` trains its versions (the same ``[data]``/``[train]`` settings, from
``shelfcast.simulate.publishing.training_settings``, on the Walmart weeks before the replay: 45 stores x
6 complete departments), written as a signed bundle, and scored from that bundle as the agents score it:
at every replayed week, on the sales up to the week before, ``--horizon`` weeks ahead. Each configuration's
forecasts are compared with the champion's on the same series and weeks (the paired evidence the rollout
gate weighs): the WAPE ratio candidate / champion per department and pooled, for the next week (what a
store's accuracy report pairs first) and over the whole horizon. No replay noise: the seeded noise of the
benchmark multiplies both sides' actuals alike.

    python benchmarks/gates_candidates.py [--only NAME ...] [--periods 44]

Prints a table per configuration; ``--json FILE`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import structlog

from forecasting.bundle.scoring import score
from forecasting.bundle.signing import generate_key_files
from forecasting.common.config import TrainConfig
from forecasting.data.frames import write_frame
from forecasting.data.validation import load_canonical
from forecasting.training.pipeline import train, write_run
from shelfcast.simulate.options import SimulationOptions
from shelfcast.simulate.publishing import training_settings
from shelfcast.simulate.sources import FleetData, load_walmart

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gates import BETTER_TRAIN, DATA

BLOCK_WEEKS = 4
# Trial configurations: [train] overrides laid over the champion's settings (Naive and SeasonalNaive
# chosen per department on one backtest window).
TRIALS: dict[str, dict[str, Any]] = {
    "champion": {},
    "better_model": BETTER_TRAIN,
    "ets_theta_w1": {"models": ["SeasonalNaive", "AutoETS", "AutoTheta"]},  # the earlier better_model
    "ets_theta_w3": {"models": ["Naive", "SeasonalNaive", "AutoETS", "AutoTheta"], "windows": 3},
    "naive_snaive_ens2": {"models": ["Naive", "SeasonalNaive"], "ensemble_top_k": 2},
    "ses_snaive_ens2": {"models": ["SES", "SeasonalNaive"], "ensemble_top_k": 2},
    "ets_snaive_ens2": {"models": ["AutoETS", "SeasonalNaive"], "ensemble_top_k": 2},
    "ses_snaive_ens2_w8": {"models": ["SES", "SeasonalNaive"], "ensemble_top_k": 2, "windows": 8},
    "naive_snaive_ens2_w8": {"models": ["Naive", "SeasonalNaive"], "ensemble_top_k": 2, "windows": 8},
    "top3_w3": {
        "models": ["Naive", "SeasonalNaive", "SES", "AutoETS", "AutoTheta", "WindowAverage"],
        "windows": 3,
        "ensemble_top_k": 3,
    },
    "lightgbm": {"models": ["Naive", "SeasonalNaive", "LightGBM"], "gbm_lags": [1, 2, 3, 4, 52]},
    "lightgbm_w4": {
        "models": ["Naive", "SeasonalNaive", "LightGBM"],
        "gbm_lags": [1, 2, 3, 4, 52],
        "windows": 4,
    },
    "lightgbm_53_w4": {
        "models": ["Naive", "SeasonalNaive", "LightGBM"],
        "gbm_lags": [1, 2, 3, 4, 51, 52, 53],
        "windows": 4,
    },
    "lightgbm_ens2_w4": {
        "models": ["Naive", "SeasonalNaive", "LightGBM"],
        "gbm_lags": [1, 2, 3, 4, 52],
        "windows": 4,
        "ensemble_top_k": 2,
    },
}


def _train(
    data: FleetData, overrides: dict[str, Any], out: Path, key: Path
) -> tuple[Path, float, dict[str, int]]:
    """Train like the simulation's publisher (validated frame, ``train``, signed bundle)."""
    settings = training_settings(data, SimulationOptions(state_dir=out), overrides)
    config = msgspec.convert(settings, TrainConfig)
    history = out / "history.parquet"
    if not history.exists():
        write_frame(data.history, history)
    frame = load_canonical(history, config.data).frame
    began = time.perf_counter()
    result = train(frame, config)
    record = write_run(result, out / "bundle", signing_key=key)
    models = {str(k): int(v) for k, v in record["selection"]["models"].items()}
    return out / "bundle", time.perf_counter() - began, models


def _rolling(data: FleetData, bundle: Path, horizon: int) -> pl.DataFrame:
    """The bundle's forecasts at every replayed week (``origin``) from the sales before it."""
    frames = []
    for origin in data.periods:
        seen = data.frame.filter(pl.col("ds") < origin)
        fc = score(bundle, seen, horizon=horizon, threads=1)
        frames.append(
            fc.select("store_id", "item_id", "ds", "forecast", "model").with_columns(
                pl.lit(origin).alias("origin"),
                (pl.int_range(pl.len()).over("store_id", "item_id") + 1).alias("step"),
            )
        )
    replayed = data.frame.filter(pl.col("ds") >= data.periods[0]).select("store_id", "item_id", "ds", "y")
    return pl.concat(frames).join(replayed, on=["store_id", "item_id", "ds"], how="inner")


def _ratios(champion: pl.DataFrame, other: pl.DataFrame) -> dict[str, Any]:
    """Paired WAPE ratio other / champion per department and pooled, next week and whole horizon."""
    keys = ["store_id", "item_id", "origin", "step"]
    paired = champion.join(other.select(*keys, pl.col("forecast").alias("cand")), on=keys, how="inner")
    paired = paired.with_columns(
        (pl.col("forecast") - pl.col("y")).abs().alias("e0"), (pl.col("cand") - pl.col("y")).abs().alias("e1")
    )
    out: dict[str, dict[str, float]] = {}
    for name, part in (("next_week", paired.filter(pl.col("step") == 1)), ("horizon", paired)):
        by_dept = part.group_by("item_id").agg(
            (pl.col("e1").sum() / pl.col("e0").sum()).alias("ratio"),
            (pl.col("e0").sum() / pl.col("y").abs().sum()).alias("wape0"),
        )
        row = {
            f"dept_{r['item_id']}": round(r["ratio"], 3)
            for r in by_dept.sort(pl.col("item_id").cast(pl.Int64)).iter_rows(named=True)
        }
        row["pooled"] = round(float(part["e1"].sum() / part["e0"].sum()), 3)
        row["champion_wape"] = round(float(part["e0"].sum() / part["y"].abs().sum()), 4)
        row["points"] = part.height
        out[name] = row
    # A rollout weighs a few weeks at a time: the pooled next-week ratio of each block of BLOCK_WEEKS
    # replayed weeks, and the worst department of each block.
    weeks = sorted(paired["origin"].unique().to_list())
    block = {w: i // BLOCK_WEEKS for i, w in enumerate(weeks)}
    nxt = paired.filter(pl.col("step") == 1).with_columns(
        pl.col("origin").replace_strict(block, return_dtype=pl.Int64).alias("block")
    )
    pooled = nxt.group_by("block").agg((pl.col("e1").sum() / pl.col("e0").sum()).alias("r")).sort("block")
    worst = (
        nxt.group_by("block", "item_id")
        .agg((pl.col("e1").sum() / pl.col("e0").sum()).alias("r"))
        .group_by("block")
        .agg(pl.col("r").max())
        .sort("block")
    )
    by_dept = (
        nxt.group_by("item_id", "block")
        .agg((pl.col("e1").sum() / pl.col("e0").sum()).round(3).alias("r"))
        .sort("block")
        .group_by("item_id", maintain_order=True)
        .agg("r")
    )
    out["blocks"] = {
        "pooled": [round(v, 3) for v in pooled["r"].to_list()],
        "worst_department": [round(v, 3) for v in worst["r"].to_list()],
        **{
            f"dept_{r['item_id']}": r["r"]
            for r in by_dept.sort(pl.col("item_id").cast(pl.Int64)).iter_rows(named=True)
        },
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="trial names (the champion always runs)")
    parser.add_argument("--periods", type=int, default=44, help="replayed weeks (the benchmark's 44)")
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    names = ["champion", *(n for n in (args.only or TRIALS) if n != "champion")]
    unknown = [n for n in names if n not in TRIALS]
    if unknown:
        parser.error(f"unknown trial(s) {unknown}; known: {sorted(TRIALS)}")
    data = load_walmart(DATA / "walmart", stores=None, departments=6, periods=args.periods)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gates-candidates-") as tmp:
        root = Path(tmp)
        key = generate_key_files(root / "signing.key")[0]
        champion: pl.DataFrame | None = None
        for name in names:
            work = root / name
            work.mkdir()
            bundle, seconds, models = _train(data, TRIALS[name], work, key)
            began = time.perf_counter()
            forecasts = _rolling(data, bundle, args.horizon)
            scoring = time.perf_counter() - began
            champion = forecasts if champion is None else champion
            figures = _ratios(champion, forecasts)
            chosen = forecasts.group_by("item_id").agg(pl.col("model").unique().sort()).sort("item_id")
            figures["chosen"] = {r["item_id"]: ", ".join(r["model"]) for r in chosen.iter_rows(named=True)}
            results[name] = {"train": TRIALS[name], "models": models, "train_seconds": round(seconds, 1),
                             "score_seconds": round(scoring, 1), **figures}  # fmt: skip
            print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
