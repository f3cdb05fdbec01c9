"""The scorer's isolation setting: a warm child process (default) or the agent's own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ScoringSection
from agent.errors import ScoringError
from agent.scoring import Scorer, ScoringSettings
from tests.agent.support import make_bundle, make_keys, sales_frame


def test_inline_scorer_scores_in_process(tmp_path: Path) -> None:
    """isolation = "inline" scores a real bundle with no child process; failures read the same."""
    private, _public = make_keys(tmp_path)
    make_bundle(tmp_path, private, 1)
    scorer = Scorer(ScoringSettings(7, [80], 1, 60.0, 2, isolation="inline"))
    history = tmp_path / "history.parquet"
    sales_frame(items=2, days=60).write_parquet(history)
    counts = scorer.run(tmp_path / "demand-v1", history, tmp_path / "out.parquet", 7)
    assert counts == {"rows": 14, "series": 2}
    assert (tmp_path / "out.parquet").is_file()
    assert scorer._proc is None  # no child was started
    with pytest.raises(ScoringError, match="no readable manifest"):
        scorer.run(tmp_path / "missing", history, tmp_path / "out2.parquet", 7)
    scorer.close()


def test_isolation_setting_is_checked() -> None:
    """[scoring] isolation defaults to "process" and rejects anything but process or inline."""
    assert AgentConfig().scoring.isolation == "process"
    with pytest.raises(ValueError, match="isolation"):
        ScoringSection(isolation="thread")
