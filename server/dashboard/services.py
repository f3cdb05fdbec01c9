"""What each dashboard page shows, assembled from the domains' services and the dashboard's own aggregates.

The service returns plain dicts (template contexts) with the charts already drawn as SVG. It reads only:
registry, rollouts and monitoring through their services, fleet and accuracy grids through
:mod:`server.dashboard.repository`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import msgspec

from forecasting.common.contracts import DriftTest
from forecasting.monitoring.drift_verdict import DECISIVE_TESTS, verdict_reason
from server.dashboard import svg
from server.dashboard.repository import DashboardRepository, FleetFilter
from server.db import utcnow
from server.errors import InvalidInputError, NotFoundError
from server.quality.repository import Filters

PAGE_SIZE = 50
HEAT_STORES = 40
HEAT_CATEGORIES = 30
MAX_CHART_CATEGORIES = 8
ROLLOUT_ACTIONS = {
    "running": ("pause", "promote", "abort"),
    "paused": ("resume", "promote", "abort"),
    "awaiting_approval": ("approve", "pause", "promote", "abort"),
    "promoting": (),
}


@dataclass(frozen=True)
class Paging:
    page: int
    pages: int
    total: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * PAGE_SIZE


def paging(page: int, total: int, size: int = PAGE_SIZE) -> Paging:
    pages = max(1, math.ceil(total / size))
    return Paging(page=min(max(1, page), pages), pages=pages, total=total)


class DashboardService:
    """The dashboard's read side over the open server state (``server.app.ServerState``)."""

    def __init__(self, state: Any) -> None:
        from server.quality.controllers import service_of

        self.state = state
        self.repo = DashboardRepository(state.db)
        self.quality = service_of(state)

    # --- fleet ------------------------------------------------------------------------------------

    def fleet(self, f: FleetFilter, page: int) -> dict[str, Any]:
        stale_after = self.state.config.server.stale_after_seconds
        now = utcnow()
        stale_before = now - timedelta(seconds=stale_after)
        _, total = self.repo.fleet_page(f, stale_before, 0, 0)
        pg = paging(page, total)
        rows, _ = self.repo.fleet_page(f, stale_before, pg.offset, PAGE_SIZE)
        for row in rows:
            contact = row["last_contact_at"]
            row["age_seconds"] = None if contact is None else max(0.0, (now - contact).total_seconds())
            row["error_total"] = sum(row["errors"].values())
        counts = self.repo.fleet_counts(stale_before)
        bars = [
            (
                f"{c['model_name']} v{c['version']}"
                if c["version"] is not None
                else f"{c['model_name']} none",
                c["n"],
            )
            for c in counts["by_version"]
        ]
        return {
            "rows": rows,
            "paging": pg,
            "filter": f,
            "counts": counts,
            "stale_after_seconds": stale_after,
            "version_chart": svg.bar_chart(bars, label="Stores by model version"),
            "state_chart": svg.bar_chart(
                [(s["state"], s["n"]) for s in counts["by_state"]], label="Stores by lifecycle state"
            ),
            "show_errors": "errors" in self.repo.status_columns(),
        }

    # --- models -----------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"models": self.state.registry.list_models(200, None).items}

    def model(self, name: str, cursor: str | None) -> dict[str, Any]:
        """One model: aliases, the newest alias moves and runs, and its versions 50 a page (newest first)."""
        registry = self.state.registry
        info = registry.get_model(name)
        versions = registry.list_versions(name, PAGE_SIZE, cursor)
        aliases = registry.list_aliases(name)
        history = registry.alias_history(name, None, 100, None).items
        runs = registry.list_runs(name, 50, None).items
        return {
            "model": info,
            "versions": versions.items,
            "older_versions": versions.next_cursor,
            "aliases": aliases,
            "history": history,
            "runs": runs,
            "known_runs": {r.run_id for r in runs},
        }

    def version(self, name: str, version: int) -> dict[str, Any]:
        registry = self.state.registry
        detail = registry.version_detail(name, version)
        lineage = registry.version_lineage(name, version)
        return {"detail": detail, "lineage": lineage, "run": _run_view(lineage.run) if lineage.run else None}

    def run(self, run_id: str) -> dict[str, Any]:
        run = self.state.registry.get_run(run_id)
        return {"run": run, "view": _run_view(run)}

    def compare(self, run_a: str, run_b: str, only_differences: bool) -> dict[str, Any]:
        if not run_a or not run_b:
            raise InvalidInputError("choose two runs to compare")
        comparison = self.state.registry.compare_runs([run_a, run_b])
        rows = [r for r in comparison.rows if r["differs"] or not only_differences]
        return {"run_ids": comparison.run_ids, "rows": rows, "only_differences": only_differences}

    # --- rollouts ---------------------------------------------------------------------------------

    def rollouts(self, model_name: str | None) -> dict[str, Any]:
        return {"rollouts": self.state.rollouts.list_rollouts(model_name, 200, None).items}

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        detail = self.state.rollouts.get(rollout_id)
        health_chart, accuracy_chart = _gate_charts(detail)
        return {
            "detail": detail,
            "actions": ROLLOUT_ACTIONS.get(detail.rollout.status, ()),
            "health_chart": health_chart,
            "accuracy_chart": accuracy_chart,
            "gates": detail.gates,
        }

    # --- accuracy ---------------------------------------------------------------------------------

    def accuracy(
        self, model_name: str | None, since: date | None, page: int, category: str | None = None
    ) -> dict[str, Any]:
        models = self.repo.model_names()
        model = model_name or (models[0] if models else "")
        _, total = self.repo.accuracy_stores(model, since, 0, 0)
        pg = paging(page, total, HEAT_STORES)
        stores, _ = self.repo.accuracy_stores(model, since, (pg.page - 1) * HEAT_STORES, HEAT_STORES)
        categories, n_categories = self.repo.top_categories(model, since, HEAT_CATEGORIES)
        cells = self.repo.wape_by_store_category(model, since, stores, categories)
        values = {(c["store_id"], c["category"]): float(c["wape"]) for c in cells if c["wape"] is not None}
        high = max([0.5, *(min(v, 2.0) for v in values.values())])
        heat = svg.heatmap(
            stores, categories, values, label=f"WAPE by store and category, {model}", low=0.0, high=high
        )
        return {
            "models": models,
            "model": model,
            "since": since,
            "paging": pg,
            "heatmap": heat,
            "categories_shown": len(categories),
            "categories_total": n_categories,
            "categories": categories,
            "category": category or "",
            "over_time": self._wape_over_time(model, since, category),
        }

    def service_levels(self, page: int, store: str | None = None) -> dict[str, Any]:
        """Achieved vs target cycle service level per store x category (each cell from the store's newest
        report), the fleet's per category, 40 stores a page; below-target cells are flagged."""
        fleet = self.quality.replenishment(store, None, ["category"])
        items = {g.category: g.items for g in fleet}
        categories = sorted(items, key=lambda c: (-items[c], c))[:HEAT_CATEGORIES]
        stores = self.quality.replenishment_stores(store)
        pg = paging(page, len(stores), HEAT_STORES)
        shown = stores[(pg.page - 1) * HEAT_STORES : pg.page * HEAT_STORES]
        cells = self.quality.replenishment(store, None, ["store_id", "category"], stores=shown)
        grid = {(c.store_id, c.category): c for c in cells}
        return {
            "categories": sorted(categories),
            "fleet": {g.category: g for g in fleet},
            "rows": [(s, {c: grid.get((s, c)) for c in categories}) for s in shown],
            **self.quality.replenishment_cells(store),
            "paging": pg,
            "store": store or "",
            "categories_total": len(items),
        }

    def _wape_over_time(self, model: str, since: date | None, category: str | None) -> Any:
        if not model:
            return svg.line_chart([], [], label="WAPE over time")
        groups = self.quality.accuracy(
            Filters(model_name=model, since=since, category=category), ["version", "role", "period"], "week"
        )
        roles = self._version_roles(model)
        periods = sorted({g.period for g in groups if g.period is not None})
        x = [p.isoformat() for p in periods]
        keyed: dict[tuple[int, str], dict[date, float | None]] = {}
        for g in groups:
            if g.version is None or g.role is None or g.period is None:
                continue
            keyed.setdefault((g.version, g.role), {})[g.period] = g.wape
        series = [
            svg.Series(
                name=f"v{version} {roles.get(version, '')} ({role})".replace("  ", " "),
                values=[values.get(p) for p in periods],
            )
            for (version, role), values in sorted(keyed.items())
        ]
        scope = f"{model}, {category}" if category else f"{model}, every category"
        return svg.line_chart(x, series, label=f"Weekly WAPE by version, {scope}", y_label="WAPE")

    def _version_roles(self, model: str) -> dict[int, str]:
        """Which part each version plays now: champion, challenger (alias) or rollout candidate."""
        roles: dict[int, str] = {}
        try:
            aliases = self.state.registry.list_aliases(model)
        except NotFoundError:
            aliases = []
        for a in aliases:
            roles[a.version] = a.alias
        for r in self.state.rollouts.list_rollouts(model, 20, None).items:
            if r.status in ROLLOUT_ACTIONS:
                roles.setdefault(r.candidate_version, "candidate")
        return roles

    # --- alerts and drift -------------------------------------------------------------------------

    def alerts(self, status: str | None) -> dict[str, Any]:
        alerts = self.quality.list_alerts(status=status or None, store_id=None, severity=None, limit=500)
        return {"alerts": alerts, "status": status or ""}

    def alert(self, alert_id: str, category: str | None) -> dict[str, Any]:
        detail = self.quality.get_alert(alert_id)
        alert = detail.alert
        rule = self.quality.rule(alert.rule)
        named = [c for c in (alert.category or "").split(",") if c]
        reports = rule.window if rule is not None and rule.kind == "drift" else 1
        rows = (
            [_drift_view(r) for r in self.repo.latest_drift(alert.store_id, alert.model_name, reports)]
            if alert.store_id
            else []
        )
        newest = rows[0]["period_end"] if rows else None
        drift_rows = [r for r in rows if r["period_end"] == newest]
        first = named[0] if named else (drift_rows[0]["category"] if drift_rows else None)
        chosen = category or first
        context: dict[str, Any] = {
            "detail": detail,
            "rule": rule,
            "drift_rows": drift_rows,
            "judged_rows": [r for r in rows if r["category"] in named] if reports > 1 else [],
            "category": chosen,
            "distribution": None,
            "distribution_note": "",
            "history": self._alert_history(alert, named),
        }
        row = next((r for r in drift_rows if r["category"] == chosen), None)
        if alert.store_id and chosen and row is not None:
            context["distribution"], context["distribution_note"] = self._distribution(
                alert.store_id, chosen, row["period_start"], row["period_end"]
            )
        elif alert.store_id and chosen:
            context["distribution_note"] = "no drift report names this category yet"
        return context

    def _distribution(self, store_id: str, category: str, first: date, last: date) -> tuple[Any, str]:
        """Recent daily sales of the category against the same days a year earlier (or the 8 weeks before)."""
        root = self.state.root / "datasets" / "actuals"
        recent = self.repo.actual_values(root, store_id, category, first, last)
        year = timedelta(days=364)
        reference = self.repo.actual_values(root, store_id, category, first - year, last - year)
        names = ("recent", "same weeks a year earlier")
        if not reference:
            reference = self.repo.actual_values(
                root, store_id, category, first - timedelta(days=56), first - timedelta(days=1)
            )
            names = ("recent", "the 8 weeks before")
        if not recent and not reference:
            return None, "the server holds no actuals of this store and category (agents push them)"
        values = sorted(recent + reference)
        top = values[min(len(values) - 1, int(0.99 * len(values)))] if values else 1.0
        low = min(0.0, values[0]) if values else 0.0
        bins = 12
        width = (top - low) / bins or 1.0
        edges = [low + width * i for i in range(bins + 1)]

        def counts(side: list[float]) -> list[float]:
            out = [0.0] * bins
            for v in side:
                out[min(bins - 1, max(0, int((v - low) / width)))] += 1
            return out

        label = f"Daily sales of {category} at {store_id}: {first}..{last} against {names[1]}"
        chart = svg.histogram_pair(edges, counts(recent), counts(reference), label=label, names=names)
        note = f"{len(recent)} recent and {len(reference)} reference observations (item x day)"
        return chart, note

    def _alert_history(self, alert: Any, named: list[str]) -> Any:
        """The alert's metric over the scope's recent report periods, against its (learnt) threshold."""
        learnt = self.quality.explain(alert)
        if learnt:
            x = [p.period for p in learnt]
            series = [
                svg.Series(name="live / backtest WAPE", values=[math.exp(p.value) for p in learnt]),
                svg.Series(name="learnt baseline", values=[math.exp(p.centre) for p in learnt]),
                svg.Series(name="upper bound", values=[math.exp(p.centre + p.tolerance) for p in learnt]),
            ]
            return svg.line_chart(x, series, label=f"{alert.metric} against its learnt baseline, by period")
        key = alert.scope or {
            k: v for k, v in (("model_name", alert.model_name), ("store_id", alert.store_id),
                              ("category", alert.category)) if v
        }  # fmt: skip
        if not key:
            return svg.line_chart([], [], label="metric over time")
        from server.quality.alerts import ACCURACY_METRICS

        threshold = [svg.Threshold(label="threshold", value=float(alert.threshold))]
        if alert.metric in ACCURACY_METRICS:
            filters = Filters(model_name=alert.model_name, store_id=alert.store_id, category=alert.category,
                              role="served")  # fmt: skip
            groups = self.quality.accuracy(filters, ["period"], "week")
            x = [g.period.isoformat() for g in groups if g.period is not None]
            values = [_metric_of(g, alert.metric) for g in groups if g.period is not None]
            series = [svg.Series(name=alert.metric, values=values)]
            return svg.line_chart(x, series, label=f"{alert.metric} by week", thresholds=threshold)
        periods = self.quality.repo.drift_periods(key, alert.metric, 26)
        present = {c for p in periods for c in p}
        categories = [c for c in named if c in present] + sorted(present - set(named))
        categories = categories[:MAX_CHART_CATEGORIES]
        x = [str(i - len(periods) + 1) for i in range(len(periods))]
        series = [svg.Series(name=c or alert.metric, values=[p.get(c) for p in periods]) for c in categories]
        return svg.line_chart(
            x, series, label=f"{alert.metric} over the last report periods (0 = newest)", thresholds=threshold
        )


