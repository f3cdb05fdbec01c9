"""Typed training configuration: the ``[data]`` column mapping and the ``[train]`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from forecasting.logs import LoggingConfig
from forecasting.settings import load_config

Frequency = Literal["D", "W", "H"]


class DataConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[data]``: how a sales extract maps to the canonical frame ``store_id, item_id, category, ds, y``."""

    format: Literal["long", "m5_wide", "m4_wide"] = "long"
    freq: Frequency = "D"
    store_id: str = "store_id"
    item_id: str = "item_id"
    category: str = "category"
    ds: str = "ds"
    y: str = "y"
    date_format: str = ""
    holiday: str = ""
    promo: str = ""
    exogenous: list[str] = msgspec.field(default_factory=list)


class TrainSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[train]``: what to fit and how to judge it."""

    model_name: str = "demand"
    horizon: int = 28
    season_length: int = 7
    levels: list[int] = msgspec.field(default_factory=lambda: [80, 95])
    seed: int = 0


class TrainConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whole training configuration file."""

    data: DataConfig = msgspec.field(default_factory=DataConfig)
    train: TrainSection = msgspec.field(default_factory=TrainSection)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


def load_train_config(files: list[Path]) -> TrainConfig:
    """Defaults < files < SHELFCAST_DATA__* / SHELFCAST_TRAIN__* / SHELFCAST_LOGGING__*."""
    return load_config(TrainConfig, files, restrict_env_to=("data", "train", "logging"))
