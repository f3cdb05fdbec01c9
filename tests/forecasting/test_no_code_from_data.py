"""No code from data: loading a bundle, scoring it and ingesting uploads or reports never unpickles or evals.

Each path runs once to import what it imports lazily (module import itself runs ``exec``), then again
with ``pickle.load``/``pickle.loads``, ``marshal.loads``, ``builtins.eval`` and ``builtins.exec`` replaced
by functions that raise, so reaching any of them fails the test.
"""

from __future__ import annotations

import builtins
import io
import marshal
import pickle
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
import polars as pl
import pytest

from forecasting.bundle.format import pack_archive, unpack_archive, verify
from forecasting.common.contracts import AccuracyReport, DriftReport
from tests.forecasting._bundles import build_bundle, key_pair, small_frame

FORBIDDEN = [
    (pickle, "load"),
    (pickle, "loads"),
    (pickle, "Unpickler"),
    (marshal, "loads"),
    (builtins, "eval"),
    (builtins, "exec"),
]


class CodeFromDataError(AssertionError):
    """Raised when a forbidden loader is reached."""


def _forbid(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, name in FORBIDDEN:

        def refuse(*_args: Any, _name: str = f"{module.__name__}.{name}", **_kwargs: Any) -> Any:
            raise CodeFromDataError(f"{_name} reached while loading data")

        monkeypatch.setattr(module, name, refuse)


def _twice(monkeypatch: pytest.MonkeyPatch, action: Callable[[int], Any]) -> Any:
    """Run ``action`` once to warm lazy imports, then again with the forbidden loaders patched."""
    action(0)
    with monkeypatch.context() as patched:
        _forbid(patched)
        return action(1)


def test_bundle_unpack_verify_and_score_reach_no_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpacking, verifying and scoring a signed bundle (fitted Theta, naive) runs no pickle/eval/exec."""
    from forecasting.bundle.scoring import score

    frame = small_frame(stores=1, items=4, days=90)
    private, public = key_pair(tmp_path)
    bundle = build_bundle(
        tmp_path / "bundle", frame, {"A": "Theta", "B": "SeasonalNaive"}, private, horizon=7
    )
    archive = tmp_path / "bundle.tar"
    pack_archive(bundle, archive)

    def load_and_score(run: int) -> pl.DataFrame:
        unpacked = unpack_archive(archive, tmp_path / f"unpacked-{run}", max_bytes=50_000_000)
        verify(unpacked, [public])
        return score(unpacked, frame, horizon=7, levels=[80], threads=1)

    out = _twice(monkeypatch, load_and_score)
    assert out.height == 4 * 7


def test_sales_uploads_in_every_format_reach_no_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CSV, Parquet and JSON sales extracts are ingested into the agent's store without pickle/eval/exec."""
    from agent.ingest import ingest_bytes
    from agent.store import LocalStore

    frame = small_frame(stores=1, items=2, days=20)
    csv_bytes = frame.write_csv().encode()
    parquet = io.BytesIO()
    frame.write_parquet(parquet)
    json_bytes = msgspec.json.encode(frame.with_columns(pl.col("ds").cast(pl.Utf8)).to_dicts())
    today = date(2024, 2, 1)

    def ingest(run: int) -> list[int]:
        store = LocalStore(tmp_path / f"agent-{run}.duckdb")
        try:
            results = [
                ingest_bytes(store, data, fmt, source=f"{fmt}-{run}", store_id="S001", today=today)
                for data, fmt in ((csv_bytes, "csv"), (parquet.getvalue(), "parquet"), (json_bytes, "json"))
            ]
        finally:
            store.close()
        return [r.rows_ok for r in results]

    assert _twice(monkeypatch, ingest) == [frame.height] * 3


def test_reports_decode_without_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accuracy and drift reports (the server's request body types) decode by msgspec, no pickle/eval/exec."""
    now = datetime(2024, 2, 1, tzinfo=UTC)
    common = {"store_id": "S001", "model_name": "demand", "version": 1, "created_at": now}
    period = {"period_start": date(2024, 1, 1), "period_end": date(2024, 1, 7)}
    accuracy = msgspec.json.encode(
        {
            "report_id": "a1",
            **common,
            **period,
            "rows": [
                {
                    "category": "A",
                    "horizon_bucket": "1-7",
                    "n": 7,
                    "abs_err_sum": 3.0,
                    "abs_y_sum": 30.0,
                    "err_sum": 1.0,
                }
            ],
        }
    )
    drift = msgspec.json.encode({"report_id": "d1", **common, **period, "categories": []})

    def decode(_run: int) -> tuple[AccuracyReport, DriftReport]:
        return msgspec.json.decode(accuracy, type=AccuracyReport), msgspec.json.decode(
            drift, type=DriftReport
        )

    got_accuracy, got_drift = _twice(monkeypatch, decode)
    assert got_accuracy.rows[0].n == 7 and got_drift.report_id == "d1"


def test_a_pickle_payload_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed bundle whose 'parameters' are a pickle is refused as unreadable, never unpickled."""
    from forecasting.bundle.scoring import score
    from forecasting.common.errors import ForecastingError

    frame = small_frame(stores=1, items=2, days=60)
    private, _ = key_pair(tmp_path)
    bundle = build_bundle(tmp_path / "bundle", frame, "SeasonalNaive", private, horizon=7)
    score(bundle, frame, horizon=7, levels=[80], threads=1)
    hostile = pickle.dumps({"state": "anything"})
    for payload in bundle.iterdir():
        if payload.suffix in {".parquet", ".arrow"}:
            payload.chmod(0o644)
            payload.write_bytes(hostile)
    with monkeypatch.context() as patched:
        _forbid(patched)
        with pytest.raises((ForecastingError, OSError, pl.exceptions.PolarsError)) as caught:
            score(bundle, frame, horizon=7, levels=[80], threads=1)
    assert not isinstance(caught.value, CodeFromDataError)


def test_onnx_graph_with_a_custom_operator_domain_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ONNX payload using an operator of a custom domain is refused before any session is created."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from forecasting.common.errors import BundleError
    from forecasting.models.onnx_model import OnnxScorer

    def graph(domain: str) -> bytes:
        node = helper.make_node("Identity" if not domain else "RunShellCommand", ["x"], ["y"], domain=domain)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)
        return bytes(model.SerializeToString())

    OnnxScorer.load(graph(""), threads=1)  # a standard graph loads (and warms the lazy imports)
    with monkeypatch.context() as patched:
        _forbid(patched)
        with pytest.raises(BundleError, match="non-standard domains"):
            OnnxScorer.load(graph("com.example.custom"), threads=1)
    assert onnx is not None
