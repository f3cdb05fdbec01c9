"""Checking an uploaded bundle archive with the code an agent runs (``forecasting.bundle.format.verify``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from forecasting.common.errors import BundleError, UnknownKeyError
from server.errors import InvalidInputError

TRUST_HINT = "shelfcast keys trust FILE.pub"


def inspect_archive(
    archive: Path, work_dir: Path, trusted: Sequence[Path], *, max_bytes: int
) -> dict[str, Any]:
    """Unpack, verify and load-check ``archive``; return its manifest as plain data; refusals say why."""
    from forecasting.bundle.format import unpack_archive, verify
    from forecasting.bundle.payloads import check_payloads_load

    if not trusted:
        raise InvalidInputError(
            "the server trusts no signing key, so it cannot accept a bundle: trust the public half of the "
            f"key that signed it with `{TRUST_HINT}`"
        )
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="verify-"))
    try:
        bundle_dir = unpack_archive(archive, scratch / "bundle", max_bytes=max_bytes)
        manifest = verify(bundle_dir, list(trusted))
        check_payloads_load(bundle_dir, manifest)
    except UnknownKeyError as exc:
        raise InvalidInputError(f"bundle refused: {exc}; trust it with `{TRUST_HINT}`") from None
    except BundleError as exc:
        raise InvalidInputError(f"bundle refused: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data = msgspec.to_builtins(manifest)
    assert isinstance(data, dict)
    return data


def summarize_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the registry keeps it: per-series model entries summarised (they can be huge)."""
    kept = {k: v for k, v in manifest.items() if k not in {"models", "reference"}}
    models = manifest.get("models") or {}
    kept["model_count"] = len(models)
    return kept
