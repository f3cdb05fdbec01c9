"""Signing keys: generation, storage, key ids and trust lists."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from forecasting.bundle.signing import (
    decode_signature,
    encode_signature,
    generate_key_files,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    trusted_keys,
    verify_signature,
)
from forecasting.common.errors import BadSignatureError, KeyFileError, UnknownKeyError


def test_generate_writes_private_0600_and_public(tmp_path: Path) -> None:
    """The private key is mode 0600 and FILE.pub holds the matching public key."""
    private, public, kid = generate_key_files(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public == tmp_path / "k.pub"
    assert key_id(load_private_key(private).public_key()) == kid == key_id(load_public_key(public))


def test_key_id_is_sha256_prefix_of_raw_public_key(tmp_path: Path) -> None:
    """The key id is the first 16 hex digits of sha256 over the raw public key bytes."""
    _, public, kid = generate_key_files(tmp_path / "k")
    raw = load_public_key(public).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert kid == hashlib.sha256(raw).hexdigest()[:16]


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    """An existing key is not silently replaced."""
    generate_key_files(tmp_path / "k")
    with pytest.raises(KeyFileError):
        generate_key_files(tmp_path / "k")
    generate_key_files(tmp_path / "k", overwrite=True)


def test_load_rejects_non_key_files(tmp_path: Path) -> None:
    """A file that is not an ed25519 PEM key is a KeyFileError naming the file."""
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(KeyFileError, match=r"bad\.pub"):
        load_public_key(bad)
    with pytest.raises(KeyFileError):
        load_private_key(bad)


def test_signature_roundtrip_and_tamper(tmp_path: Path) -> None:
    """A signature verifies for the signed bytes only."""
    private, public, kid = generate_key_files(tmp_path / "k")
    sig = decode_signature(encode_signature(sign(b"payload", load_private_key(private))))
    keys = trusted_keys([public])
    assert verify_signature(b"payload", sig, keys) == kid
    with pytest.raises(BadSignatureError):
        verify_signature(b"payload!", sig, keys)


def test_unknown_key_and_rotation(tmp_path: Path) -> None:
    """Only listed keys are trusted; listing old and new keys accepts both (rotation)."""
    old_priv, old_pub, _ = generate_key_files(tmp_path / "old")
    new_priv, new_pub, _ = generate_key_files(tmp_path / "new")
    sig_old = sign(b"m", load_private_key(old_priv))
    sig_new = sign(b"m", load_private_key(new_priv))
    with pytest.raises(UnknownKeyError):
        verify_signature(b"m", sig_old, trusted_keys([new_pub]))
    both = trusted_keys([old_pub, new_pub])
    verify_signature(b"m", sig_old, both)
    verify_signature(b"m", sig_new, both)


def test_malformed_signature_file() -> None:
    """Garbage in manifest.sig is a BadSignatureError."""
    with pytest.raises(BadSignatureError):
        decode_signature(b"{nope")


def test_load_or_create_generates_once(tmp_path: Path) -> None:
    """The configured key is generated on first use and reused afterwards."""
    from forecasting.bundle.signing import load_or_create_private_key

    first = load_or_create_private_key(tmp_path / "state" / "signing.key")
    again = load_or_create_private_key(tmp_path / "state" / "signing.key")
    assert key_id(first.public_key()) == key_id(again.public_key())
    assert (tmp_path / "state" / "signing.key.pub").is_file()
