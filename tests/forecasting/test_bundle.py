"""Bundle writing, archive form and verification: one specific error per way of being untrustworthy."""

from __future__ import annotations

import hashlib
import io
import tarfile
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from forecasting.bundle.format import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Manifest,
    PayloadFile,
    encode_manifest,
    pack_archive,
    read_manifest,
    unpack_archive,
    utcnow,
    verify,
    write_bundle,
)
from forecasting.bundle.signing import encode_signature, load_private_key, sign
from forecasting.common.errors import (
    BadSignatureError,
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
    UnknownKeyError,
    UnlistedPayloadError,
    UnsafePathError,
    UnsupportedFormatError,
)
from tests.forecasting._bundles import key_pair

PAYLOADS = {"series.parquet": b"series-bytes", "fitted/AutoETS.parquet": b"fitted-bytes" * 10}


def _manifest(version: int = 1, **fields: object) -> Manifest:
    return Manifest(model_name="demand", version=version, created_at=utcnow(), **fields)  # type: ignore[arg-type]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A signing key pair."""
    return key_pair(tmp_path)


@pytest.fixture
def bundle_dir(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A valid signed bundle with two payloads."""
    return write_bundle(tmp_path / "b", _manifest(), PAYLOADS, keys[0])


def _resign(bundle_dir: Path, manifest_bytes: bytes, private: Path) -> None:
    (bundle_dir / MANIFEST_FILE).write_bytes(manifest_bytes)
    sig = sign(manifest_bytes, load_private_key(private))
    (bundle_dir / SIGNATURE_FILE).write_bytes(encode_signature(sig))


def test_write_then_verify_lists_sizes_and_hashes(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A written bundle verifies and its manifest lists each payload with size and sha256."""
    manifest = verify(bundle_dir, [keys[1]])
    files = {f.path: f for f in manifest.files}
    assert set(files) == set(PAYLOADS)
    for name, data in PAYLOADS.items():
        assert files[name].size == len(data)
        assert files[name].sha256 == hashlib.sha256(data).hexdigest()
    assert read_manifest(bundle_dir) == manifest
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]


