"""Progress lines: a long step logs that it is alive at a fixed interval, and stops when it ends."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from forecasting.common.logs import progress


def test_progress_logs_while_the_block_runs_and_stops_after() -> None:
    """Each interval adds one line with the elapsed seconds and the bound context; none after the block."""
    with capture_logs() as logs:
        with progress("training_progress", interval_seconds=0.05, stage="backtest"):
            time.sleep(0.3)
        count = len(logs)
        time.sleep(0.2)
    assert count >= 3
    assert len(logs) == count
    assert all(e["event"] == "training_progress" and e["stage"] == "backtest" for e in logs)
    assert logs[-1]["elapsed_seconds"] >= logs[0]["elapsed_seconds"] > 0
