"""Model bundles: a signed manifest plus payload files, as a directory or a single tar archive.

A bundle directory holds ``manifest.json`` (the :class:`Manifest`, JSON), ``manifest.sig`` (an ed25519
signature of the exact manifest bytes, naming its key id) and the payload files the manifest lists with
their size and sha256 (fitted parameters as Parquet, an ``.onnx`` global model, ...). Nothing in a bundle
is ever executed: payloads are data read by :mod:`forecasting.models.fitted` and
:mod:`forecasting.models.onnx_model`.

:func:`verify` is what an agent (and the server's upload endpoint) runs before trusting a bundle; each way
a bundle can be refused raises its own :class:`~forecasting.common.errors.BundleError` child. The format is
documented in ``docs/bundle-format.md``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forecasting.bundle.signing import (
    decode_signature,
    encode_signature,
    load_private_key,
    sign,
    trusted_keys,
    verify_signature,
)
from forecasting.common.errors import (
    BundleError,
    BundleExistsError,
    ExpiredBundleError,
    ManifestError,
    MissingSignatureError,
    OversizeError,
    PayloadHashError,
    PayloadMissingError,
    PayloadSizeError,
    RollbackError,
    UnlistedPayloadError,
    UnsafePathError,
    UnsupportedFormatError,
)

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
RESERVED_NAMES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
DEFAULT_MAX_FILE_BYTES = 1 << 30  # 1 GiB per payload file
MAX_ARCHIVE_MEMBERS = 10_000
_CHUNK = 1 << 20
# One or more path segments of letters, digits, '.', '_' and '-', none starting with '.'.
_SAFE_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_SAFE_PATH = re.compile(rf"{_SAFE_SEGMENT}(/{_SAFE_SEGMENT}){{0,3}}")

ModelState = Literal["fitted-state", "refit-at-edge", "global", "ensemble"]


class PayloadFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One payload file: its relative path inside the bundle, size in bytes and sha256 (hex)."""

    path: str
    size: int
    sha256: str


