"""The store's inventory system in the replay: it posts each item's position to the store's agent and
reads the agent's order proposals back, over the agent's HTTP API like a real one would."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import numpy as np
import polars as pl

from forecasting.replenishment.policy import CYCLE
from shelfcast.simulate.options import SimulationError

if TYPE_CHECKING:
    from shelfcast.replenish.ledger import FloatArray


@dataclass(frozen=True)
class Policy:
    """What every item's posted policy says."""

    lead_time: int
    review_period: int
    service_level: float


@dataclass(frozen=True)
class Proposal:
    """The agent's answer for the items of one store, in the order they were posted."""

    quantity: FloatArray
    demand_mean: FloatArray  # the forecast total over lead time and review period


def inventory_rows(
    items: list[str], on_hand: FloatArray, open_orders: FloatArray, due: list[date], policy: Policy
) -> list[dict[str, Any]]:
    """The rows of ``POST /v1/inventory``: one per item with its position and policy, then one per further
    open order (``open_orders[:, k]`` is due at ``due[k]``)."""
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        orders = [(due[k], float(q)) for k, q in enumerate(open_orders[i]) if q > 0]
        first: dict[str, Any] = {
            "item_id": item,
            "on_hand": float(on_hand[i]),
            "lead_time_days": policy.lead_time,
            "review_period_days": policy.review_period,
            "service_metric": CYCLE,
            "target_service_level": policy.service_level,
            "pack_size": 1.0,
            "min_order": 0.0,
        }
        if orders:
            first |= {"on_order": orders[0][1], "on_order_due": orders[0][0].isoformat()}
        rows.append(first)
        rows.extend({"item_id": item, "on_order": q, "on_order_due": d.isoformat()} for d, q in orders[1:])
    return rows


class StoreSystem:
    """One store's inventory system, talking to the store's agent at ``url``."""

    def __init__(self, url: str, read_token: str, operator_token: str, timeout_seconds: float) -> None:
        self.url = url
        self.read = {"Authorization": f"Bearer {read_token}"}
        self.operate = {"Authorization": f"Bearer {operator_token}", "Content-Type": "application/json"}
        self.timeout = timeout_seconds

    def review(
        self,
        items: list[str],
        on_hand: FloatArray,
        open_orders: FloatArray,
        due: list[date],
        policy: Policy,
        forecast_start: date,
    ) -> Proposal:
        """Post the items' positions and wait for the proposals computed from them and from forecasts that
        start at ``forecast_start``."""
        rows = inventory_rows(items, on_hand, open_orders, due, policy)
        response = httpx.post(
            f"{self.url}/v1/inventory", content=msgspec.json.encode(rows), headers=self.operate, timeout=60
        )
        if response.status_code != 200:
            raise SimulationError(
                f"{self.url}: POST /v1/inventory: HTTP {response.status_code} {response.text[:300]}"
            )
        quarantined = response.json().get("rows_quarantined", 0)
        if quarantined:
            raise SimulationError(
                f"{self.url}: the agent quarantined {quarantined} inventory row(s): {response.text[:300]}"
            )
        position = on_hand + open_orders.sum(axis=1)
        deadline = time.monotonic() + self.timeout
        while True:
            frame = self._proposals(forecast_start)
            if frame is not None:
                ordered = pl.DataFrame({"item_id": items}).join(
                    frame, on="item_id", how="left", maintain_order="left"
                )
                current = ordered["inventory_position"].to_numpy()
                if not np.isnan(current.astype(np.float64)).any() and np.allclose(current, position):
                    return Proposal(
                        quantity=ordered["proposed_quantity"].to_numpy().astype(np.float64),
                        demand_mean=ordered["demand_mean"].to_numpy().astype(np.float64),
                    )
            if time.monotonic() > deadline:
                raise SimulationError(
                    f"{self.url}: no proposals for the posted positions from forecasts starting "
                    f"{forecast_start} after {self.timeout:.0f} s"
                )
            time.sleep(0.2)

    def _proposals(self, forecast_start: date) -> pl.DataFrame | None:
        """Every proposal of the store (Parquet), or None while they come from other forecasts."""
        response = httpx.get(
            f"{self.url}/v1/replenishment", params={"format": "parquet"}, headers=self.read, timeout=60
        )
        if (
            response.status_code != 200
            or response.headers.get("X-Forecast-Start") != forecast_start.isoformat()
        ):
            return None
        return pl.read_parquet(io.BytesIO(response.content))
