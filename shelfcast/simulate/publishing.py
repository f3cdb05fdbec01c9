"""Training and publishing model versions: the first champion and trained candidates, trained on the
history before the replay, signed, and uploaded to the server's registry."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelfcast.simulate.fleet import check_response, toml_document
from shelfcast.simulate.options import SimulationError, check_train_overrides

if TYPE_CHECKING:
    from shelfcast.simulate.fleet import Fleet
    from shelfcast.simulate.options import Candidate, SimulationOptions
    from shelfcast.simulate.report import Timings
    from shelfcast.simulate.sources import FleetData


def training_settings(
    data: FleetData, options: SimulationOptions, overrides: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The training config (``[data]`` and ``[train]`` tables) of a simulation's versions: the champion's
    settings, with ``overrides`` (checked by :func:`check_train_overrides`) laid over ``[train]``."""
    check_train_overrides(overrides, "training overrides")
    train: dict[str, Any] = {
        "model_name": options.model_name,
        "horizon": options.horizon,
        "season_length": data.season_length,
        "models": list(options.train_models),
        "fallback": "Naive",
        "windows": 1,
        "metric": "mae",
        "select_by": "category",
    }
    return {
        "data": {"freq": data.freq, "negative_values": "keep", "fill_gaps": "zero"},
        "train": {**train, **overrides},
    }


class Publisher:
    """Trains, signs and publishes versions of the simulation's model; hands out version numbers."""

    def __init__(self, data: FleetData, fleet: Fleet, timings: Timings) -> None:
        self.data = data
        self.fleet = fleet
        self.options = fleet.options
        self.state_dir = fleet.state_dir
        self.timings = timings
        self.next_version = 1
        self.champion_bundle: Path | None = None

    def train_champion(self) -> Path:
        """Train and sign the first champion on the history before the replay."""
        started = time.monotonic()
        self.next_version = self._first_free_version()
        version = self.next_version
        out = self.train(version)
        self.next_version = version + 1
        self.champion_bundle = out
        self.timings.add("train", started)
        return out

    def train(self, version: int, overrides: dict[str, Any] | None = None) -> Path:
        """``shelfcast train`` on the history before the replay, signed as ``version``: the champion's
        settings with ``overrides`` laid over its ``[train]`` section."""
        from forecasting.data.frames import write_frame

        data_dir = self.state_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        history = data_dir / "history.parquet"
        if not history.exists():
            write_frame(self.data.history, history)
        config = data_dir / f"train-v{version}.toml"
        config.write_text(toml_document(training_settings(self.data, self.options, overrides or {})))
        out = self.state_dir / "models" / f"{self.options.model_name}-v{version}"
        log_path = self.fleet.logs / "train.log"
        with log_path.open("ab") as fh:
            result = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
                [
                    sys.executable, "-m", "shelfcast", "--log-format", "json", "train",
                    "--config", str(config), "--data", str(history), "--out", str(out),
                    "--model-name", self.options.model_name, "--version", str(version),
                    "--signing-key", str(self.fleet.keys["main"][0]),
                ],
                stdout=fh, stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise SimulationError(f"training failed (exit {result.returncode}); see {log_path}")
        return out

    def _first_free_version(self) -> int:
        """One more than the model's highest registered version (1 for a new model)."""
        with self.fleet.admin() as client:
            response = client.get(f"/v1/models/{self.options.model_name}/versions")
        if response.status_code != 200:
            return 1
        items = response.json().get("items", [])
        return max([int(i["version"]) for i in items], default=0) + 1

    def publish(self, bundle_dir: Path, *, champion: bool, reason: str) -> int:
        """Upload a bundle (and its training run) as a version; ``champion``: point the alias at it."""
        from forecasting.bundle.format import pack_archive, read_manifest

        started = time.monotonic()
        version = read_manifest(bundle_dir).version
        archive = bundle_dir.with_suffix(".tar")
        pack_archive(bundle_dir, archive)
        record = bundle_dir.parent / f"{bundle_dir.name}.run" / "run.json"
        with self.fleet.admin(timeout=300) as client:
            if record.is_file():  # the training run, so the version's lineage names it
                registered = client.post(
                    "/v1/runs", content=record.read_bytes(), headers={"Content-Type": "application/json"}
                )
                if registered.status_code != 409:
                    check_response(registered, f"register the run of {bundle_dir.name}")
            response = client.post(
                f"/v1/models/{self.options.model_name}/versions",
                content=archive.read_bytes(),
                headers={"Content-Type": "application/x-tar"},
            )
            check_response(response, f"upload {bundle_dir.name}")
            if champion:
                response = client.put(
                    f"/v1/models/{self.options.model_name}/aliases/champion",
                    json={"version": version, "reason": reason},
                )
                check_response(response, "set the champion alias")
        self.timings.add("publish", started)
        return version

    def candidate_bundle(self, candidate: Candidate) -> tuple[Path, int]:
        """The candidate's signed bundle and version: trained, or a given bundle / the champion re-signed."""
        assert self.champion_bundle is not None
        from forecasting.bundle.format import read_manifest
        from forecasting.commands.bundle import adjust_bundle

        if candidate.trained and candidate.bundle is None and not candidate.untrusted_by:
            version = self.next_version
            self.next_version += 1
            started = time.monotonic()
            overrides = {**({"models": candidate.models} if candidate.models else {}), **candidate.train}
            trained = self.train(version, overrides)
            self.timings.add("train_candidates", started)
            if candidate.multiply == 1.0:
                return trained, version
            source = trained
        else:
            source = candidate.bundle or self.champion_bundle
        version = max(self.next_version, read_manifest(source).version + 1)
        self.next_version = version + 1
        key = self.fleet.keys["second" if candidate.untrusted_by else "main"][0]
        bundle = adjust_bundle(
            source,
            self.state_dir / "models" / f"{self.options.model_name}-v{version}",
            version=version,
            signing_key=key,
            multiply=candidate.multiply,
            reason=candidate.describe(),
        )
        return bundle, version
