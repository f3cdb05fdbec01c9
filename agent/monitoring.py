"""Measure at the store: accuracy of past forecasts once their actuals arrive, and weekly data drift.

Called by the work loop after an ingest that added rows. For every kept scoring run (the served
version's, role ``served``, and the shadow version's scored beside it, role ``shadow``) it scores the
forecast dates that now have actuals and were not reported before (a watermark per run in
``monitoring.json``), and once a week of new sales has come in it checks drift against the served
bundle's reference. The newest served accuracy report also carries, per category, the order proposals
of the run served now and the cycle service level the store achieved (``ReplenishmentTotals``). The
newest reports are also kept as JSON files under
``<state_dir>/monitoring/{accuracy,drift}/``; new sales rows go to the server in ``ActualsBatch`` chunks
for the central dataset. Reports are queued in the durable outbox with
deterministic idempotency keys, so a crash between queueing and recording the watermark resends a
report the server already counted, and the server drops it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent.paths import StatePaths, atomic_write_bytes
from agent.replenishment import category_totals
from forecasting.common.logs import get_logger

if TYPE_CHECKING:
    import polars as pl

    from agent.store import LocalStore

log = get_logger("agent.monitoring")

STATE_FILE = "monitoring.json"
DRIFT_EVERY_DAYS = 7
ACTUALS_BATCH_ROWS = 5_000
KEEP_LOCAL_REPORTS = 200


class MonitoringState(msgspec.Struct, kw_only=True):
    """What was reported already: per scoring run the last forecast date measured; the last drift date."""

    accuracy_through: dict[str, date] = msgspec.field(default_factory=dict)
    drift_through: date | None = None
    actuals_through: date | None = None


@dataclass
class Outcome:
    accuracy_reports: int = 0
    drift_reports: int = 0
    actuals_batches: int = 0
    reports: list[tuple[str, bytes, str]] = field(default_factory=list)


def _state_path(paths: StatePaths) -> Path:
    return paths.root / STATE_FILE


def load_state(paths: StatePaths) -> MonitoringState:
    try:
        return msgspec.json.decode(_state_path(paths).read_bytes(), type=MonitoringState)
    except (FileNotFoundError, msgspec.DecodeError):
        return MonitoringState()


def _keep_locally(paths: StatePaths, kind: str, key: str, body: bytes) -> None:
    """Keep the newest reports of each kind as JSON files under ``<state_dir>/monitoring/<kind>/``."""
    folder = paths.root / "monitoring" / kind
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{key}.json", body)
    kept = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in kept[KEEP_LOCAL_REPORTS:]:
        old.unlink(missing_ok=True)


def _history(store: LocalStore, paths: StatePaths) -> pl.DataFrame:
    import polars as pl

    tmp = paths.root / f"monitoring-history-{secrets.token_hex(4)}.parquet"
    try:
        store.export_history(tmp)
        return pl.read_parquet(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def measure(
    paths: StatePaths,
    store: LocalStore,
    *,
    store_id: str,
    active: tuple[str, int] | None,
    outbox_max_rows: int,
    history: pl.DataFrame | None = None,
) -> Outcome:
    """Compute and queue the reports that the sales now in the store allow; returns what was queued."""
    from forecasting.bundle.format import read_manifest

    state = load_state(paths)
    outcome = Outcome()
    frame = history if history is not None else _history(store, paths)
    if frame.height == 0:
        return outcome
    latest = frame.select("ds").max().item()
    kept = {r["run_id"]: r for r in store.runs(limit=1000)}
    reports = []
    served_path: str | None = None
    for run_id, run in sorted(kept.items(), key=lambda kv: kv[1]["started_at"]):
        bundle = paths.bundle_dir(run["model_name"], run["version"])
        if bundle is None:
            continue
        # runs recorded before roles were: served when of the active version, else shadow
        role = run.get("role") or ("served" if active == (run["model_name"], run["version"]) else "shadow")
        served_path = run["path"] if role == "served" else served_path
        report = _accuracy_report(
            paths, run, frame, read_manifest(bundle), store_id=store_id, role=role,
            after=state.accuracy_through.get(run_id),
        )  # fmt: skip
        if report is None:
            continue
        reports.append(report)
        state.accuracy_through[run_id] = report.period_end
    served = [i for i, r in enumerate(reports) if r.role == "served"]
    if served:  # the newest served report carries the proposals of the run served now
        totals = category_totals(paths, store, served_path)
        reports[served[-1]] = msgspec.structs.replace(reports[served[-1]], replenishment=totals)
    for report in reports:
        outcome.reports.append(("/v1/accuracy", msgspec.json.encode(report), report.report_id))
        outcome.accuracy_reports += 1
    state.accuracy_through = {k: v for k, v in state.accuracy_through.items() if k in kept}
    due = state.drift_through is None or latest >= state.drift_through + timedelta(days=DRIFT_EVERY_DAYS)
    if active is not None and due:
        bundle = paths.version_dir(*active)
        if bundle.is_dir():
            drift = _drift_report(bundle, frame, store_id=store_id, model=active, as_of=latest)
            outcome.reports.append(("/v1/drift", msgspec.json.encode(drift), drift.report_id))
            state.drift_through = latest
            outcome.drift_reports += 1
    for batch in _actuals_batches(frame, store_id=store_id, after=state.actuals_through):
        outcome.reports.append(("/v1/actuals", msgspec.json.encode(batch), batch.batch_id))
        outcome.actuals_batches += 1
    state.actuals_through = latest
    for path, body, key in outcome.reports:
        kind = path.removeprefix("/v1/")
        if kind != "actuals":
            _keep_locally(paths, kind, key, body)
        store.enqueue(kind, path, body, key, max_rows=outbox_max_rows)
    atomic_write_bytes(_state_path(paths), msgspec.json.encode(state))
    if outcome.reports:
        log.info(
            "monitoring_reports_queued", store_id=store_id, accuracy_reports=outcome.accuracy_reports,
            drift_reports=outcome.drift_reports, actuals_batches=outcome.actuals_batches,
            latest_sales=str(latest),
        )  # fmt: skip
    return outcome


def _accuracy_report(
    paths: StatePaths,
    run: dict[str, Any],
    frame: pl.DataFrame,
    manifest: Any,
    *,
    store_id: str,
    role: str,
    after: date | None,
) -> Any:
    import polars as pl

    from forecasting.common.contracts import AccuracyReport
    from forecasting.monitoring.accuracy import DEFAULT_BUCKETS, evaluate

    forecasts_path = paths.root / run["path"]
    if not forecasts_path.is_file():
        return None
    forecasts = pl.read_parquet(forecasts_path)
    first = forecasts.select(pl.col("ds").min()).item()
    actuals = frame.filter(pl.col("ds") >= first)
    if after is not None:
        actuals = actuals.filter(pl.col("ds") > after)
    if actuals.height == 0:
        return None
    history = frame.filter(pl.col("ds") < first)
    full = _with_steps(forecasts)
    rows, joined = evaluate(
        full.filter(pl.col("ds") > after) if after is not None else full,
        actuals,
        history=history,
        season_length=manifest.season_length,
        levels=manifest.levels,
        buckets=DEFAULT_BUCKETS.get(manifest.freq, DEFAULT_BUCKETS["D"]),
        backtest=manifest.metrics,
    )
    if not rows:
        return None
    period_start, period_end = joined.select(
        pl.col("ds").min().alias("a"), pl.col("ds").max().alias("b")
    ).row(0)
    return AccuracyReport(
        report_id=f"acc-{store_id}-{run['run_id']}-{period_end}",
        store_id=store_id,
        model_name=run["model_name"],
        version=int(run["version"]),
        role=role,
        scoring_id=run.get("scoring_id") or run["run_id"],
        period_start=period_start,
        period_end=period_end,
        created_at=datetime.now(UTC),
        rows=rows,
    )


def _with_steps(forecasts: pl.DataFrame) -> pl.DataFrame:
    from forecasting.monitoring.accuracy import with_horizon

    return with_horizon(forecasts)


def _drift_report(
    bundle: Path, frame: pl.DataFrame, *, store_id: str, model: tuple[str, int], as_of: date
) -> Any:
    import polars as pl

    from forecasting.bundle.format import read_manifest
    from forecasting.common.contracts import DriftReport
    from forecasting.monitoring.drift import drift_report

    manifest = read_manifest(bundle)
    series = bundle / "series.parquet"
    known = None
    if series.is_file():
        known = set(pl.read_parquet(series, columns=["item_id"])["item_id"].cast(pl.Utf8).to_list())
    found = drift_report(frame, as_of=as_of, reference=manifest.reference, known_items=known)
    return DriftReport(
        report_id=f"drift-{store_id}-{model[0]}-{model[1]}-{as_of}",
        store_id=store_id,
        model_name=model[0],
        version=model[1],
        role="served",
        period_start=found.period_start,
        period_end=found.period_end,
        created_at=datetime.now(UTC),
        unknown_item_share=found.unknown_item_share,
        missing_rate=found.missing_rate,
        categories=found.categories,
    )


def measure_after_ingest(runtime: Any) -> None:
    """The work loop's call after new sales: measure, and never let a failure stop the loop."""
    active = runtime.record.active
    try:
        measure(
            runtime.paths,
            runtime.store,
            store_id=runtime.config.agent.store_id,
            active=(active.model_name, active.version) if active is not None else None,
            outbox_max_rows=runtime.config.agent.outbox_max_rows,
        )
    except Exception as exc:  # a monitoring bug must not stop forecasting
        log.exception("monitoring_failed", reason=str(exc))
        runtime.count_error("monitoring", f"{type(exc).__name__}: {exc}")
    else:
        runtime.resolve_errors("monitoring")


def _actuals_batches(frame: pl.DataFrame, *, store_id: str, after: date | None) -> list[Any]:
    """The store's rows newer than ``after`` as ActualsBatch chunks (ids derived from their content)."""
    import hashlib

    import polars as pl

    from forecasting.common.contracts import ActualRow, ActualsBatch

    new = frame if after is None else frame.filter(pl.col("ds") > after)
    new = new.sort("ds", "item_id")
    batches = []
    for offset in range(0, new.height, ACTUALS_BATCH_ROWS):
        part = new.slice(offset, ACTUALS_BATCH_ROWS)
        rows = [
            ActualRow(item_id=str(r["item_id"]), category=str(r["category"]), ds=r["ds"], y=float(r["y"]))
            for r in part.iter_rows(named=True)
        ]
        digest = hashlib.sha256(msgspec.json.encode(rows)).hexdigest()[:16]
        first, last = str(part["ds"].min()), str(part["ds"].max())
        batches.append(
            ActualsBatch(
                batch_id=f"act-{store_id}-{first}-{last}-{digest}", store_id=store_id,
                created_at=datetime.now(UTC), rows=rows,
            )
        )  # fmt: skip
    return batches
