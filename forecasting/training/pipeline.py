"""Training runs: backtest the candidates, select per category, fit on all data, bundle, record the run.

``train(frame, config)`` does the modelling and returns a :class:`TrainResult`; ``write_run`` turns it into a
signed bundle (through ``forecasting.bundle.format.write_bundle``) and a run directory beside it
(``<DIR>.run/`` with ``run.json``, the selection and metric tables and the forecasts of the final
fit). Every run records the dataset fingerprint (sha256 of the canonical frame), the config hash, the code and
package versions and the seed; the same inputs give byte-identical forecasts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import random
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from forecasting.common.config import TrainConfig, TrainSection
from forecasting.common.logs import get_logger, progress
from forecasting.common.version import shelfcast_version
from forecasting.models.families import GLOBAL_MODELS, check_candidates, ensemble_members, model_families
from forecasting.monitoring import drift
from forecasting.training import metrics
from forecasting.training.backtest import ID, BacktestResult, run_backtest, series_table
from forecasting.training.selection import Selection, select_models

log = get_logger(__name__)
PACKAGES = (
    "polars",
    "numpy",
    "scipy",
    "pandas",
    "statsforecast",
    "utilsforecast",
    "coreforecast",
    "lightgbm",
    "msgspec",
)


@dataclass(frozen=True)
class Lineage:
    """What a run is made of (recorded in run.json and in the bundle manifest)."""

    run_id: str
    dataset_fingerprint: str
    config_hash: str
    code_version: str
    packages: dict[str, str]
    seed: int
    content_hash: str = ""  # sha256 of data fingerprint, config hash and code version: equal runs share it


@dataclass(frozen=True)
class TrainResult:
    """Backtest evidence, selection, the per-series model of the final fit and the run's lineage."""

    backtest: BacktestResult
    selection: Selection
    assignment: pl.DataFrame
    frame: pl.DataFrame
    lineage: Lineage
    config: TrainConfig
    started_at: datetime
    duration_seconds: float


def dataset_fingerprint(frame: pl.DataFrame) -> str:
    """sha256 of the canonical frame's content (rows sorted by series and date, CSV-serialised)."""
    ordered = frame.sort(["store_id", "item_id", "ds"])
    digest = hashlib.sha256()
    digest.update(",".join(f"{k}:{v}" for k, v in ordered.schema.items()).encode())
    chunk = 200_000
    for start in range(0, ordered.height, chunk):
        digest.update(ordered.slice(start, chunk).write_csv(include_header=False).encode())
    return digest.hexdigest()