class Lineage(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Where a bundle came from: the training run, the exact data, the config and the code."""

    run_id: str = ""
    dataset_fingerprint: str = ""
    config_hash: str = ""
    code_version: str = ""
    packages: dict[str, str] = msgspec.field(default_factory=dict)


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A model used by some series of the bundle (keyed by its label) and how the edge applies it.

    ``family`` is the statsforecast class name (``AutoETS``) or ``LightGBM`` for the global model;
    ``params`` its constructor arguments.

    ``state`` is ``fitted-state`` (parameters in ``payload``, applied to fresh data without
    re-estimation), ``refit-at-edge`` (cheap model, re-estimated on the store's history; ``payload``
    empty), ``global`` (one model for every series it covers, e.g. ONNX) or ``ensemble`` (family
    ``Ensemble``: the weighted mean of the forecasts and bounds of ``params["members"]``, each an entry of
    its own, with ``params["weights"]``).
    """

    state: ModelState
    family: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    payload: str = ""


class Adjustments(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Planners' factors applied to a bundle's forecasts after scoring (point forecast and interval bounds).

    ``multiply`` scales every series; ``categories`` maps a category to its own factor, which replaces
    ``multiply`` for that category. Factors must be finite and > 0 (so intervals keep their order).
    """

    multiply: float = 1.0
    categories: dict[str, float] = msgspec.field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        for name, value in [("multiply", self.multiply), *self.categories.items()]:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"adjustment factor {name!r} must be finite and > 0, got {value}")

    def factor(self, category: str) -> float:
        """The factor applied to the forecasts of ``category``."""
        return self.categories.get(category, self.multiply)


class IntervalSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How the edge (and the training's backtests, with the same code) make prediction intervals.

    ``method`` ``statsforecast``: statsforecast's own intervals (conformal ones from
    ``conformal_windows`` windows, the behaviour of bundles without this field). ``calibrated``:
    conformal intervals from up to ``conformal_windows`` windows of the horizon (as many as each
    series' history holds, neighbouring steps pooled when they are few) for the families without
    native intervals, and negative binomial quantiles for the intermittent families on unit sales.
    ``nonnegative``: the training history had no negative value (unit sales): forecasts and bounds
    are floored at 0 when scoring.
    """

    method: Literal["statsforecast", "calibrated"] = "statsforecast"
    conformal_windows: int = 2
    nonnegative: bool = False


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The signed description of a bundle (``manifest.json``).

    ``selection`` maps a category to the model chosen for it (the per-series choice, which may differ,
    is the ``series.parquet`` payload: ``store_id, item_id, category, model``). ``metrics`` maps a
    category (or ``"all"``) to backtest metric values; ``reference`` maps a category to distribution
    summaries of the training data used for drift checks. ``files`` is filled in by
    :func:`write_bundle`. ``adjustments`` (optional, signed like the rest) scales the forecasts after
    scoring; a manifest without it carries no such key at all, so bundles that never use it are
    unchanged. ``intervals`` (optional) says how intervals are made (:class:`IntervalSettings`); without
    it, statsforecast's intervals from two conformal windows and no floor at 0.
    """

    format_version: int = FORMAT_VERSION
    model_name: str
    version: int
    created_at: datetime
    expires_at: datetime | None = None
    freq: str = "D"
    horizon: int = 28
    levels: list[int] = msgspec.field(default_factory=lambda: [80, 95])
    season_length: int = 7
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    selection: dict[str, str] = msgspec.field(default_factory=dict)
    models: dict[str, ModelEntry] = msgspec.field(default_factory=dict)
    fallback_model: str = "SeasonalNaive"
    metrics: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    reference: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    lineage: Lineage = msgspec.field(default_factory=Lineage)
    adjustments: Adjustments | msgspec.UnsetType = msgspec.UNSET
    intervals: IntervalSettings | msgspec.UnsetType = msgspec.UNSET
    files: list[PayloadFile] = msgspec.field(default_factory=list)

    def interval_settings(self) -> IntervalSettings:
        """The bundle's interval settings (the defaults when the manifest has none)."""
        return IntervalSettings() if isinstance(self.intervals, msgspec.UnsetType) else self.intervals

    def file(self, path: str) -> PayloadFile:
        """The listed payload at ``path``; BundleError when the manifest does not list it."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"manifest lists no payload {path!r}")


class _FormatProbe(msgspec.Struct):
    format_version: int = 0


def utcnow() -> datetime:
    """Current time, timezone-aware UTC (manifests never hold naive times)."""
    return datetime.now(UTC)


def check_safe_path(name: str) -> str:
    """Return ``name`` when it is a safe relative payload path; UnsafePathError otherwise."""
    if not _SAFE_PATH.fullmatch(name) or ".." in name.split("/") or name in RESERVED_NAMES:
        raise UnsafePathError(f"unsafe or reserved payload path {name!r}")
    return name


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest as the (indented, stable) JSON bytes that get signed."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes: UnsupportedFormatError for an unknown version, ManifestError when malformed."""
    try:
        probe = msgspec.json.decode(data, type=_FormatProbe)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{MANIFEST_FILE} is not valid JSON ({exc})") from exc
    if probe.format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise UnsupportedFormatError(
            f"bundle format_version {probe.format_version} is not supported "
            f"(this shelfcast reads {sorted(SUPPORTED_FORMAT_VERSIONS)})"
        )
    try:
        return msgspec.json.decode(data, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{MANIFEST_FILE}: {exc}") from exc


@contextmanager
def _staging_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling directory of ``final``; renamed onto ``final`` on success, removed on error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            final.rmdir()
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_empty(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BundleExistsError(f"{path}: already exists and is not an empty directory")


def write_bundle(
    out_dir: Path,
    manifest: Manifest,
    payloads: Mapping[str, bytes],
    signing_key: Ed25519PrivateKey | Path,
) -> Path:
    """Write a signed bundle directory at ``out_dir`` and return it.

    ``payloads`` maps safe relative paths (e.g. ``series.parquet``, ``fitted/AutoETS.parquet``) to bytes;
    their sizes and sha256 replace ``manifest.files``. The directory is assembled next to ``out_dir``
    and renamed into place, so readers never see a half-written bundle. ``out_dir`` must not exist or
    be empty (BundleExistsError otherwise: bundles are immutable).
    """
    key = load_private_key(signing_key) if isinstance(signing_key, Path) else signing_key
    require_empty(out_dir)
    files = [
        PayloadFile(path=check_safe_path(name), size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for name, data in sorted(payloads.items())
    ]
    manifest = msgspec.structs.replace(manifest, files=files)
    manifest_bytes = encode_manifest(manifest)
    signature = encode_signature(sign(manifest_bytes, key))
    with _staging_dir(out_dir) as tmp:
        for name, data in payloads.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST_FILE, manifest_bytes)
        _write_file(tmp / SIGNATURE_FILE, signature)
    return out_dir


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(bundle_dir: Path) -> Manifest:
    """The manifest of a bundle directory, without any verification (for display)."""
    path = bundle_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{bundle_dir}: no readable {MANIFEST_FILE} ({exc.strerror})") from exc
    return decode_manifest(data)


def verify(
    bundle_dir: Path,
    trusted: Mapping[str, Ed25519PublicKey] | Sequence[Path],
    *,
    min_version: int = 0,
    now: datetime | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Manifest:
    """Check everything an edge device must check before trusting a bundle; return its manifest.

    In order: signature present (MissingSignatureError), signing key trusted (UnknownKeyError),
    signature matches the manifest bytes (BadSignatureError), format version known
    (UnsupportedFormatError), manifest well-formed (ManifestError), payload paths safe
    (UnsafePathError), not expired at ``now`` (ExpiredBundleError), ``version >= min_version``
    (RollbackError: an agent passes one more than the highest version it already trusts), every
    listed payload present (PayloadMissingError), within ``max_file_bytes`` (OversizeError), of the
    listed size (PayloadSizeError) and sha256 (PayloadHashError), and no file in the directory that
    the manifest does not list (UnlistedPayloadError).
    """
    keys = trusted_keys(trusted)
    manifest_path = bundle_dir / MANIFEST_FILE
    sig_path = bundle_dir / SIGNATURE_FILE
    if not manifest_path.is_file():
        raise MissingSignatureError(f"{bundle_dir}: no {MANIFEST_FILE}")
    if not sig_path.is_file():
        raise MissingSignatureError(f"{bundle_dir}: no {SIGNATURE_FILE} (unsigned bundle)")
    manifest_bytes = manifest_path.read_bytes()
    verify_signature(manifest_bytes, decode_signature(sig_path.read_bytes()), keys)
    manifest = decode_manifest(manifest_bytes)

    listed: dict[str, PayloadFile] = {}
    for entry in manifest.files:
        listed[check_safe_path(entry.path)] = entry
    moment = now or utcnow()
    if manifest.expires_at is not None and manifest.expires_at <= moment:
        raise ExpiredBundleError(
            f"{manifest.model_name} v{manifest.version} expired at {manifest.expires_at.isoformat()}"
        )
    if manifest.version < min_version:
        raise RollbackError(
            f"{manifest.model_name} v{manifest.version} is older than the lowest acceptable "
            f"version {min_version} (rollback refused)"
        )
    _check_files(bundle_dir, listed, max_file_bytes)
    return manifest


def _check_files(bundle_dir: Path, listed: Mapping[str, PayloadFile], max_file_bytes: int) -> None:
    root = bundle_dir.resolve()
    for rel, path in _walk(bundle_dir):
        if rel in RESERVED_NAMES:
            continue
        if rel not in listed:
            raise UnlistedPayloadError(f"{bundle_dir}: file {rel!r} is not listed in the signed manifest")
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise UnsafePathError(f"{bundle_dir}: payload {rel!r} is a link")
    for rel, entry in listed.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise PayloadMissingError(f"{bundle_dir}: listed payload {rel!r} is missing")
        size = path.stat().st_size
        if size > max_file_bytes:
            raise OversizeError(f"payload {rel!r} is {size} bytes (limit {max_file_bytes})")
        if size != entry.size:
            raise PayloadSizeError(f"payload {rel!r} is {size} bytes, manifest says {entry.size}")
        if file_sha256(path) != entry.sha256:
            raise PayloadHashError(f"payload {rel!r} does not match its sha256 in the manifest")


def _walk(bundle_dir: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(bundle_dir, followlinks=False):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            yield path.relative_to(bundle_dir).as_posix(), path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack_archive(bundle_dir: Path, out_file: Path) -> str:
    """Pack a bundle directory into one deterministic tar file; return the archive's sha256 (hex).

    Members are ``manifest.json``, ``manifest.sig`` and the listed payloads, in that order (payloads
    sorted), with zeroed owners and times, so the same bundle always packs to the same bytes: the
    archive's sha256 is the bundle's content address.
    """
    manifest = read_manifest(bundle_dir)
    names = [MANIFEST_FILE, SIGNATURE_FILE, *sorted(check_safe_path(f.path) for f in manifest.files)]
    for name in names:
        if not (bundle_dir / name).is_file():
            raise PayloadMissingError(f"{bundle_dir}: {name!r} is missing")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp-{secrets.token_hex(4)}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                path = bundle_dir / name
                info = tarfile.TarInfo(name)
                info.size = path.stat().st_size
                info.mode = 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
        digest = file_sha256(tmp)
        tmp.replace(out_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def unpack_archive(archive: Path, dest_dir: Path, *, max_bytes: int) -> Path:
    """Unpack a bundle archive into ``dest_dir`` (which must not exist or be empty); return it.

    Only regular files and directories with safe relative names are accepted; anything else is refused,
    never skipped (UnsafePathError for absolute names, ``..``, links, devices, a name given twice, a
    file where a directory is, or a member under a file); the archive and the sum of member sizes must
    stay within ``max_bytes`` (OversizeError). Extraction happens in a sibling temporary directory
    renamed into place. The result still has to pass :func:`verify`.
    """
    if archive.stat().st_size > max_bytes:
        raise OversizeError(f"{archive}: {archive.stat().st_size} bytes exceeds the limit {max_bytes}")
    require_empty(dest_dir)
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - closed by the with-block below
    except tarfile.TarError as exc:
        raise BundleError(f"{archive}: not a bundle archive ({exc})") from exc
    try:
        with tar, _staging_dir(dest_dir) as tmp:
            _extract_members(tar, tmp, archive, max_bytes)
    except tarfile.TarError as exc:
        raise BundleError(f"{archive}: corrupt bundle archive ({exc})") from exc
    return dest_dir


def _extract_members(tar: tarfile.TarFile, tmp: Path, archive: Path, max_bytes: int) -> None:
    total = 0
    files: set[str] = set()
    dirs: set[str] = set()  # directory members
    holders: set[str] = set()  # directories holding a member
    for count, member in enumerate(tar, start=1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise OversizeError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members")
        name = _member_name(member, archive)
        if name in files or name in dirs:
            raise UnsafePathError(f"{archive}: member {name!r} appears twice")
        parents = [str(parent) for parent in PurePosixPath(name).parents][:-1]
        for parent in parents:
            if parent in files:
                raise UnsafePathError(f"{archive}: member {name!r} lies under {parent!r}, which is a file")
        holders.update(parents)
        if member.isdir():
            dirs.add(name)
            (tmp / name).mkdir(parents=True, exist_ok=True)
            continue
        if name in holders:
            raise UnsafePathError(f"{archive}: file member {name!r} is also a directory of other members")
        files.add(name)
        total += member.size
        if total > max_bytes:
            raise OversizeError(f"{archive}: unpacked size exceeds the limit {max_bytes}")
        source = tar.extractfile(member)
        if source is None:
            raise UnsafePathError(f"{archive}: member {name!r} has no data")
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with source, target.open("xb") as fh:
            shutil.copyfileobj(source, fh, _CHUNK)


def _member_name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's checked name: a plain file or directory with a safe relative name, or refused."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        raise UnsafePathError(f"{archive}: member {name!r} is not a regular file or directory")
    if member.isdir():
        name = name.rstrip("/")
        if name in RESERVED_NAMES:
            raise UnsafePathError(f"{archive}: directory member {name!r} takes a reserved file name")
    if name not in RESERVED_NAMES:
        try:
            check_safe_path(name)
        except UnsafePathError:
            raise UnsafePathError(f"{archive}: unsafe member name {name!r}") from None
    return name


def read_payload(bundle_dir: Path, manifest: Manifest, path: str) -> bytes:
    """Bytes of a listed payload (the caller has verified the bundle)."""
    manifest.file(path)
    return (bundle_dir / path).read_bytes()


def payload_buffer(bundle_dir: Path, manifest: Manifest, path: str) -> io.BytesIO:
    """A listed payload as a binary buffer (for Parquet/ONNX readers)."""
    return io.BytesIO(read_payload(bundle_dir, manifest, path))