def _metric_of(group: Any, metric: str) -> float | None:
    if metric == "abs_bias":
        return None if group.bias is None else abs(group.bias)
    value = getattr(group, metric, None)
    return None if value is None else float(value)


def _drift_view(row: dict[str, Any]) -> dict[str, Any]:
    """A drift row with its tests, the deciding ones marked, and why its verdict follows from them."""
    tests = msgspec.json.decode(row["tests"]) if isinstance(row["tests"], str) else row["tests"]
    typed = msgspec.convert(tests, list[DriftTest])
    marked = [{**t, "decisive": t.get("name") in DECISIVE_TESTS} for t in tests]
    marked.sort(key=lambda t: not t["decisive"])
    return {**row, "tests": marked, "reason": verdict_reason(bool(row["drifted"]), typed)}


def _run_view(run: Any) -> dict[str, Any]:
    """A run's selection table and backtest metrics as rows for templates."""
    selection = run.selection or {}
    categories = selection.get("categories") if isinstance(selection, dict) else None
    metrics = run.metrics or {}
    by_category = metrics.get("by_category") if isinstance(metrics, dict) else None
    metric_rows: list[dict[str, Any]] = []
    metric_names: list[str] = []
    if isinstance(by_category, dict):
        for cat, values in sorted(by_category.items()):
            if isinstance(values, dict):
                metric_rows.append({"category": cat, **values})
                metric_names.extend(k for k in values if k not in metric_names)
    candidates = metrics.get("candidates") if isinstance(metrics, dict) else None
    candidate_rows = (
        [{"model": m, **v} for m, v in sorted(candidates.items()) if isinstance(v, dict)]
        if isinstance(candidates, dict)
        else []
    )
    candidate_names: list[str] = []
    for row in candidate_rows:
        candidate_names.extend(k for k in row if k != "model" and k not in candidate_names)
    return {
        "selection": categories if isinstance(categories, dict) else {},
        "selection_meta": {k: v for k, v in selection.items() if k != "categories"}
        if isinstance(selection, dict)
        else {},
        "metric_rows": metric_rows,
        "metric_names": metric_names,
        "candidate_rows": candidate_rows,
        "candidate_names": candidate_names,
        "metrics_flat": _flat(metrics) if not metric_rows else {},
    }


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = value
    return out


