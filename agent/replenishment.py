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
