"""The ``drifted`` verdict of a category from its tests, and why, in words (no numerics: the server uses it).

The agent (:mod:`forecasting.monitoring.drift`) decides with :func:`drift_by_tests`; the dashboard
explains a stored verdict with :func:`verdict_reason`, so the page and the verdict cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from forecasting.common.contracts import DriftTest

OK = "ok"
DRIFT = "drift"
INSUFFICIENT = "insufficient"
DECISIVE_TESTS = ("level", "wasserstein")


def drift_by_tests(tests: Sequence[DriftTest]) -> bool:
    """The tests' half of the ``drifted`` verdict: ``level`` flags drift and ``wasserstein`` does not clear
    it (``drift``, or ``insufficient``). The other tests are reported but do not decide."""
    by_name = {t.name: t.verdict for t in tests}
    return by_name.get("level") == DRIFT and by_name.get("wasserstein", OK) != OK


def verdict_reason(drifted: bool, tests: Sequence[DriftTest]) -> str:
    """Why a category's reported ``drifted`` verdict follows from its tests, in words."""
    by_name = {t.name: t.verdict for t in tests}
    if not all(name in by_name for name in DECISIVE_TESTS):
        reason = "the report lacks the deciding tests (level and wasserstein)"
    elif drifted:
        reason = (
            "level and wasserstein both beyond their thresholds"
            if drift_by_tests(tests)
            else "reported drifted although level and wasserstein do not both flag it (another agent's rule?)"
        )
    elif drift_by_tests(tests):
        reason = "level and wasserstein beyond, but the category is too small a share of the store's sales"
    elif by_name["level"] == DRIFT:
        reason = "level beyond its threshold, but wasserstein within: both must agree"
    elif by_name["level"] == INSUFFICIENT:
        reason = "level insufficient: too little of the category's history to judge"
    else:
        reason = "level within its threshold (calibrated on the category's own weeks)"
    return reason