def _gate_charts(detail: Any) -> tuple[Any, Any]:
    """Gate values at each engine decision (and now, while active) against their thresholds."""
    points: list[tuple[str, dict[str, Any]]] = []
    for d in detail.decisions:
        if isinstance(d.numbers.get("health"), dict):
            points.append((f"#{d.decision_id} {d.action}", d.numbers))
    if detail.rollout.status in ROLLOUT_ACTIONS and isinstance(detail.gates.get("health"), dict):
        points.append(("now", detail.gates))
    x = [p[0] for p in points]
    health = [p[1]["health"] for p in points]
    thresholds = []
    series = [
        svg.Series(name="activated share", values=[h.get("activated_share") for h in health]),
        svg.Series(name="stale share", values=[h.get("stale_share") for h in health]),
    ]
    last_health = health[-1] if health else {}
    if last_health.get("min_activated_share") is not None:
        thresholds.append(svg.Threshold("min activated", float(last_health["min_activated_share"])))
    if last_health.get("max_stale_share") is not None:
        thresholds.append(svg.Threshold("max stale", float(last_health["max_stale_share"])))
    health_chart = svg.line_chart(x, series, label="Health gate by decision", thresholds=thresholds)
    accuracy = [p[1].get("accuracy") or {} for p in points]
    ratios: dict[str, list[float | None]] = {}
    for i, acc in enumerate(accuracy):
        for cat, numbers in (acc.get("categories") or {}).items():
            ratios.setdefault(cat, [None] * len(points))[i] = numbers.get("wape_ratio")
    worst = sorted(ratios, key=lambda c: -max((v for v in ratios[c] if v is not None), default=0.0))
    acc_series = [svg.Series(name=c, values=ratios[c]) for c in worst[:MAX_CHART_CATEGORIES]]
    max_ratio = next((a.get("max_wape_ratio") for a in reversed(accuracy) if a.get("max_wape_ratio")), None)
    acc_thresholds = [svg.Threshold("max WAPE ratio", float(max_ratio))] if max_ratio else []
    accuracy_chart = svg.line_chart(
        x, acc_series, label="Candidate / champion WAPE by category", thresholds=acc_thresholds
    )
    return health_chart, accuracy_chart
