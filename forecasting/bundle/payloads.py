"""The load check of a verified bundle: every payload opens with the reader that will use it."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

from forecasting.bundle.format import Manifest, read_payload
from forecasting.common.errors import BundleError

TABLE_SUFFIXES = {".parquet": "Parquet", ".arrow": "Arrow IPC", ".feather": "Arrow IPC"}


def check_payloads_load(bundle_dir: Path, manifest: Manifest) -> None:
    """Read every Parquet/Arrow payload whole and parse every ONNX graph (standard operator domains only,
    a CPU session opened), as scoring would; BundleError naming the payload that does not load.

    A signature proves who made a bundle, not that its files are what their names say (a pickle renamed
    ``.parquet`` is validly signed if its signer signed it); this is what the server runs before it
    registers a version.
    """
    import polars as pl

    for listed in manifest.files:
        suffix = PurePosixPath(listed.path).suffix.lower()
        data = io.BytesIO(read_payload(bundle_dir, manifest, listed.path))
        try:
            if suffix == ".parquet":
                pl.read_parquet(data)
            elif suffix in TABLE_SUFFIXES:
                pl.read_ipc(data)
            elif suffix == ".onnx":
                from forecasting.models.onnx_model import OnnxScorer

                OnnxScorer.load(data.getvalue(), threads=1)
        except BundleError as exc:
            raise BundleError(f"payload {listed.path!r} does not load: {exc}") from None
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            kind = TABLE_SUFFIXES.get(suffix, suffix)
            raise BundleError(f"payload {listed.path!r} does not load as {kind}: {exc}") from None
