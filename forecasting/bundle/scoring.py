"""The scoring engine: a bundle plus a store's history -> forecasts with intervals for every series.

``score`` reads the bundle's per-series model choice, applies fitted-state models to the fresh history
(no re-estimation), refits the cheap models, and returns one row per series and future step. Series in
the history that the bundle does not know (new items) get the bundle's ``fallback_model``; series the
bundle knows but the history lacks are skipped. The caller verifies the bundle first
(:func:`forecasting.bundle.format.verify`); scoring only reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import structlog

from forecasting.bundle.format import Manifest, ModelEntry, read_manifest
from forecasting.bundle.history import KEYS, History, future_dates, prepare_history
from forecasting.common.errors import BundleError, DataError
from forecasting.models.fitted import SERIES_PAYLOAD, FittedSet, FloatArray, load_fitted, model_state
from forecasting.models.fitted_forecast import (
    ensemble_forecast,
    forecast_batch,
    level_columns,
    order_for_batch,
)

# Series per chunk: by default one chunk per thread, within these bounds (memory of a chunk ~ width x size).
MIN_CHUNK_SERIES = 1024
MAX_CHUNK_SERIES = 8192


def output_columns(levels: Sequence[int]) -> list[str]:
    """Columns of a scored frame, in order."""
    return [
        "store_id",
        "item_id",
        "category",
        "ds",
        "forecast",
        *[f"forecast-{c}" for c in level_columns(levels)],
        "model",
    ]


def score(
    bundle_dir: Path,
    history: pl.DataFrame,
    *,
    horizon: int | None = None,
    levels: Sequence[int] | None = None,
    out: Path | None = None,
    threads: int = 2,
    chunk_series: int | None = None,
) -> pl.DataFrame:
    """Forecast every series of ``history`` with the (already verified) bundle at ``bundle_dir``.

    Returns ``store_id, item_id, category, ds, forecast, forecast-lo-80, forecast-hi-80, ...,
    model`` sorted by series and date. Series are scored in chunks (``chunk_series``; default one per
    thread, 1,024 to 8,192 series) on ``threads``
    worker threads (numpy releases the GIL in the kernels); with ``out`` (Parquet or CSV by extension)
    each finished chunk is streamed to the file in order, which is renamed into place at the end.
    """
    started = time.perf_counter()
    log = structlog.get_logger().bind(logger=__name__)
    manifest = read_manifest(bundle_dir)
    h = horizon or manifest.horizon
    lv = sorted(levels if levels is not None else manifest.levels)
    hist = prepare_history(history, manifest.freq)
    plan = _plan(bundle_dir, manifest, hist, history, h, lv, threads)
    n = hist.keys.height
    chunk = chunk_series or min(MAX_CHUNK_SERIES, max(MIN_CHUNK_SERIES, -(-n // max(1, threads))))
    bounds = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]

    def run(bound: tuple[int, int]) -> pl.DataFrame:
        scored = floor_at_zero(_score_chunk(plan, hist, bound[0], bound[1], h, lv, manifest), manifest)
        return apply_adjustments(scored, manifest)

    sink = _Sink(out, output_columns(lv))
    frames: list[pl.DataFrame] = []
    try:
        if threads > 1 and len(bounds) > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
                for frame in pool.map(run, bounds):
                    sink.write(frame)
                    frames.append(frame)
        else:
            for bound in bounds:
                frame = run(bound)
                sink.write(frame)
                frames.append(frame)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    result = pl.concat(frames) if frames else _empty(lv)
    log.info(
        "forecast_scored",
        model_name=manifest.model_name,
        model_version=manifest.version,
        n_series=n,
        horizon=h,
        threads=threads,
        duration_seconds=round(time.perf_counter() - started, 3),
    )
    return result


def floor_at_zero(frame: pl.DataFrame, manifest: Manifest) -> pl.DataFrame:
    """Unit-sales bundles (``intervals.nonnegative``): forecasts and bounds below 0 become 0, every model."""
    if not manifest.interval_settings().nonnegative:
        return frame
    columns = [c for c in frame.columns if c == "forecast" or c.startswith("forecast-")]
    return frame.with_columns(pl.when(pl.col(c) < 0).then(0.0).otherwise(pl.col(c)).alias(c) for c in columns)


def apply_adjustments(frame: pl.DataFrame, manifest: Manifest) -> pl.DataFrame:
    """Scale the point forecast and interval bounds by the manifest's adjustment factors (if any)."""
    adjustments = manifest.adjustments
    if isinstance(adjustments, msgspec.UnsetType):
        return frame
    columns = [c for c in frame.columns if c == "forecast" or c.startswith("forecast-")]
    factor: pl.Expr = pl.lit(adjustments.multiply)
    if adjustments.categories:
        factor = pl.col("category").replace_strict(
            adjustments.categories, default=adjustments.multiply, return_dtype=pl.Float64
        )
    return frame.with_columns(pl.col(c) * factor for c in columns)


