"""What a replenishment replay is asked to do, and the checks its arguments must pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shelfcast.simulate.options import SimulationError


@dataclass
class ReplenishOptions:
    """What to replay: the sales, the training config, the policy and the window."""

    config_files: list[Path]
    data_path: Path
    state_dir: Path
    service_level: float = 0.95
    lead_time: int = 2  # periods of the data (days or weeks)
    review_period: int = 1
    periods: int = 13  # the last N dates every replayed series shares
    stores: int | None = None  # the first N stores (default all)
    items: int | None = None  # the first N items of each store (default all)
    period_timeout_seconds: float = 120.0
    on_progress: Callable[[str], None] | None = field(default=None, repr=False)

    def progress(self, message: str) -> None:
        if self.on_progress is not None:
            self.on_progress(message)


def check_options(options: ReplenishOptions) -> None:
    """Refuse a policy or window that cannot be replayed, naming the option."""
    if options.lead_time < 1:
        raise SimulationError(f"--lead-time must be at least 1 period (got {options.lead_time})")
    if options.review_period < 1:
        raise SimulationError(f"--review-period must be at least 1 period (got {options.review_period})")
    if not 0 < options.service_level < 1:
        raise SimulationError(
            f"--service-level must be between 0 and 1, exclusive (got {options.service_level:g})"
        )
    if options.periods < options.lead_time + options.review_period:
        raise SimulationError(
            f"--periods ({options.periods}) must cover at least the lead time plus one review period "
            f"({options.lead_time + options.review_period}): the first lead time is warm-up"
        )
