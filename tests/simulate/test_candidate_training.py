"""A trained candidate's ``[train]`` overrides: checked against the real training config, laid over the
champion's settings."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import msgspec
import polars as pl
import pytest

from forecasting.common.config import TrainConfig
from shelfcast.simulate import Candidate, SimulationError, SimulationOptions
from shelfcast.simulate.publishing import training_settings
from shelfcast.simulate.sources import FleetData


def _data() -> FleetData:
    frame = pl.DataFrame(
        {"store_id": ["S1"], "item_id": ["i1"], "category": ["c"], "ds": [date(2024, 1, 1)], "y": [1.0]}
    )
    return FleetData(frame, {"S1": {}}, [date(2024, 1, 8)], "W", 52)


def test_overrides_are_laid_over_the_champion_settings(tmp_path: Path) -> None:
    """Overridden keys change, the rest stays the champion's, and the result is a valid training config."""
    options = SimulationOptions(state_dir=tmp_path, horizon=4)
    overrides = {"models": ["Naive", "SeasonalNaive", "AutoETS"], "windows": 3, "ensemble_top_k": 2}
    candidate = Candidate(train=overrides, label="better")
    champion = msgspec.convert(training_settings(_data(), options, {}), TrainConfig).train
    trained = msgspec.convert(training_settings(_data(), options, candidate.train), TrainConfig).train
    assert candidate.trained
    assert (trained.models, trained.windows, trained.ensemble_top_k) == (overrides["models"], 3, 2)
    assert (champion.models, champion.windows, champion.ensemble_top_k) == (["Naive", "SeasonalNaive"], 1, 0)
    assert msgspec.structs.replace(trained, models=champion.models, windows=1, ensemble_top_k=0) == champion


def test_a_candidate_without_models_or_overrides_is_not_trained() -> None:
    """Only ``models`` or ``train`` make the simulation train a candidate."""
    assert not Candidate(multiply=1.3).trained
    assert Candidate(models=["Naive"]).trained


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window": 3}, "unknown training setting train.window"),
        ({"horizon": 8}, "train.horizon is set by the simulation"),
        ({"windows": "3"}, "$.windows"),
        ({"models": ["Naive", "NoSuchModel"]}, "NoSuchModel"),
        ({"select_by": "store"}, "$.select_by"),
    ],
)
def test_bad_overrides_fail_naming_the_candidate_and_the_setting(
    overrides: dict[str, object], message: str
) -> None:
    """An unknown, simulation-owned or ill-typed setting, or an unknown model, is refused at once."""
    with pytest.raises(SimulationError, match="candidate 'better'") as caught:
        Candidate(train=overrides, label="better")
    assert message in str(caught.value)


def test_models_given_twice_are_refused() -> None:
    """``models`` and ``train.models`` together are ambiguous."""
    with pytest.raises(SimulationError, match="models given twice"):
        Candidate(models=["Naive"], train={"models": ["AutoETS"]}, label="better")


def test_simulate_refuses_a_candidate_train_file_with_an_unknown_setting(tmp_path: Path) -> None:
    """``--candidate-train FILE``: a misspelt setting stops the command before anything starts."""
    from click.testing import CliRunner

    from shelfcast.simulate.command import simulate

    settings = tmp_path / "better.toml"
    settings.write_text('[train]\nmodels = ["AutoETS"]\nwindow = 3\n')
    state_dir = tmp_path / "sim"
    result = CliRunner().invoke(
        simulate, ["--candidate-train", f"{settings}:better", "--state-dir", str(state_dir)]
    )
    assert result.exit_code == 2
    assert "unknown training setting train.window" in result.output
    assert not state_dir.exists()
