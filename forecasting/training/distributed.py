"""The Dask engine: statsforecast's Fugue backend over a Dask cluster (a scheduler address or a LocalCluster).

Results are converted back to the Polars layout of the local engine and sorted the same way, so both
engines give identical frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import polars as pl

from forecasting.common.config import TrainSection
from forecasting.common.logs import get_logger

log = get_logger(__name__)
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def pandas_freq(freq: str, first_ds: Any) -> str:
    """The pandas offset alias statsforecast needs for pandas/Dask frames (weekly anchored on the data)."""
    if freq == "W":
        return f"W-{WEEKDAYS[first_ds.weekday()]}"
    return {"D": "D", "H": "h"}[freq]


@contextlib.contextmanager
def dask_client(cfg: TrainSection) -> Iterator[Any]:
    """A client of ``cfg.dask_address``, else of a LocalCluster with ``cfg.dask_workers`` workers."""
    from distributed import Client, LocalCluster

    if cfg.dask_address:
        with Client(cfg.dask_address) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=cfg.dask_workers,
            threads_per_worker=1,
            processes=cfg.dask_processes,
            dashboard_address="127.0.0.1:0",
            **({"host": "127.0.0.1"} if cfg.dask_processes else {}),
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


def cross_validation(
    data: pl.DataFrame,
    models: list[Any],
    freq: str,
    *,
    h: int,
    n_windows: int,
    step: int,
    levels: list[int],
    cfg: TrainSection,
) -> pl.DataFrame:
    """``StatsForecast.cross_validation`` on a Dask frame; returns the Polars frame of the local engine."""
    import dask.dataframe as dd

    ds_dtype = data.schema["ds"]
    pdf = data.with_columns(pl.col("ds").cast(pl.Datetime("ns"))).to_pandas()
    with dask_client(cfg) as client:
        log.info("dask_engine", scheduler=client.scheduler.address, workers=cfg.dask_workers)
        ddf = dd.from_pandas(pdf, npartitions=max(2, cfg.dask_workers))  # type: ignore[no-untyped-call]
        backend = _backend_class()(engine=client)
        out = backend.cross_validation(
            df=ddf,
            freq=pandas_freq(freq, data["ds"][0]),
            models=models,
            fallback_model=None,
            h=h,
            n_windows=n_windows,
            step_size=step,
            test_size=None,
            input_size=None,
            level=levels or None,
            refit=True,
            fitted=False,
            prediction_intervals=None,
            id_col="unique_id",
            time_col="ds",
            target_col="y",
        )
        pdf_out: Any = out.compute() if hasattr(out, "compute") else out
    result = pdf_out if isinstance(pdf_out, pl.DataFrame) else pl.from_pandas(pdf_out.reset_index(drop=True))
    return result.with_columns(
        pl.col("unique_id").cast(pl.Utf8),
        pl.col("ds").cast(ds_dtype),
        pl.col("cutoff").cast(ds_dtype),
    )


def _backend_class() -> Any:
    """statsforecast's FugueBackend, declaring float64 outputs (it declares float32, which would round
    every forecast and break equality with the local engine)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    from statsforecast.distributed.fugue import FugueBackend
    from triad.collections.schema import Schema

    class Float64FugueBackend(FugueBackend):
        def _get_output_schema(self, **kwargs: Any) -> Any:
            schema = super()._get_output_schema(**kwargs)
            return Schema(
                [pa.field(f.name, pa.float64()) if pa.types.is_floating(f.type) else f for f in schema.fields]
            )

    return Float64FugueBackend