def config_hash(config: TrainConfig) -> str:
    """sha256 of the effective [data] and [train] sections (logging settings excluded)."""
    payload = msgspec.json.encode({"data": config.data, "train": config.train})
    return hashlib.sha256(payload).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape a forecast."""
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def make_lineage(frame: pl.DataFrame, config: TrainConfig) -> Lineage:
    """Fingerprints and versions of one run: a run id of its own (when, plus a random part), and the
    content hash of data, config and code, which two trainings of the same inputs share."""
    fp = dataset_fingerprint(frame)
    ch = config_hash(config)
    cv = shelfcast_version()
    run_id = f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    return Lineage(
        run_id=run_id,
        content_hash=hashlib.sha256(f"{fp}:{ch}:{cv}".encode()).hexdigest(),
        dataset_fingerprint=fp,
        config_hash=ch,
        code_version=cv,
        packages=package_versions(),
        seed=config.train.seed,
    )


def train(frame: pl.DataFrame, config: TrainConfig) -> TrainResult:
    """Backtest, select and decide the final per-series models for ``frame`` (a validated canonical frame)."""
    started_at = datetime.now().astimezone()
    t0 = time.perf_counter()
    cfg = config.train
    check_candidates(cfg)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)  # statsforecast draws from the global generator
    lineage = make_lineage(frame, config)
    log.info("training_started", run_id=lineage.run_id, rows=frame.height, models=cfg.models)
    with progress("training_progress", stage="backtest", run_id=lineage.run_id):
        result = run_backtest(frame, cfg, config.data.freq)
    selection = select_models(
        result,
        metric=cfg.metric,
        by=cfg.select_by,
        fallback=cfg.fallback,
        top_k=cfg.ensemble_top_k,
        season_length=cfg.scale_seasonality,
        min_improvement=cfg.series_min_improvement,
        min_windows=cfg.series_min_windows,
    )
    assignment = selection.assignment
    duration = time.perf_counter() - t0
    log.info(
        "training_selected",
        run_id=lineage.run_id,
        series=assignment.height,
        groups=selection.table.height,
        duration_seconds=round(duration, 3),
    )
    return TrainResult(
        backtest=result,
        selection=selection,
        assignment=assignment,
        frame=frame,
        lineage=lineage,
        config=config,
        started_at=started_at,
        duration_seconds=duration,
    )


def reference_stats(frame: pl.DataFrame, season_length: int) -> dict[str, dict[str, float]]:
    """Distribution summaries of the last year (or season x 8) of sales per category, for drift checks."""
    span = max(season_length * 8, 56)
    recent = frame.filter(
        pl.col("ds") > pl.col("ds").max().over(["store_id", "item_id"]) - _span(frame, span)
    )
    stats = recent.group_by("category").agg(
        pl.col("y").mean().alias("mean"),
        pl.col("y").std().alias("std"),
        pl.col("y").quantile(0.1).alias("p10"),
        pl.col("y").median().alias("p50"),
        pl.col("y").quantile(0.9).alias("p90"),
        (pl.col("y") == 0).mean().alias("zero_share"),
        pl.len().cast(pl.Float64).alias("n"),
    )
    out: dict[str, dict[str, float]] = {}
    for row in stats.sort("category").iter_rows(named=True):
        category = str(row.pop("category"))
        out[category] = {k: float(v) if v is not None else 0.0 for k, v in row.items()}
    return out


def _span(frame: pl.DataFrame, periods: int) -> Any:
    dtype = frame.schema["ds"]
    if isinstance(dtype, pl.Datetime):
        return pl.duration(hours=periods)
    step = frame.select(pl.col("ds").unique().sort().diff().drop_nulls().min()).item()
    return step * periods if step is not None else timedelta(days=periods)


def metrics_tables(result: BacktestResult) -> dict[str, pl.DataFrame]:
    """Backtest metrics per series, category, store and overall."""
    sm = result.series_metrics
    return {
        "series": sm.select(
            ID, "store_id", "item_id", "category", pl.exclude(ID, "store_id", "item_id", "category")
        ),
        "category": metrics.aggregate(sm, ["category"]),
        "store": metrics.aggregate(sm, ["store_id"]),
        "overall": metrics.aggregate(sm),
    }


def manifest_metrics(result: BacktestResult, assignment: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Backtest metrics of the chosen model per category (and ``all``), as the manifest records them."""
    chosen = result.series_metrics.join(assignment.select(ID, "model"), on=[ID, "model"], how="semi")
    cols = ["mae", "wape", "smape", "mase", "rmsse", "bias", "wmae"]
    out: dict[str, dict[str, float]] = {}
    cat = metrics.aggregate(chosen.with_columns(pl.lit("chosen").alias("model")), ["category"])
    for row in cat.iter_rows(named=True):
        out[str(row["category"])] = _finite_dict(row, cols)
    overall = metrics.aggregate(chosen.with_columns(pl.lit("chosen").alias("model")))
    if overall.height:
        out["all"] = _finite_dict(overall.row(0, named=True), cols)
    return out


def _finite_dict(row: dict[str, Any], cols: list[str]) -> dict[str, float]:
    # 12 significant digits: parallel float sums may differ in the last bit between runs.
    return {c: float(f"{row[c]:.12g}") for c in cols if row.get(c) is not None and np.isfinite(row[c])}


