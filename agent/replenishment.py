"""Order proposals at the store: recomputed in the scoring process, served read-only by the API.

After every scoring and every inventory post the work loop exports the inventory from the local store and
asks the scoring process (:meth:`agent.scoring.Scorer.propose`) for the proposals of the served run; they
land in ``proposals.parquet`` beside the run's forecasts and replace the served :class:`ProposalView`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent.forecasts import ForecastView, page
from agent.paths import StatePaths
from forecasting.common.logs import get_logger

if TYPE_CHECKING:
    import polars as pl

    from agent.scoring import Scorer
    from agent.store import LocalStore

log = get_logger("agent.replenishment")

PROPOSALS_FILE = "proposals.parquet"


@dataclass(frozen=True)
class ProposalView:
    """The proposals of one computation: rows sorted by item, and what every answer says about them."""

    forecasts: ForecastView
    frame: pl.DataFrame
    digest: str
    rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", {item: i for i, item in enumerate(self.frame["item_id"].to_list())})

    @classmethod
    def load(cls, forecasts: ForecastView, path: Path) -> ProposalView:
        import io

        import polars as pl

        data = path.read_bytes()
        frame = pl.read_parquet(io.BytesIO(data)).sort("item_id")
        return cls(forecasts, frame, hashlib.blake2b(data, digest_size=8).hexdigest())

    @classmethod
    def empty(cls, forecasts: ForecastView) -> ProposalView:
        """No proposals (none computed yet for the served run): every listing is empty."""
        import polars as pl

        from forecasting.replenishment.proposals import PROPOSAL_COLUMNS, proposal_dtype

        frame = pl.DataFrame(schema={c: proposal_dtype(c) for c in PROPOSAL_COLUMNS})
        return cls(forecasts, frame, "none")

    @property
    def key(self) -> str:
        """Which computation this is: the served run and the proposals' content."""
        return f"{self.forecasts.pointer.run_id}-{self.digest}"

    def etag(self, *parts: object) -> str:
        return self.forecasts.etag("replenishment", self.digest, *parts)

    def headers(self, etag: str) -> dict[str, str]:
        return self.forecasts.headers(etag)

    def meta(self) -> dict[str, Any]:
        return self.forecasts.meta()

    def select(
        self,
        *,
        item_ids: list[str],
        category: str | None,
        cursor: str | None,
        limit: int | None,
        query_key: str,
    ) -> tuple[pl.DataFrame, str | None]:
        """Filtered page of proposals and the cursor of the next page (None at the end)."""
        import polars as pl

        rows = self.frame
        if item_ids:
            rows = rows.filter(pl.col("item_id").is_in(item_ids))
        if category:
            rows = rows.filter(pl.col("category") == category)
        return page(rows, cursor, limit, self.key, query_key)

    def item(self, item_id: str) -> pl.DataFrame | None:
        """The proposal of one item, or None when it has none."""
        row = self.rows.get(item_id)
        return None if row is None else self.frame.slice(row, 1)

    def item_json(self, item_id: str) -> bytes | None:
        """The proposal of one item with the answer's metadata, as JSON; None when it has none."""
        row = self.rows.get(item_id)
        if row is None:
            return None
        return msgspec.json.encode({**self.meta(), **self.frame.row(row, named=True)})


def refresh_proposals(
    paths: StatePaths, store: LocalStore, scorer: Scorer, forecasts: ForecastView
) -> ProposalView:
    """Compute the proposals of the served run for the stored inventory; the new view."""
    run_dir = (paths.root / forecasts.pointer.path).parent
    positions, orders = run_dir / ".inventory-positions.parquet", run_dir / ".inventory-orders.parquet"
    try:
        store.export_inventory(positions, orders)
        rows = scorer.propose(run_dir, positions, orders, run_dir / PROPOSALS_FILE)
    finally:
        positions.unlink(missing_ok=True)
        orders.unlink(missing_ok=True)
    log.info("proposals_computed", run_id=forecasts.pointer.run_id, n_items=rows)
    return ProposalView.load(forecasts, run_dir / PROPOSALS_FILE)


def load_proposals(paths: StatePaths, forecasts: ForecastView) -> ProposalView | None:
    """The proposals already computed for the served run (after a restart), or None."""
    path = (paths.root / forecasts.pointer.path).parent / PROPOSALS_FILE
    return ProposalView.load(forecasts, path) if path.is_file() else None


def category_totals(paths: StatePaths, store: LocalStore, run_path: str | None) -> list[Any]:
    """Per category, the proposals of the run at ``run_path`` (its forecasts file; None: no served run)
    and the review cycles of the store, as the ``ReplenishmentTotals`` of a served accuracy report."""
    import polars as pl

    from forecasting.common.contracts import ReplenishmentTotals
    from forecasting.replenishment.policy import CYCLE

    file = None if run_path is None else (paths.root / run_path).parent / PROPOSALS_FILE
    by_category: dict[str, dict[str, Any]] = {}
    if file is not None and file.is_file():
        frame = pl.read_parquet(file)
        sums = frame.group_by("category").agg(
            items=pl.len(),
            items_to_order=(pl.col("proposed_quantity") > 0).sum(),
            proposed_units=pl.col("proposed_quantity").sum(),
            order_up_to_units=pl.col("order_up_to").sum(),
            target=pl.col("target_service_level").filter(pl.col("service_metric") == CYCLE).mean(),
        )
        by_category = {str(row.pop("category")): row for row in sums.iter_rows(named=True)}
    cycles = store.review_cycles()
    totals = []
    for category in sorted(by_category.keys() | cycles.keys()):
        row = by_category.get(category, {})
        n, met, cycle_target = cycles.get(category, (0, 0, None))
        totals.append(
            ReplenishmentTotals(
                category=category,
                items=int(row.get("items", 0)),
                items_to_order=int(row.get("items_to_order", 0)),
                proposed_units=float(row.get("proposed_units", 0.0)),
                order_up_to_units=float(row.get("order_up_to_units", 0.0)),
                target_service_level=cycle_target if n else row.get("target"),
                cycles=n,
                cycles_met=met,
                achieved_service_level=met / n if n else None,
            )
        )
    return totals
