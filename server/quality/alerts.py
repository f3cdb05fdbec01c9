"""Alert rules (``[[alerts.rules]]`` in the server TOML), their evaluation and the firing/resolved lifecycle.

A rule names a metric, a scope (which reports pool together), a threshold with a direction, a window
(the last N report periods of the scope), a minimum number of samples and a severity. The evaluation
here is pure (values in, verdict out); :mod:`server.quality.services` feeds it from the database and
keeps one open alert per rule and scope key (de-duplication).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from server.quality.baseline import LearntBaseline, PeriodSums, judge_baseline

Scope = Literal["store", "store_category", "category", "model"]
Op = Literal["above", "below"]

DRIFT_METRICS = frozenset({"drift", "level", "wasserstein", "psi", "ks_pvalue", "zero_rate"})
DRIFT_REPORT_METRICS = frozenset({"unknown_item_share", "missing_rate"})
ACCURACY_METRICS = frozenset(
    {"wape", "mae", "mase", "bias", "abs_bias", "wape_ratio", "coverage_80", "coverage_95"}
)
METRICS = DRIFT_METRICS | DRIFT_REPORT_METRICS | ACCURACY_METRICS
SCOPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "store": ("model_name", "store_id"),
    "store_category": ("model_name", "store_id", "category"),
    "category": ("model_name", "category"),
    "model": ("model_name",),
}


class AlertRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One ``[[alerts.rules]]`` entry.

    ``metric``: a drift test (``drift`` = share of the window's reports that flag the category drifted,
    ``level``, ``wasserstein``, ``psi``, ``ks_pvalue``, ``zero_rate``), a drift-report rate
    (``unknown_item_share``, ``missing_rate``) or a live-accuracy metric (``wape``, ``mae``, ``mase``,
    ``bias``, ``abs_bias``, ``coverage_80``, ``coverage_95``, ``wape_ratio`` = live / backtest WAPE:
    model drift). The value is pooled over the last ``window`` report periods of the scope and fires
    when ``above`` (or ``below``) ``threshold`` with at least ``min_samples`` samples (reports for drift
    metrics, forecast rows for accuracy metrics). A firing alert resolves once the value is back on the
    good side of ``clear_threshold`` (default: ``threshold``), so that a value hovering near the
    threshold does not fire, resolve and fire again.

    ``baseline`` (``[alerts.rules.baseline]``, metric ``wape_ratio`` only) replaces the fixed threshold by
    one learnt per scope key from the version's backtest and the key's own history, with persistence and
    hysteresis (:mod:`server.quality.baseline`); ``threshold`` is then not used.
    """

    name: str
    metric: str
    scope: Scope = "store_category"
    threshold: float | None = None
    op: Op = "above"
    window: int = 1
    min_samples: int = 1
    severity: Literal["info", "warning", "critical"] = "warning"
    clear_threshold: float | None = None
    baseline: LearntBaseline | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r} (one of {', '.join(sorted(METRICS))})")
        if self.window < 1 or self.min_samples < 0:
            raise ValueError("window must be >= 1 and min_samples >= 0")
        if self.baseline is not None and (self.metric != "wape_ratio" or self.op != "above"):
            raise ValueError("a learnt baseline applies to metric 'wape_ratio' with op 'above' only")
        if self.baseline is None and self.threshold is None:
            raise ValueError(f"rule {self.name!r} needs a threshold (or a [baseline] for wape_ratio)")

    @property
    def kind(self) -> Literal["drift", "accuracy"]:
        return "accuracy" if self.metric in ACCURACY_METRICS else "drift"


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[[alerts.webhooks]]``: where alert events are POSTed, signed with HMAC-SHA256 of the body."""

    url: str
    secret: str = ""
    timeout_seconds: float = 5.0
    max_attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    min_severity: Literal["info", "warning", "critical"] = "info"


def default_rules() -> list[AlertRule]:
    """Rules used when the config names none: category drift and accuracy degradation.

    The drift rule fires once per store while any of its categories is flagged drifted in two
    consecutive weekly reports, and resolves when no category was flagged in either of the last two:
    on the real Walmart weeks that keeps false alarms to about one store in five per quarter.
    """
    return [
        AlertRule(
            name="category-drift", metric="drift", scope="store", threshold=0.5,
            clear_threshold=0.0, window=2, min_samples=2, severity="warning",
        ),
        AlertRule(
            name="accuracy-degradation", metric="wape_ratio", scope="store_category", window=5,
            min_samples=1, severity="warning", baseline=LearntBaseline(),
        ),
    ]  # fmt: skip


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[alerts]``: rules (the defaults when none are given) and webhook targets."""

    rules: list[AlertRule] = msgspec.field(default_factory=default_rules)
    webhooks: list[WebhookConfig] = msgspec.field(default_factory=list)


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one rule on one scope key.

    ``firing`` (breach), ``ok`` (clear: resolves an open alert), ``holding`` (between the threshold and
    the clear threshold: an open alert stays open, none is fired) or ``unknown`` (too few samples).
    """

    state: Literal["firing", "ok", "holding", "unknown"]
    value: float | None
    samples: int
    threshold: float | None = None  # the threshold held against (a learnt baseline's upper bound)
    details: dict[str, object] | None = None  # a learnt baseline's numbers (baseline, tolerance, periods)


def judge(rule: AlertRule, value: float | None, samples: int) -> Verdict:
    """Compare a pooled value with the rule (``unknown`` below ``min_samples`` or without a value)."""
    threshold = rule.threshold
    if threshold is None:
        raise ValueError(f"rule {rule.name!r} learns its threshold: judge it with judge_baseline")
    if value is None or samples < max(rule.min_samples, 1):
        return Verdict(state="unknown", value=value, samples=samples, threshold=threshold)
    clear_at = threshold if rule.clear_threshold is None else rule.clear_threshold
    if rule.op == "above":
        breach, clear = value > threshold, value <= clear_at
    else:
        breach, clear = value < threshold, value >= clear_at
    state: Literal["firing", "ok", "holding"] = "firing" if breach else ("ok" if clear else "holding")
    return Verdict(state=state, value=value, samples=samples, threshold=threshold)


def judge_learnt(rule: AlertRule, periods: Sequence[PeriodSums]) -> Verdict:
    """Judge a learnt-baseline rule on the scope key's report periods, oldest first (see baseline.py)."""
    if rule.baseline is None:
        raise ValueError(f"rule {rule.name!r} has a fixed threshold: judge it with judge")
    found = judge_baseline(periods, rule.window, rule.baseline)
    if found.state != "unknown" and found.samples < rule.min_samples:
        return Verdict(state="unknown", value=found.value, samples=found.samples)
    return Verdict(state=found.state, value=found.value, samples=found.samples, threshold=found.threshold,
                   details=found.details or None)  # fmt: skip