def write_run(
    result: TrainResult,
    out_dir: Path,
    *,
    signing_key: Path,
    model_name: str | None = None,
    version: int = 1,
    data_mapping: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Fit the final models, write the signed bundle at ``out_dir`` and the run directory beside it."""
    from forecasting.bundle.format import Lineage as BundleLineage
    from forecasting.bundle.format import Manifest, require_empty, write_bundle
    from forecasting.bundle.scoring import score
    from forecasting.models.families import interval_settings
    from forecasting.models.fitted import fit_models

    cfg = result.config.train
    name = model_name or cfg.model_name
    t0 = time.perf_counter()
    families, params = model_families(cfg)
    keyed = result.assignment.select("store_id", "item_id", "model")
    labels = sorted({m for label in keyed["model"].unique().to_list() for m in ensemble_members(label)})
    with progress("training_progress", stage="final_fit", run_id=result.lineage.run_id):
        global_model = None
        if any(label in GLOBAL_MODELS for label in labels):
            from forecasting.models import gbm, gbm_features

            spec = gbm_features.make_spec(result.frame, cfg, result.config.data.freq, cfg.horizon)
            global_model = gbm.fit(result.frame, spec, cfg)
        fitted = fit_models(
            result.frame,
            keyed,
            season_length=cfg.season_length,
            freq=result.config.data.freq,
            model_params={label: params.get(label, {}) for label in labels},
            families={label: families.get(label, label) for label in labels},
            n_jobs=cfg.n_jobs,
            global_model=global_model,
            levels=list(cfg.levels),
        )
        _calibrate_ensembles(fitted.models, result, keyed)
    lineage = result.lineage
    now = datetime.now().astimezone()
    selection_map = {
        str(r["category"]): str(r["model"])
        for r in result.assignment.group_by("category")
        .agg(pl.col("model").mode().sort().first())
        .sort("category")
        .iter_rows(named=True)
    }
    manifest = Manifest(
        model_name=name,
        version=version,
        created_at=now,
        expires_at=now + timedelta(days=cfg.bundle_expiry_days),
        freq=result.config.data.freq,
        horizon=cfg.horizon,
        levels=list(cfg.levels),
        season_length=cfg.season_length,
        data=data_mapping or msgspec.to_builtins(result.config.data),
        selection=selection_map,
        models=fitted.models,
        fallback_model=cfg.fallback,
        intervals=interval_settings(cfg, result.frame),
        metrics=manifest_metrics(result.backtest, result.assignment),
        reference=drift.reference_summary(result.frame, cfg.season_length),
        lineage=BundleLineage(
            run_id=lineage.run_id,
            dataset_fingerprint=lineage.dataset_fingerprint,
            config_hash=lineage.config_hash,
            code_version=lineage.code_version,
            packages=lineage.packages,
        ),
    )
    # The bundle is scored once, from its own files, before it takes its place: a model that cannot
    # forecast leaves no bundle behind, and the error names the model and the series it failed on.
    require_empty(out_dir)
    candidate = out_dir.parent / f".{out_dir.name}.candidate"
    shutil.rmtree(candidate, ignore_errors=True)
    write_bundle(candidate, manifest, fitted.payloads, signing_key)
    try:
        with progress("training_progress", stage="bundle_scoring", run_id=result.lineage.run_id):
            forecasts = score(candidate, result.frame, horizon=cfg.horizon, levels=cfg.levels)
        candidate.replace(out_dir)
    except BaseException:
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    bundle_dir = out_dir
    run_dir = out_dir.parent / f"{out_dir.name}.run"
    run_dir.mkdir(parents=True, exist_ok=True)
    forecasts.write_parquet(run_dir / "forecasts.parquet", statistics=False)
    artifacts = write_tables(result.backtest, result.selection, run_dir)
    artifacts["forecasts"] = str(run_dir / "forecasts.parquet")
    artifacts["assignment"] = str(run_dir / "assignment.csv")
    result.assignment.write_csv(run_dir / "assignment.csv")
    for key, path in (extra_files or {}).items():
        artifacts[key] = str(path)
    finished = datetime.now().astimezone()
    record = run_record(result, name, version, bundle_dir, artifacts, finished)
    (run_dir / "run.json").write_bytes(msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
    log.info(
        "model_trained",
        run_id=lineage.run_id,
        model_name=name,
        version=version,
        series=result.assignment.height,
        bundle=str(bundle_dir),
        duration_seconds=round(result.duration_seconds + time.perf_counter() - t0, 3),
    )
    return record


def _calibrate_ensembles(models: dict[str, Any], result: TrainResult, keyed: pl.DataFrame) -> None:
    """Ensembles with a global member get intervals from their own backtest errors (in place)."""
    from forecasting.training.ensemble_intervals import scaled_error_quantiles

    cfg = result.config.train
    for label, entry in list(models.items()):
        members = [str(m) for m in entry.params.get("members", [])] if entry.state == "ensemble" else []
        if not any(m in GLOBAL_MODELS for m in members):
            continue
        ids = keyed.filter(pl.col("model") == label).select(
            pl.concat_str("store_id", "item_id", separator="/").alias(ID)
        )[ID]
        weights = [float(w) for w in entry.params["weights"]]
        quantiles = scaled_error_quantiles(
            result.backtest.cv, result.frame, members, weights, ids, cfg.season_length, cfg.levels
        )
        if quantiles is not None:
            params = {**entry.params, "interval_scaled_quantiles": quantiles}
            models[label] = msgspec.structs.replace(entry, params=params)


def write_tables(result: BacktestResult, selection: Selection, out_dir: Path) -> dict[str, str]:
    """Metric tables (CSV + JSON per level) and the selection table in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for level, table in metrics_tables(result).items():
        csv_path = out_dir / f"metrics_{level}.csv"
        table.write_csv(csv_path, float_precision=6)
        (out_dir / f"metrics_{level}.json").write_bytes(
            msgspec.json.format(msgspec.json.encode(_json_rows(table)), indent=2) + b"\n"
        )
        written[f"metrics_{level}"] = str(csv_path)
    sel_path = out_dir / "selection.csv"
    selection.table.write_csv(sel_path, float_precision=6)
    (out_dir / "selection.json").write_bytes(
        msgspec.json.format(msgspec.json.encode(_json_rows(selection.table)), indent=2) + b"\n"
    )
    written["selection"] = str(sel_path)
    return written


def _json_rows(table: pl.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for row in table.iter_rows(named=True):
        rows.append({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()})
    return rows


def run_record(
    result: TrainResult,
    model_name: str,
    version: int,
    bundle_dir: Path,
    artifacts: dict[str, str],
    finished: datetime,
) -> dict[str, Any]:
    """The run record (``run.json``) in the shape the registry's ``POST /v1/runs`` accepts."""
    lin = result.lineage
    cfg = result.config
    overall = metrics.aggregate(result.backtest.series_metrics)
    candidate_metrics = {
        str(r["model"]): _finite_dict(r, ["mae", "wape", "smape", "mase", "rmsse", "bias", "wmae"])
        for r in overall.iter_rows(named=True)
    }
    chosen = manifest_metrics(result.backtest, result.assignment)
    series = series_table(result.frame)
    return {
        "run_id": lin.run_id,
        "model_name": model_name,
        "version": version,
        "status": "finished",
        "started_at": result.started_at.isoformat(),
        "finished_at": finished.isoformat(),
        "dataset_fingerprint": lin.dataset_fingerprint,
        "content_hash": lin.content_hash,
        "dataset": {
            "fingerprint": lin.dataset_fingerprint,
            "rows": result.frame.height,
            "series": series.height,
            "first_ds": str(result.frame["ds"].min()),
            "last_ds": str(result.frame["ds"].max()),
            "freq": cfg.data.freq,
        },
        "config_hash": lin.config_hash,
        "code_version": lin.code_version,
        "packages": lin.packages,
        "seed": lin.seed,
        "params": msgspec.to_builtins(cfg.train),
        "data_mapping": msgspec.to_builtins(cfg.data),
        "candidates": list(result.backtest.models),
        "backtest": {
            "horizon": result.backtest.horizon,
            "windows": result.backtest.windows,
            "step": result.backtest.step,
            "series": result.backtest.series.height - len(result.backtest.short_series),
            "short_series": len(result.backtest.short_series),
            "duration_seconds": round(result.backtest.duration_seconds, 3),
        },
        "metrics": {
            "selected": chosen.get("all", {}),
            "by_category": chosen,
            "candidates": candidate_metrics,
        },
        "selection": {
            "metric": result.selection.metric,
            "by": result.selection.by,
            "fallback": result.selection.fallback,
            "categories": {
                str(r["category"]): str(r["model"])
                for r in result.assignment.group_by("category")
                .agg(pl.col("model").mode().sort().first())
                .sort("category")
                .iter_rows(named=True)
            },
            "models": {
                str(r["model"]): int(r["count"])
                for r in result.assignment["model"].value_counts().sort("model").iter_rows(named=True)
            },
        },
        "bundle": str(bundle_dir),
        "artifacts": artifacts,
    }


def forecast_selected(
    frame: pl.DataFrame, assignment: pl.DataFrame, cfg: TrainSection, freq: str, *, horizon: int | None = None
) -> pl.DataFrame:
    """Fit each series' assigned model (ensembles: the mean of their members) on ``frame`` and forecast.

    Returns ``unique_id, ds, forecast, model`` sorted by series and date (point forecasts; the bundle's
    scoring path adds intervals).
    """
    from statsforecast import StatsForecast

    from forecasting.models.families import build_models
    from forecasting.training.backtest import SF_FREQ, sf_frame

    h = horizon or cfg.horizon
    data = sf_frame(frame)
    parts: list[pl.DataFrame] = []
    global_fc: pl.DataFrame | None = None
    if any(
        m in GLOBAL_MODELS
        for label in assignment["model"].unique().to_list()
        for m in ensemble_members(label)
    ):
        from forecasting.models import gbm, gbm_features

        model = gbm.fit(frame, gbm_features.make_spec(frame, cfg, freq, h), cfg)
        global_fc = (
            model.predict(frame)
            .filter(pl.col("horizon") <= h)
            .select(
                pl.concat_str("store_id", "item_id", separator="/").alias(ID),
                "ds",
                pl.col("forecast").alias("LightGBM"),
            )
        )
    for label in sorted(assignment["model"].unique().to_list()):
        ids = assignment.filter(pl.col("model") == label).select(ID)
        members = ensemble_members(label)
        local = [m for m in members if m not in GLOBAL_MODELS]
        if local:
            sub = data.join(ids, on=ID, how="semi")
            sf = StatsForecast(
                models=build_models(local, cfg, h, intervals=False), freq=SF_FREQ[freq], n_jobs=cfg.n_jobs
            )
            out = sf.forecast(df=sub, h=h).with_columns(pl.col(ID).cast(pl.Utf8))
        else:
            out = global_fc.join(ids, on=ID, how="semi").select(ID, "ds") if global_fc is not None else ids
        if global_fc is not None and len(local) < len(members):
            out = out.join(global_fc, on=[ID, "ds"], how="left")
        parts.append(
            out.select(
                ID,
                "ds",
                pl.mean_horizontal([pl.col(m) for m in members]).alias("forecast"),
                pl.lit(label).alias("model"),
            )
        )
    return pl.concat(parts).with_columns(pl.col(ID).cast(pl.Utf8)).sort(ID, "ds")
