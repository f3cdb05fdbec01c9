"""Commands for keys, bundles and scoring: ``shelfcast keys|bundle|score``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from forecasting.commands.train import _load_config, config_option, output_option
from forecasting.common.tables import OutputFormat, render, render_table

if TYPE_CHECKING:
    from forecasting.common.config import DataConfig

_PATH = click.Path(path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def keys() -> None:
    """Create the ed25519 keys that sign model bundles; trust, list and revoke them on the server."""


@keys.command("generate")
@click.option(
    "--out", "out", type=_PATH, required=True, help="Private key file (0600); public key to FILE.pub."
)
@click.option("--force", is_flag=True, help="Replace an existing key pair (agents trusting it will refuse).")
def keys_generate(out: Path, force: bool) -> None:
    """Write a new signing key to FILE and its public half to FILE.pub; print the key id."""
    from forecasting.bundle.signing import generate_key_files

    private, public, kid = generate_key_files(out, overwrite=force)
    click.echo(f"key {kid}: private {private} (mode 0600), public {public}")


@click.group()
def bundle() -> None:
    """Verify, inspect and pack signed model bundles."""


@bundle.command("verify")
@click.argument("bundle_dir", type=_EXISTING_DIR)
@click.option(
    "--key",
    "key_files",
    type=_EXISTING_FILE,
    multiple=True,
    required=True,
    help="Trusted public key file (repeatable: trust several keys during a rotation).",
)
@click.option("--min-version", type=int, default=0, show_default=True, help="Refuse versions below this.")
def bundle_verify(bundle_dir: Path, key_files: tuple[Path, ...], min_version: int) -> None:
    """Check signature, key, hashes, sizes, listed files, expiry and version of BUNDLE_DIR.

    Exit 0 with a one-line summary when valid; exit 1 with the specific reason when not.
    """
    from forecasting.bundle.format import verify
    from forecasting.bundle.signing import decode_signature

    manifest = verify(bundle_dir, list(key_files), min_version=min_version)
    kid = decode_signature((bundle_dir / "manifest.sig").read_bytes()).key_id
    expiry = manifest.expires_at.isoformat() if manifest.expires_at else "never"
    click.echo(
        f"valid: {manifest.model_name} v{manifest.version}, signed by key {kid}, "
        f"{len(manifest.files)} payload files, expires {expiry}"
    )


@bundle.command("show")
@click.argument("bundle_dir", type=_EXISTING_DIR)
@output_option
def bundle_show(bundle_dir: Path, output: OutputFormat) -> None:
    """Print the manifest of BUNDLE_DIR (not verified: use `bundle verify` for trust)."""
    from forecasting.bundle.format import read_manifest

    manifest = read_manifest(bundle_dir)
    if output == "json":
        click.echo(render(msgspec.to_builtins(manifest), "json"))
        return
    summary: dict[str, Any] = {
        "model_name": manifest.model_name,
        "version": manifest.version,
        "format_version": manifest.format_version,
        "created_at": manifest.created_at.isoformat(),
        "expires_at": manifest.expires_at.isoformat() if manifest.expires_at else None,
        "freq": manifest.freq,
        "horizon": manifest.horizon,
        "levels": manifest.levels,
        "season_length": manifest.season_length,
        "fallback_model": manifest.fallback_model,
        "run_id": manifest.lineage.run_id,
        "dataset_fingerprint": manifest.lineage.dataset_fingerprint,
        "code_version": manifest.lineage.code_version,
    }
    click.echo(render(summary, "table"))
    if manifest.selection:
        click.echo("\nselection")
        click.echo(render_table([{"category": c, "model": m} for c, m in sorted(manifest.selection.items())]))
    if manifest.models:
        click.echo("\nmodels")
        rows = [
            {"label": k, "family": e.family, "state": e.state, "params": e.params, "payload": e.payload}
            for k, e in sorted(manifest.models.items())
        ]
        click.echo(render_table(rows))
    if manifest.metrics:
        click.echo("\nmetrics")
        click.echo(render_table([{"scope": k, **v} for k, v in sorted(manifest.metrics.items())]))
    click.echo("\nfiles")
    click.echo(render_table([msgspec.to_builtins(f) for f in manifest.files], ["path", "size", "sha256"]))


@bundle.command("pack")
@click.argument("bundle_dir", type=_EXISTING_DIR)
@click.option("--out", "out", type=_PATH, required=True, help="Archive file to write (tar).")
def bundle_pack(bundle_dir: Path, out: Path) -> None:
    """Pack BUNDLE_DIR into one deterministic archive; print its sha256."""
    from forecasting.bundle.format import pack_archive

    digest = pack_archive(bundle_dir, out)
    click.echo(f"{digest}  {out}")


@bundle.command("unpack")
@click.argument("archive", type=_EXISTING_FILE)
@click.option("--out", "out", type=_PATH, required=True, help="Directory to create.")
@click.option("--max-bytes", type=int, default=2 << 30, show_default=True, help="Size cap for the contents.")
def bundle_unpack(archive: Path, out: Path, max_bytes: int) -> None:
    """Unpack ARCHIVE into a new directory (safe names, size cap); verify it afterwards."""
    from forecasting.bundle.format import unpack_archive

    click.echo(str(unpack_archive(archive, out, max_bytes=max_bytes)))


def adjust_bundle(
    source: Path,
    out: Path,
    *,
    version: int,
    signing_key: Path,
    multiply: float = 1.0,
    categories: dict[str, float] | None = None,
    reason: str = "",
    trusted: list[Path] | None = None,
) -> Path:
    """A new signed bundle at ``out``: ``source``'s payloads and manifest as version ``version`` with
    forecast adjustments (``multiply`` for every category, ``categories`` for some); returns ``out``.

    With ``trusted`` the source bundle is verified first. The new manifest keeps the source's lineage
    and records its version in the adjustment's reason.
    """
    from forecasting.bundle.format import (
        Adjustments,
        read_manifest,
        read_payload,
        utcnow,
        verify,
        write_bundle,
    )
    from forecasting.common.errors import BundleError

    manifest = verify(source, trusted) if trusted else read_manifest(source)
    if version <= manifest.version:
        raise BundleError(f"--version {version} must be above the source's version {manifest.version}")
    try:
        adjustments = Adjustments(
            multiply=multiply,
            categories=dict(categories or {}),
            reason=reason or f"adjusted from v{manifest.version}",
        )
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    payloads = {f.path: read_payload(source, manifest, f.path) for f in manifest.files}
    new = msgspec.structs.replace(manifest, version=version, created_at=utcnow(), adjustments=adjustments)
    return write_bundle(out, new, payloads, signing_key)


def _category_factor(value: str) -> tuple[str, float]:
    name, sep, factor = value.rpartition("=")
    try:
        number: float | None = float(factor)
    except ValueError:
        number = None
    if not (sep and name) or number is None:
        raise click.BadParameter(f"expected CATEGORY=FACTOR, got {value!r}")
    return name, number


@bundle.command("adjust")
@click.argument("source", type=_EXISTING_DIR)
@click.argument("out", type=_PATH)
@click.option("--version", type=int, required=True, help="Version of the new bundle (above the source's).")
@click.option(
    "--signing-key", type=_EXISTING_FILE, required=True, help="Private key that signs the new bundle."
)
@click.option("--multiply", type=float, default=1.0, show_default=True, help="Factor for every forecast.")
@click.option(
    "--category",
    "category_factors",
    multiple=True,
    help="CATEGORY=FACTOR: a factor for one category, replacing --multiply there (repeatable).",
)
@click.option("--reason", default="", help="Why (kept in the signed manifest).")
@click.option(
    "--key",
    "key_files",
    type=_EXISTING_FILE,
    multiple=True,
    help="Verify SOURCE against these trusted public keys first (repeatable).",
)
def bundle_adjust(
    source: Path,
    out: Path,
    version: int,
    signing_key: Path,
    multiply: float,
    category_factors: tuple[str, ...],
    reason: str,
    key_files: tuple[Path, ...],
) -> None:
    """Write OUT: SOURCE re-signed as a new version whose forecasts are scaled (planners' uplift factors).

    The factors apply to the point forecast and the interval bounds after scoring, e.g.
    `shelfcast bundle adjust --multiply 1.1 --category BAKERY=1.3 --version 9 --signing-key K v8 v9`.
    """
    categories = dict(_category_factor(v) for v in category_factors)
    adjust_bundle(
        source, out, version=version, signing_key=signing_key, multiply=multiply, categories=categories,
        reason=reason, trusted=list(key_files) or None,
    )  # fmt: skip
    click.echo(f"{out}: version {version}, forecasts x{multiply}" + "".join(
        f", {c} x{f}" for c, f in sorted(categories.items())
    ))  # fmt: skip


def history_mapping(recorded: dict[str, Any], freq: str, config_files: tuple[Path, ...] = ()) -> DataConfig:
    """The ``[data]`` mapping ``score`` reads a history with.

    Without ``config_files``: the mapping recorded in the bundle (its ``freq`` when the record has none)
    under ``SHELFCAST_DATA__*`` overrides. With them: the ``[data]`` that ``train`` builds from the same
    files (defaults < files < environment), in place of the recorded one. Its frequency must be the
    bundle's.
    """
    from forecasting.common.config import DataConfig
    from forecasting.common.errors import ConfigError, DataError
    from forecasting.common.settings import deep_merge, env_overrides

    if config_files:
        cfg: DataConfig = _load_config(config_files).data
    else:
        env = env_overrides(os.environ).get("data", {})
        try:
            cfg = msgspec.convert(deep_merge({"freq": freq, **recorded}, env), DataConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(
                f"the bundle's [data] mapping with SHELFCAST_DATA__* overrides: {exc}"
            ) from None
    if cfg.freq != freq:
        raise DataError(f"[data] freq {cfg.freq!r} is not the bundle's freq {freq!r}")
    return cfg


@click.command("score")
@config_option
@click.option("--bundle", "bundle_dir", type=_EXISTING_DIR, required=True, help="Bundle directory.")
@click.option(
    "--history",
    type=_EXISTING_FILE,
    required=True,
    help="Sales history (CSV, CSV.gz or Parquet): a raw extract mapped by [data], or the canonical frame.",
)
@click.option("--out", "out", type=_PATH, required=True, help="Forecast file (.parquet or .csv).")
@click.option(
    "--key",
    "key_files",
    type=_EXISTING_FILE,
    multiple=True,
    help="Verify the bundle against these trusted public keys first (repeatable).",
)
@click.option("--horizon", type=int, default=None, help="Steps ahead (default: the bundle's horizon).")
@click.option(
    "--level", "levels", type=int, multiple=True, help="Interval level (repeatable; default: bundle's)."
)
@click.option("--threads", type=int, default=2, show_default=True, help="Worker threads/processes.")
@click.option(
    "--validation-out",
    "validation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for validation.json, validation.txt and quarantine.csv of HISTORY [default: none].",
)
@click.option("--strict", is_flag=True, help="Refuse a history with quarantined rows.")
def score_cmd(
    config_files: tuple[Path, ...],
    bundle_dir: Path,
    history: Path,
    out: Path,
    key_files: tuple[Path, ...],
    horizon: int | None,
    levels: tuple[int, ...],
    threads: int,
    validation_dir: Path | None,
    strict: bool,
) -> None:
    """Forecast every series of HISTORY with a bundle and write the forecasts.

    HISTORY is read like `train --data`: mapped to the canonical frame by the [data] mapping recorded in
    the bundle (or by the [data] of --config files), validated by the same rules, bad rows quarantined.
    Side files (stores.csv, calendar.csv) are found next to HISTORY. A history already in canonical
    columns (store_id, item_id, category, ds, y) is read as it is.
    """
    from forecasting.bundle.format import read_manifest, verify
    from forecasting.bundle.scoring import score
    from forecasting.data.loading import mapping_for
    from forecasting.data.validation import load_canonical, require_usable, write_reports

    manifest = verify(bundle_dir, list(key_files)) if key_files else read_manifest(bundle_dir)
    cfg = mapping_for(history, history_mapping(manifest.data, manifest.freq, config_files))
    result = load_canonical(history, cfg)
    if validation_dir is not None:
        write_reports(result, validation_dir)
    report = result.report
    if report.rows_quarantined:
        rules = ", ".join(f"{r.rule} x{r.count}" for r in report.rules if r.action == "quarantined")
        click.echo(
            f"warning: {history.name}: {report.rows_quarantined} row(s) quarantined ({rules})", err=True
        )
    require_usable(result, strict=strict)
    forecasts = score(
        bundle_dir, result.frame, horizon=horizon, levels=levels or None, out=out, threads=threads
    )
    n_series = forecasts.select("store_id", "item_id").n_unique()
    click.echo(f"{n_series} series, {forecasts.height} rows -> {out}")