def test_write_refuses_existing_bundle(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """Bundles are immutable: writing over a non-empty directory fails."""
    with pytest.raises(BundleExistsError):
        write_bundle(bundle_dir, _manifest(), PAYLOADS, keys[0])


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", ".hidden", MANIFEST_FILE, "a\\b"])
def test_write_refuses_unsafe_payload_names(tmp_path: Path, keys: tuple[Path, Path], name: str) -> None:
    """Payload names must be plain relative paths and not the manifest's own names."""
    with pytest.raises(UnsafePathError):
        write_bundle(tmp_path / "b", _manifest(), {name: b"x"}, keys[0])
    assert not (tmp_path / "b").exists()


def test_missing_signature(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """An unsigned bundle is refused."""
    (bundle_dir / SIGNATURE_FILE).unlink()
    with pytest.raises(MissingSignatureError):
        verify(bundle_dir, [keys[1]])


def test_tampered_manifest(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """Any change to the signed manifest bytes breaks the signature."""
    path = bundle_dir / MANIFEST_FILE
    path.write_bytes(path.read_bytes().replace(b'"version": 1', b'"version": 9'))
    with pytest.raises(BadSignatureError):
        verify(bundle_dir, [keys[1]])


def test_unknown_key(bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle signed by a key not in the trust list is refused with the key id."""
    _, other_pub = key_pair(tmp_path, "other.key")
    with pytest.raises(UnknownKeyError, match="not in the trusted key list"):
        verify(bundle_dir, [other_pub])


def test_rotation_trusts_old_and_new(bundle_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """Agents trusting both keys accept bundles signed by either."""
    new_priv, new_pub = key_pair(tmp_path, "new.key")
    new_bundle = write_bundle(tmp_path / "b2", _manifest(version=2), PAYLOADS, new_priv)
    verify(bundle_dir, [keys[1], new_pub])
    verify(new_bundle, [keys[1], new_pub])


def test_payload_hash_mismatch(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A payload changed in place (same size) fails its sha256."""
    path = bundle_dir / "series.parquet"
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PayloadHashError):
        verify(bundle_dir, [keys[1]])


def test_payload_size_mismatch(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A payload with a different size is refused before hashing."""
    with (bundle_dir / "series.parquet").open("ab") as fh:
        fh.write(b"more")
    with pytest.raises(PayloadSizeError):
        verify(bundle_dir, [keys[1]])


def test_payload_missing(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A listed payload that is absent is refused."""
    (bundle_dir / "fitted" / "AutoETS.parquet").unlink()
    with pytest.raises(PayloadMissingError):
        verify(bundle_dir, [keys[1]])


def test_unlisted_file_mix_and_match(bundle_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A file the signed manifest does not list (e.g. from another bundle) is refused."""
    other = write_bundle(tmp_path / "o", _manifest(), {"extra.onnx": b"model"}, keys[0])
    (bundle_dir / "extra.onnx").write_bytes((other / "extra.onnx").read_bytes())
    with pytest.raises(UnlistedPayloadError):
        verify(bundle_dir, [keys[1]])


def test_mix_and_match_payload_swap(bundle_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A payload swapped in from another valid bundle fails the hash check."""
    swapped = {**PAYLOADS, "series.parquet": b"SERIES-BYTES"}
    other = write_bundle(tmp_path / "o", _manifest(), swapped, keys[0])
    (bundle_dir / "series.parquet").write_bytes((other / "series.parquet").read_bytes())
    with pytest.raises(PayloadHashError):
        verify(bundle_dir, [keys[1]])


def test_expired(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A manifest past its expiry is refused; before it, it is accepted."""
    expires = utcnow() + timedelta(days=1)
    b = write_bundle(tmp_path / "b", _manifest(expires_at=expires), PAYLOADS, keys[0])
    verify(b, [keys[1]])
    with pytest.raises(ExpiredBundleError):
        verify(b, [keys[1]], now=expires + timedelta(seconds=1))


def test_rollback_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """A version below min_version (older than what the agent already trusts) is refused."""
    b = write_bundle(tmp_path / "b", _manifest(version=3), PAYLOADS, keys[0])
    assert verify(b, [keys[1]], min_version=3).version == 3
    with pytest.raises(RollbackError):
        verify(b, [keys[1]], min_version=4)


@pytest.mark.parametrize("bad_path", ["../outside", "/abs/path", "sub/../../x"])
def test_unsafe_path_in_signed_manifest(bundle_dir: Path, keys: tuple[Path, Path], bad_path: str) -> None:
    """Even a correctly signed manifest may not name files outside the bundle."""
    manifest = read_manifest(bundle_dir)
    bad = msgspec.structs.replace(
        manifest, files=[*manifest.files, PayloadFile(path=bad_path, size=1, sha256="0" * 64)]
    )
    _resign(bundle_dir, encode_manifest(bad), keys[0])
    with pytest.raises(UnsafePathError):
        verify(bundle_dir, [keys[1]])


def test_symlinked_payload_refused(bundle_dir: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """A payload replaced by a link is refused even when the target has the right bytes."""
    target = tmp_path / "elsewhere"
    target.write_bytes(PAYLOADS["series.parquet"])
    (bundle_dir / "series.parquet").unlink()
    (bundle_dir / "series.parquet").symlink_to(target)
    with pytest.raises(UnsafePathError):
        verify(bundle_dir, [keys[1]])


def test_oversize_payload(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """Payloads above max_file_bytes are refused."""
    with pytest.raises(OversizeError):
        verify(bundle_dir, [keys[1]], max_file_bytes=50)


def test_unknown_format_version(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A signed manifest of a format this code does not know is refused by version."""
    data = (bundle_dir / MANIFEST_FILE).read_bytes().replace(b'"format_version": 1', b'"format_version": 2')
    _resign(bundle_dir, data, keys[0])
    with pytest.raises(UnsupportedFormatError, match="format_version 2"):
        verify(bundle_dir, [keys[1]])


def test_malformed_manifest(bundle_dir: Path, keys: tuple[Path, Path]) -> None:
    """A signed manifest that does not match the schema is a ManifestError."""
    _resign(bundle_dir, b'{"format_version": 1, "model_name": 3}', keys[0])
    with pytest.raises(ManifestError):
        verify(bundle_dir, [keys[1]])


def test_pack_is_deterministic_and_roundtrips(
    bundle_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Packing twice gives identical bytes; the sha256 returned is the archive's; unpacking verifies."""
    sha1 = pack_archive(bundle_dir, tmp_path / "a1.tar")
    sha2 = pack_archive(bundle_dir, tmp_path / "a2.tar")
    assert sha1 == sha2 == hashlib.sha256((tmp_path / "a1.tar").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "a1.tar") as tar:
        assert tar.getnames()[:2] == [MANIFEST_FILE, SIGNATURE_FILE]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    out = unpack_archive(tmp_path / "a1.tar", tmp_path / "unpacked", max_bytes=1 << 20)
    assert verify(out, [keys[1]]) == verify(bundle_dir, [keys[1]])


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _reg(name: str, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b"])
def test_unpack_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    """Archive members that would land outside the destination are refused; nothing is left behind."""
    archive = _tar_with(tmp_path, [_reg(name)])
    with pytest.raises(UnsafePathError):
        unpack_archive(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_unpack_refuses_links(tmp_path: Path) -> None:
    """Symlink and hardlink members are refused."""
    link = tarfile.TarInfo("series.parquet")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(UnsafePathError):
        unpack_archive(_tar_with(tmp_path, [link]), tmp_path / "dest", max_bytes=1 << 20)


def test_unpack_refuses_oversize(tmp_path: Path) -> None:
    """Archives larger than max_bytes are refused before anything is extracted."""
    archive = _tar_with(tmp_path, [_reg("a.bin", 600), _reg("b.bin", 600)], data=b"y" * 600)
    with pytest.raises(OversizeError):
        unpack_archive(archive, tmp_path / "dest", max_bytes=archive.stat().st_size - 1)
    assert not (tmp_path / "dest").exists()


def test_unpack_refuses_duplicate_members(tmp_path: Path) -> None:
    """A member name appearing twice (a later copy overriding a verified one) is refused."""
    archive = _tar_with(tmp_path, [_reg("a.bin"), _reg("a.bin")])
    with pytest.raises(UnsafePathError):
        unpack_archive(archive, tmp_path / "dest", max_bytes=1 << 20)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize(
    "members",
    [
        [_reg("fitted"), _reg("fitted/AutoETS.parquet")],  # a file, then a file under it
        [_reg("fitted/AutoETS.parquet"), _reg("fitted")],  # a file where a directory of members is
        [_reg("fitted"), _dir("fitted")],  # a file, then a directory of the same name
        [_dir("fitted"), _reg("fitted")],
        [_dir("fitted"), _dir("fitted")],  # a directory twice
        [_dir("../../..")],  # a directory climbing out is refused, not skipped
        [_dir("/etc")],
        [_dir("manifest.json")],  # a directory where the manifest goes
    ],
    ids=[
        "file-then-under",
        "under-then-file",
        "file-then-dir",
        "dir-then-file",
        "dir-twice",
        "dotdot-dir",
        "absolute-dir",
        "reserved-dir",
    ],
)
def test_unpack_refuses_collisions_and_unsafe_directories(
    tmp_path: Path, members: list[tarfile.TarInfo]
) -> None:
    """Any file/directory collision, a repeated directory or an unsafe directory name: UnsafePathError."""
    archive = _tar_with(tmp_path, members)
    with pytest.raises(UnsafePathError, match=r"evil\.tar: "):
        unpack_archive(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.glob("dest*"))


def test_unpack_accepts_directory_members(tmp_path: Path) -> None:
    """Plain directories (before or after their files) are kept; the files under them are extracted."""
    archive = _tar_with(
        tmp_path, [_dir("fitted"), _reg("fitted/a.parquet"), _reg("fitted/b/c.parquet"), _dir("fitted/b")]
    )
    out = unpack_archive(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert (out / "fitted" / "a.parquet").read_bytes() == b"x"
    assert (out / "fitted" / "b" / "c.parquet").read_bytes() == b"x"


def test_cli_bundle_unpack_refuses_a_collision_cleanly(tmp_path: Path) -> None:
    """``shelfcast bundle unpack`` names the refused member in one line on stderr, exit 1, no traceback."""
    import subprocess
    import sys

    archive = _tar_with(tmp_path, [_reg("fitted"), _reg("fitted/AutoETS.parquet")])
    done = subprocess.run(
        [sys.executable, "-m", "shelfcast", "bundle", "unpack", str(archive), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done
    assert "fitted/AutoETS.parquet" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_corrupt_archive(tmp_path: Path) -> None:
    """Bytes that are not a tar archive are a BundleError."""
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BundleError):
        unpack_archive(bad, tmp_path / "dest", max_bytes=1 << 20)


def test_cli_keys_verify_show_pack(tmp_path: Path) -> None:
    """`keys generate`, `bundle verify` (exit 0 / exit 1 with the reason), `bundle show` and `bundle pack`."""
    from click.testing import CliRunner

    from shelfcast.cli import cli

    runner = CliRunner()
    key = tmp_path / "k"
    result = runner.invoke(cli, ["keys", "generate", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k.pub").is_file()
    bundle = write_bundle(tmp_path / "b", _manifest(version=4), PAYLOADS, key)
    ok = runner.invoke(cli, ["bundle", "verify", str(bundle), "--key", str(tmp_path / "k.pub")])
    assert ok.exit_code == 0
    assert ok.output.startswith("valid: demand v4")
    shown = runner.invoke(cli, ["bundle", "show", str(bundle)])
    assert shown.exit_code == 0
    assert "series.parquet" in shown.output
    assert "model_name" in shown.output
    as_json = runner.invoke(cli, ["bundle", "show", str(bundle), "-o", "json"])
    assert msgspec.json.decode(as_json.output)["version"] == 4
    packed = runner.invoke(cli, ["bundle", "pack", str(bundle), "--out", str(tmp_path / "b.tar")])
    assert packed.output.split()[0] == hashlib.sha256((tmp_path / "b.tar").read_bytes()).hexdigest()
    (bundle / "series.parquet").write_bytes(b"tampered!!!!")
    bad = runner.invoke(cli, ["bundle", "verify", str(bundle), "--key", str(tmp_path / "k.pub")])
    assert bad.exit_code == 1
    assert "sha256" in bad.output