def judge_periods(
    rule: AlertRule, periods: Sequence[Mapping[str, float | None]]
) -> tuple[Verdict, list[str]]:
    """Judge a drift metric from per-report values, oldest first: one mapping per report period from
    category (or ``""`` for report-level metrics) to its value.

    Over the last ``window`` periods each category's values are averaged; the scope's value is the worst
    category's (highest for ``above``, lowest for ``below``), so a store-scoped ``drift`` rule with
    threshold 0.5 and window 2 fires when some category was flagged in both of the last two reports.
    Returns the verdict and the categories at that worst value.
    """
    recent = list(periods)[-rule.window :]
    sums: dict[str, list[float]] = {}
    for period in recent:
        for key, value in period.items():
            if value is not None:
                sums.setdefault(key, []).append(value)
    if not sums:
        return judge(rule, None, len(recent)), []
    means = {key: sum(vs) / len(recent) for key, vs in sums.items()}
    worst = max(means.values()) if rule.op == "above" else min(means.values())
    keys = sorted(k for k, v in means.items() if v == worst and k)
    return judge(rule, worst, len(recent)), keys


def replay(rule: AlertRule, periods: Sequence[Mapping[str, float | None]]) -> list[tuple[int, str]]:
    """Lifecycle events (index, ``fired``/``resolved``) of one scope key fed its reports one at a time.

    The same rules as the server applies to stored reports: a breach fires only when no alert is open,
    an open alert resolves on a clear verdict.
    """
    events: list[tuple[int, str]] = []
    open_alert = False
    for i in range(len(periods)):
        verdict, _ = judge_periods(rule, periods[: i + 1])
        if verdict.state == "firing" and not open_alert:
            open_alert = True
            events.append((i, "fired"))
        elif verdict.state == "ok" and open_alert:
            open_alert = False
            events.append((i, "resolved"))
    return events


def fingerprint(rule: AlertRule, key: dict[str, str]) -> str:
    """The de-duplication key of an alert: rule name plus the scope's key values."""
    return rule.name + "|" + ",".join(f"{k}={key[k]}" for k in sorted(key))
