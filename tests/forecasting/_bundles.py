"""Helpers for the bundle, fitted-state and scoring tests: small frames and signed bundles."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from forecasting.bundle.format import Manifest, utcnow, write_bundle
from forecasting.bundle.signing import generate_key_files
from forecasting.models.fitted import fit_models


def small_frame(stores: int = 2, items: int = 4, days: int = 120, seed: int = 0) -> pl.DataFrame:
    """A canonical frame with weekly seasonality, trend and noise; categories A (even) and B (odd items)."""
    rng = np.random.default_rng(seed)
    start = date(2024, 1, 1)
    ds = [start + timedelta(days=d) for d in range(days)]
    t = np.arange(days)
    parts = []
    for s in range(stores):
        for i in range(items):
            level = rng.uniform(5, 40)
            y = level * (1 + 0.3 * np.sin(2 * np.pi * (t + i) / 7)) + 0.02 * t * (i % 3)
            y = np.maximum(0.0, y + rng.normal(0, level * 0.15, days)).round(0)
            parts.append(
                pl.DataFrame(
                    {
                        "store_id": f"S{s + 1:03d}",
                        "item_id": f"I{i + 1:05d}",
                        "category": "A" if i % 2 == 0 else "B",
                        "ds": ds,
                        "y": y,
                    }
                )
            )
    return pl.concat(parts).with_columns(pl.col("ds").cast(pl.Date))


def key_pair(tmp_path: Path, name: str = "signing.key") -> tuple[Path, Path]:
    """A fresh key pair under ``tmp_path``: (private, public)."""
    private, public, _ = generate_key_files(tmp_path / name)
    return private, public


def build_bundle(
    out_dir: Path,
    frame: pl.DataFrame,
    assignments: Mapping[str, str] | str,
    signing_key: Path,
    *,
    version: int = 1,
    expires_at: datetime | None = None,
    season_length: int = 7,
    horizon: int = 14,
    freq: str = "D",
    **manifest_fields: Any,
) -> Path:
    """Fit ``assignments`` on ``frame`` and write a signed bundle (test helper, not a training pipeline)."""
    fitted = fit_models(frame, assignments, season_length=season_length, freq=freq)
    manifest = Manifest(
        model_name="demand",
        version=version,
        created_at=utcnow(),
        expires_at=expires_at,
        horizon=horizon,
        freq=freq,
        season_length=season_length,
        models=fitted.models,
        selection=dict(assignments) if not isinstance(assignments, str) else {},
        **manifest_fields,
    )
    return write_bundle(out_dir, manifest, fitted.payloads, signing_key)
