"""The agent's scoring schedule: a cron expression (``schedule``) or its older form ``daily_at``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.config import ScoringSection, load_agent_config
from forecasting.common.errors import ConfigError

STORE_TIME = timezone(timedelta(hours=1))  # the schedule is in the machine's local time


def _load(tmp_path: Path, scoring: str) -> ScoringSection:
    path = tmp_path / "agent.toml"
    path.write_text(f"[scoring]\n{scoring}\n")
    return load_agent_config([path]).scoring


def test_cron_schedule_sets_the_next_scoring(tmp_path: Path) -> None:
    """``schedule = "30 2 * * *"`` scores at 02:30 local time, the next day once today's has passed."""
    scoring = _load(tmp_path, 'schedule = "30 2 * * *"')
    assert scoring.cron == "30 2 * * *"
    assert scoring.next_run(datetime(2026, 3, 1, 1, 0, tzinfo=STORE_TIME)) == datetime(
        2026, 3, 1, 2, 30, tzinfo=STORE_TIME
    )
    assert scoring.next_run(datetime(2026, 3, 1, 2, 30, tzinfo=STORE_TIME)) == datetime(
        2026, 3, 2, 2, 30, tzinfo=STORE_TIME
    )
    weekdays = _load(tmp_path, 'schedule = "0 6 * * 1-5"')  # Sunday 1 March 2026 -> Monday 06:00
    assert weekdays.next_run(datetime(2026, 3, 1, 7, 0, tzinfo=STORE_TIME)) == datetime(
        2026, 3, 2, 6, 0, tzinfo=STORE_TIME
    )


def test_daily_at_is_read_as_its_cron_expression(tmp_path: Path) -> None:
    """``daily_at = "06:05"`` (the older form) is the cron ``5 6 * * *``; neither set: 02:00 daily."""
    scoring = _load(tmp_path, 'daily_at = "06:05"')
    assert scoring.cron == "5 6 * * *"
    assert scoring.next_run(datetime(2026, 3, 1, 7, 0, tzinfo=STORE_TIME)) == datetime(
        2026, 3, 2, 6, 5, tzinfo=STORE_TIME
    )
    assert ScoringSection().cron == "0 2 * * *"


def test_schedule_and_daily_at_together_are_a_config_error(tmp_path: Path) -> None:
    """Both forms set: the agent refuses the config and names both fields."""
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, 'schedule = "30 2 * * *"\ndaily_at = "02:30"')
    message = str(error.value)
    assert "schedule" in message and "daily_at" in message and "$.scoring" in message


@pytest.mark.parametrize("expression", ["61 2 * * *", "every night", "30 2 * *"])
def test_a_bad_cron_expression_is_a_config_error_naming_the_field(tmp_path: Path, expression: str) -> None:
    """A schedule that is no cron expression fails at load with the field and the value."""
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, f'schedule = "{expression}"')
    message = str(error.value)
    assert "schedule must be a cron expression" in message and expression in message
    assert "$.scoring" in message
