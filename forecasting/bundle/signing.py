"""Ed25519 keys for signing model bundles: generate, store, load, identify, and trust lists for rotation.

Keys are stored as PEM (PKCS#8 private key, SubjectPublicKeyInfo public key) so that standard tools
(``openssl pkey -in key.pub -pubin -text``) can read them. A key is identified by its *key id*: the
first 16 hex digits of the sha256 of the 32 raw public-key bytes. A signature file names the key id it
was made with, so a verifier holding several trusted public keys (old and new during a rotation) picks
the right one without trying them all.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from forecasting.common.errors import BadSignatureError, BundleError, KeyFileError, UnknownKeyError

ALGORITHM = "ed25519"
KEY_ID_HEX_DIGITS = 16


class Signature(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Content of a detached signature file such as ``manifest.sig`` (JSON)."""

    algorithm: str = ALGORITHM
    key_id: str
    signature: str  # base64 of the 64-byte ed25519 signature


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_DIGITS]


def public_key_path(private_key_file: Path) -> Path:
    """Where the public half of ``private_key_file`` lives: ``FILE.pub``."""
    return private_key_file.with_name(private_key_file.name + ".pub")


def generate_key_files(out: Path, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Create a new key pair: private key at ``out`` (mode 0600), public key at ``out.pub``.

    Returns ``(private_path, public_path, key_id)``. Refuses to replace an existing key unless
    ``overwrite`` is set, since losing a signing key strands every agent that trusts it.
    """
    pub_path = public_key_path(out)
    if not overwrite and (out.exists() or pub_path.exists()):
        raise KeyFileError(f"{out}: key file already exists (refusing to overwrite a signing key)")
    out.parent.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_private(out, private_pem)
    tmp_pub = pub_path.with_name(pub_path.name + ".tmp")
    tmp_pub.write_bytes(public_pem)
    tmp_pub.chmod(0o644)
    tmp_pub.replace(pub_path)
    return out, pub_path, key_id(private_key.public_key())


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, generated there (0600, with ``path.pub``) on first use.

    For ``shelfcast train`` without ``--signing-key``: the configured key in the state folder.
    """
    if not path.exists():
        generate_key_files(path)
    return load_private_key(path)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM (PKCS#8) ed25519 private key; KeyFileError names the file when it is not one."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot read an ed25519 private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM ed25519 public key (or the public half of a private key file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key ({exc})") from exc
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an ed25519 public key")
    return key


def trusted_keys(
    keys: Mapping[str, Ed25519PublicKey] | Sequence[Path] | Iterable[Ed25519PublicKey],
) -> dict[str, Ed25519PublicKey]:
    """Normalise a trust list (key-id mapping, public key files, or key objects) to ``{key_id: key}``.

    Several keys may be trusted at once: that is how a signing key is rotated (agents trust old and new,
    bundles move to the new key, the old key is dropped from the list later).
    """
    if isinstance(keys, Mapping):
        out: dict[str, Ed25519PublicKey] = {}
        for kid, key in keys.items():
            if key_id(key) != kid:
                raise BundleError(f"trusted key listed as {kid} has key id {key_id(key)}")
            out[kid] = key
        return out
    result: dict[str, Ed25519PublicKey] = {}
    for item in keys:
        key = load_public_key(Path(item)) if isinstance(item, (str, Path)) else item
        result[key_id(key)] = key
    return result


def sign(data: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """Detached ed25519 signature of ``data``."""
    raw = private_key.sign(data)
    return Signature(key_id=key_id(private_key.public_key()), signature=base64.b64encode(raw).decode())


def encode_signature(signature: Signature) -> bytes:
    """JSON bytes of a signature file."""
    return msgspec.json.encode(signature) + b"\n"


def decode_signature(data: bytes) -> Signature:
    """Parse a signature file; BadSignatureError when it is not one."""
    try:
        sig = msgspec.json.decode(data, type=Signature)
    except msgspec.DecodeError as exc:
        raise BadSignatureError(f"signature file is malformed ({exc})") from exc
    if sig.algorithm != ALGORITHM:
        raise BadSignatureError(f"unsupported signature algorithm {sig.algorithm!r}")
    return sig


def verify_signature(data: bytes, signature: Signature, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check ``signature`` over ``data`` with the trusted key it names; returns the key id.

    UnknownKeyError when the key id is not trusted, BadSignatureError when the signature does not match.
    """
    key = keys.get(signature.key_id)
    if key is None:
        raise UnknownKeyError(f"signed with key {signature.key_id}, which is not in the trusted key list")
    try:
        raw = base64.b64decode(signature.signature, validate=True)
        key.verify(raw, data)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignatureError(f"signature by key {signature.key_id} does not match the manifest") from exc
    return signature.key_id