def _empty(levels: Sequence[int]) -> pl.DataFrame:
    schema: dict[str, Any] = {"store_id": pl.Utf8, "item_id": pl.Utf8, "category": pl.Utf8, "ds": pl.Date}
    schema |= dict.fromkeys(output_columns(levels)[4:-1], pl.Float64)
    schema["model"] = pl.Utf8
    return pl.DataFrame(schema=schema)


@dataclass
class _Plan:
    """Which model each series uses; for every single model, the series it forecasts (alone or as an
    ensemble member), its fitted state rows and, for a global model, its forecasts, in that series order."""

    labels: np.ndarray[Any, Any]  # label per series (object array)
    entries: dict[str, ModelEntry]
    series_of: dict[str, np.ndarray[Any, np.dtype[np.int64]]]  # single label -> sorted series indices
    states: dict[str, pl.DataFrame]  # single label -> state rows aligned with series_of[label]
    global_results: dict[str, dict[str, FloatArray]]  # single label -> (len(series_of), h) arrays

    def rows(self, label: str, idx: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Positions of the series ``idx`` in ``label``'s own series order."""
        found: np.ndarray[Any, np.dtype[np.int64]] = np.searchsorted(self.series_of[label], idx)
        return found


def _plan(
    bundle_dir: Path,
    manifest: Manifest,
    hist: History,
    history: pl.DataFrame,
    h: int,
    levels: list[int],
    threads: int,
) -> _Plan:
    fitted = _load_models(bundle_dir, manifest)
    labels = _assign_labels(hist, fitted, manifest)
    label_arr = labels.to_numpy()
    entries: dict[str, ModelEntry] = {}
    users: dict[str, list[np.ndarray[Any, Any]]] = {}
    for label in sorted(set(labels.to_list())):
        idx = np.flatnonzero(label_arr == label)
        entry = _entry(label, manifest)
        entries[label] = entry
        for member in _members(label, entry, manifest):
            entries.setdefault(member, _entry(member, manifest))
            users.setdefault(member, []).append(idx)
    series_of = {label: np.sort(np.concatenate(parts)) for label, parts in users.items()}
    states: dict[str, pl.DataFrame] = {}
    global_results: dict[str, dict[str, FloatArray]] = {}
    for label, idx in series_of.items():
        entry = entries[label]
        if entry.state == "fitted-state":
            states[label] = _states(label, fitted, hist, idx)
        elif entry.state == "global":
            only_label = len(idx) == len(label_arr)
            global_results[label] = _global_forecasts(
                bundle_dir, manifest, entry, hist, idx, history, h, levels, threads, only_label=only_label
            )
    return _Plan(
        labels=label_arr, entries=entries, series_of=series_of, states=states, global_results=global_results
    )


def _members(label: str, entry: ModelEntry, manifest: Manifest) -> list[str]:
    """The single models behind ``label``: its ensemble members, or itself."""
    if entry.state != "ensemble":
        return [label]
    members = [str(m) for m in entry.params.get("members", [])]
    weights = entry.params.get("weights", [])
    if not members or len(weights) != len(members):
        raise BundleError(f"ensemble {label!r}: members and weights must be non-empty and of equal length")
    for member in members:
        inner = manifest.models.get(member)
        if inner is not None and inner.state == "ensemble":
            raise BundleError(f"ensemble {label!r}: member {member!r} is itself an ensemble")
    return members


def _global_forecasts(
    bundle_dir: Path,
    manifest: Manifest,
    entry: ModelEntry,
    hist: History,
    idx: np.ndarray[Any, Any],
    history: pl.DataFrame,
    h: int,
    levels: list[int],
    threads: int,
    *,
    only_label: bool,
) -> dict[str, FloatArray]:
    from forecasting.bundle.format import read_payload
    from forecasting.models.onnx_model import forecast_global

    keys = hist.keys[idx].select(KEYS).with_row_index("_pos")
    subset = history if only_label else history.join(keys.select(KEYS), on=KEYS, how="semi")
    model_bytes = read_payload(bundle_dir, manifest, entry.payload)
    fc = forecast_global(entry, model_bytes, subset, h, levels, threads=threads)
    fc = fc.join(keys, on=KEYS, how="inner")
    flat = fc["_pos"].to_numpy().astype(np.int64) * h + fc["horizon"].to_numpy().astype(np.int64) - 1
    out: dict[str, FloatArray] = {}
    for c in ["mean", *level_columns(levels)]:
        arr = np.full(len(idx) * h, np.nan)
        arr[flat] = fc["forecast" if c == "mean" else c].to_numpy()
        out[c] = arr.reshape(len(idx), h)
    return out


def _score_chunk(
    plan: _Plan, hist: History, a: int, b: int, h: int, levels: list[int], manifest: Manifest
) -> pl.DataFrame:
    n = b - a
    cols = ["mean", *level_columns(levels)]
    result = {c: np.full((n, h), np.nan) for c in cols}
    chunk_labels = plan.labels[a:b]
    for label in sorted(set(chunk_labels.tolist())):
        local = np.flatnonzero(chunk_labels == label)
        idx = local + a
        entry = plan.entries[label]
        if entry.state == "ensemble":
            acc = {c: np.zeros((len(idx), h)) for c in cols}
            for member, weight in zip(entry.params["members"], entry.params["weights"], strict=True):
                part = _forecast_single(plan, hist, str(member), idx, h, levels, manifest)
                for c in cols:
                    acc[c] += float(weight) * part[c]
            if manifest.interval_settings().method == "calibrated":
                acc = _calibrated_ensemble(plan, hist, entry, idx, h, levels, manifest, acc)
            for c in cols:
                result[c][local] = acc[c]
            continue
        part = _forecast_single(plan, hist, label, idx, h, levels, manifest)
        for c in cols:
            result[c][local] = part[c]
    keys = hist.keys.slice(a, n)
    return _assemble(keys, pl.Series("model", chunk_labels, dtype=pl.Utf8), result, h, levels, manifest.freq)


def _calibrated_ensemble(
    plan: _Plan,
    hist: History,
    entry: ModelEntry,
    idx: np.ndarray[Any, Any],
    h: int,
    levels: list[int],
    manifest: Manifest,
    averaged: dict[str, FloatArray],
) -> dict[str, FloatArray]:
    """An ensemble of local models with intervals calibrated on its own mean (global members: averaged)."""
    from forecasting.models.kernels import pad_right_aligned

    members = [str(m) for m in entry.params["members"]]
    if any(m in plan.global_results for m in members):
        return _scaled_ensemble(hist, entry, idx, levels, manifest, averaged)
    states = [plan.states[m][plan.rows(m, idx)] if m in plan.states else None for m in members]
    y, lengths = pad_right_aligned(hist.y, hist.offsets, idx)
    settings = manifest.interval_settings()
    out = ensemble_forecast(
        [(plan.entries[m], s) for m, s in zip(members, states, strict=True)],
        [float(w) for w in entry.params["weights"]],
        manifest.season_length,
        y,
        lengths,
        h,
        levels,
        settings.conformal_windows,
    )
    out["mean"] = averaged["mean"]
    return out


def _scaled_ensemble(
    hist: History,
    entry: ModelEntry,
    idx: np.ndarray[Any, Any],
    levels: list[int],
    manifest: Manifest,
    averaged: dict[str, FloatArray],
) -> dict[str, FloatArray]:
    """An ensemble with a global member: bounds from its backtest errors scaled by each series' level
    (:mod:`forecasting.training.ensemble_intervals`); bundles without them keep the averaged bounds."""
    from forecasting.models.calibration import scaled_bounds
    from forecasting.models.gbm_features import level_scale

    quantiles = entry.params.get("interval_scaled_quantiles") or {}
    if not levels or any(str(lv) not in quantiles for lv in levels):
        return averaged
    start, end = hist.offsets[idx], hist.offsets[idx + 1] - 1
    level = level_scale(hist.y, start, end, max(manifest.season_length, 1))
    return {"mean": averaged["mean"], **scaled_bounds(averaged["mean"], level, quantiles, levels)}


def _forecast_single(
    plan: _Plan,
    hist: History,
    label: str,
    idx: np.ndarray[Any, Any],
    h: int,
    levels: list[int],
    manifest: Manifest,
) -> dict[str, FloatArray]:
    """Forecasts of the series ``idx`` (in that order) with the single model ``label``."""
    from forecasting.models.kernels import pad_right_aligned

    rows = plan.rows(label, idx)
    if label in plan.global_results:
        return {c: arr[rows] for c, arr in plan.global_results[label].items()}
    entry = plan.entries[label]
    table = plan.states.get(label)
    states = table[rows] if table is not None else None
    order = order_for_batch(entry, states)
    position = np.arange(len(idx))
    if order is not None and states is not None:
        position, idx, states = position[order], idx[order], states[order]
    y, lengths = pad_right_aligned(hist.y, hist.offsets, idx)
    try:
        res = forecast_batch(
            entry, manifest.season_length, y, lengths, h, levels, states, manifest.interval_settings()
        )
    except Exception as exc:  # any failure of a model family: say which model and which series
        raise _model_failure(entry, label, hist.keys[idx], exc) from exc
    out: dict[str, FloatArray] = {}
    for c, arr in res.items():
        ordered = np.empty_like(arr)
        ordered[position] = arr
        out[c] = ordered
    return out


def _model_failure(entry: ModelEntry, label: str, keys: pl.DataFrame, exc: Exception) -> BundleError:
    """A scoring failure naming the model, its family, the categories and a first series it failed on."""
    categories = sorted(set(keys["category"].to_list()))
    shown = ", ".join(categories[:5]) + (f" (+{len(categories) - 5} more)" if len(categories) > 5 else "")
    first = keys.row(0, named=True)
    return BundleError(
        f"model {label!r} ({entry.family}) failed on {keys.height} series of category {shown}, "
        f"e.g. store {first['store_id']} item {first['item_id']}: {type(exc).__name__}: {exc}"
    )


class _Sink:
    """Streams chunks to Parquet (row group per chunk) or collects them for CSV; atomic rename."""

    def __init__(self, out: Path | None, columns: list[str]) -> None:
        self.out = out
        self.columns = columns
        self.tmp: Path | None = None
        self.writer: Any = None
        self.csv_frames: list[pl.DataFrame] = []
        if out is None:
            return
        suffix = out.suffix.lower()
        if suffix not in {".parquet", ".pq", ".csv"}:
            raise DataError(f"{out}: unknown output format (use .parquet or .csv)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out.with_name(f".{out.name}.tmp")

    def write(self, frame: pl.DataFrame) -> None:
        if self.out is None or self.tmp is None:
            return
        if self.out.suffix.lower() == ".csv":
            self.csv_frames.append(frame)
            return
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="lz4")
        self.writer.write_table(table)

    def close(self) -> None:
        if self.out is None or self.tmp is None:
            return
        if self.out.suffix.lower() == ".csv":
            (pl.concat(self.csv_frames) if self.csv_frames else pl.DataFrame()).write_csv(self.tmp)
        elif self.writer is None:
            pl.DataFrame().write_parquet(self.tmp)
        else:
            self.writer.close()
        self.tmp.replace(self.out)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _load_models(bundle_dir: Path, manifest: Manifest) -> FittedSet:
    if not any(f.path == SERIES_PAYLOAD for f in manifest.files):
        raise BundleError(f"{bundle_dir}: bundle has no {SERIES_PAYLOAD} (per-series model choice)")
    return load_fitted(bundle_dir, manifest)


def _assign_labels(hist: History, fitted: FittedSet, manifest: Manifest) -> pl.Series:
    joined = hist.keys.select(KEYS).join(
        fitted.series.select(*KEYS, "model"), on=KEYS, how="left", maintain_order="left"
    )
    return joined["model"].fill_null(manifest.fallback_model)


def _entry(label: str, manifest: Manifest) -> ModelEntry:
    entry = manifest.models.get(label)
    if entry is None:
        if label != manifest.fallback_model or model_state(label) != "refit-at-edge":
            raise BundleError(f"series assigned to model {label!r}, which the manifest does not describe")
        entry = ModelEntry(state="refit-at-edge", family=label)
    return entry


def _states(label: str, fitted: FittedSet, hist: History, idx: np.ndarray[Any, Any]) -> pl.DataFrame:
    """The fitted state rows of ``label`` for the series ``idx``, in that order."""
    keys = hist.keys[idx].select(KEYS)
    table = fitted.states[label].with_columns(_present=pl.lit(value=True))
    states = keys.join(table, on=KEYS, how="left", maintain_order="left")
    if states["_present"].null_count():
        raise BundleError(f"model {label!r}: fitted state missing for some series")
    return states.drop(*KEYS, "_present")


def _assemble(
    keys: pl.DataFrame,
    labels: pl.Series,
    result: dict[str, FloatArray],
    h: int,
    levels: Sequence[int],
    freq: str,
) -> pl.DataFrame:
    n = keys.height
    rep = np.repeat(np.arange(n), h)
    data: dict[str, Any] = {
        "ds": future_dates(keys["last_ds"], h, freq),
        "forecast": result["mean"].reshape(-1),
    }
    for c in level_columns(levels):
        data[f"forecast-{c}"] = result[c].reshape(-1)
    frame = keys.select(*KEYS, "category")[rep].with_columns(pl.DataFrame(data), model=labels[rep])
    return frame.select(output_columns(levels))


def write_forecasts(frame: pl.DataFrame, out: Path) -> Path:
    """Write forecasts to Parquet or CSV (by extension), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix.lower() == ".csv":
        frame.write_csv(tmp)
    elif out.suffix.lower() in {".parquet", ".pq"}:
        frame.write_parquet(tmp, compression="zstd")
    else:
        raise DataError(f"{out}: unknown output format (use .parquet or .csv)")
    tmp.replace(out)
    return out
