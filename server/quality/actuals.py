"""Central data collection: agents push their actuals in idempotent batches; the server appends them to one
central dataset (Parquet partitioned by store and date) and registers each addition as a dataset version.

Layout under ``<state_dir>/datasets/actuals``: ``store_id=<store>/ds=<date>/<batch>.parquet`` (canonical
columns). A version id chains the previous version id with the batch's content hash, so it names the
exact set of files the dataset held after that addition.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import msgspec

from forecasting.common.contracts import ActualsBatch
from forecasting.common.logs import get_logger
from server.auth import Principal
from server.db import utcnow
from server.errors import InvalidInputError, PermissionDeniedError
from server.quality import schemas
from server.storage import SqlStore

log = get_logger("server.quality.actuals")

MAX_ROWS_PER_BATCH = 20_000  # ~1 MiB of JSON, the server's body limit
DATASET_NAME = "actuals"


class ActualsService:
    def __init__(self, db: SqlStore, root: Path, register: Any) -> None:
        self.db = db
        self.root = root
        self.register = register  # RegistryService.register_dataset
        self._lock = threading.Lock()

    def accept(self, batch: ActualsBatch, who: Principal) -> schemas.ActualsAccepted:
        import polars as pl

        from server.registry.schemas import DatasetIn

        if who.role == "agent" and who.store_id != batch.store_id:
            raise PermissionDeniedError(f"this credential cannot send actuals for store {batch.store_id}")
        if not batch.rows or len(batch.rows) > MAX_ROWS_PER_BATCH:
            raise InvalidInputError(f"a batch holds 1 to {MAX_ROWS_PER_BATCH} rows")
        if not batch.batch_id.replace("-", "").replace("_", "").isalnum() or len(batch.batch_id) > 200:
            raise InvalidInputError("batch_id: letters, digits, '-' and '_' only (at most 200)")
        with self._lock:
            existing = self.db.fetch_one(
                "SELECT dataset_id FROM actuals_batches WHERE store_id = ? AND batch_id = ?",
                [batch.store_id, batch.batch_id],
            )
            if existing is not None:
                return schemas.ActualsAccepted(
                    batch_id=batch.batch_id, dataset_id=existing["dataset_id"], duplicate=True
                )
            frame = pl.DataFrame(
                [msgspec.structs.asdict(r) for r in batch.rows],
                schema={"item_id": pl.Utf8, "category": pl.Utf8, "ds": pl.Date, "y": pl.Float64},
            ).with_columns(pl.lit(batch.store_id).alias("store_id"))
            frame = frame.select("store_id", "item_id", "category", "ds", "y").sort("item_id", "ds")
            content = hashlib.sha256(frame.write_csv().encode()).hexdigest()
            files = self._write(frame, batch.store_id, batch.batch_id)
            previous = self.db.fetch_one(
                "SELECT dataset_id FROM actuals_batches ORDER BY received_at DESC, dataset_id LIMIT 1"
            )
            chain = (previous["dataset_id"] if previous else "") + content
            dataset_id = "actuals-" + hashlib.sha256(chain.encode()).hexdigest()[:32]
            totals = self.db.fetch_one(
                "SELECT coalesce(sum(rows), 0) AS n, min(date_min) AS lo, max(date_max) AS hi, "
                "list(DISTINCT store_id) AS stores FROM actuals_batches"
            )
            assert totals is not None
            date_min, date_max = frame["ds"].min(), frame["ds"].max()
            stores = sorted(set(totals["stores"] or []) | {batch.store_id})
            lo = min(d for d in (totals["lo"], date_min) if d is not None)
            hi = max(d for d in (totals["hi"], date_max) if d is not None)
            self.register(
                DatasetIn(
                    dataset_id=dataset_id, name=DATASET_NAME,
                    schema=dict(zip(frame.columns, map(str, frame.dtypes), strict=True)),
                    row_count=int(totals["n"]) + frame.height, date_min=str(lo), date_max=str(hi),
                    stores=stores,
                    source=f"agent:{batch.store_id} batch {batch.batch_id}",
                )
            )  # fmt: skip
            self.db.execute(
                "INSERT INTO actuals_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [batch.batch_id, batch.store_id, frame.height, date_min, date_max, content,
                 msgspec.json.encode(files).decode(), dataset_id, utcnow()],
            )  # fmt: skip
        log.info(
            "actuals_appended", store_id=batch.store_id, batch_id=batch.batch_id, rows=frame.height,
            dataset_id=dataset_id, files=len(files),
        )  # fmt: skip
        return schemas.ActualsAccepted(batch_id=batch.batch_id, dataset_id=dataset_id, rows=frame.height)

    def _write(self, frame: Any, store_id: str, batch_id: str) -> list[str]:
        """One Parquet file per date of the batch, each written to a temp name and renamed."""
        written = []
        for (ds,), part in frame.partition_by("ds", as_dict=True).items():
            folder = self.root / f"store_id={store_id}" / f"ds={ds}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{batch_id}.parquet"
            tmp = folder / f".{batch_id}.parquet.tmp"
            part.drop("store_id").write_parquet(tmp)
            with tmp.open("rb") as fh:
                os.fsync(fh.fileno())
            tmp.replace(target)
            written.append(str(target.relative_to(self.root)))
        return sorted(written)
