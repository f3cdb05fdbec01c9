"""Errors of the forecasting library: one root, a few children that callers act on."""


class ForecastingError(Exception):
    """Root of every error raised by the forecasting library."""


class ConfigError(ForecastingError):
    """A configuration file, environment override or option is invalid (message names where and why)."""


class DataError(ForecastingError):
    """Input data cannot be read or mapped to the canonical frame."""


class BundleError(ForecastingError):
    """A model bundle is malformed, tampered with, or not trusted."""


# --- Bundle verification failures: one child per reason, so callers (the agent, the server's upload
# --- endpoint, `shelfcast bundle verify`) can say exactly why a bundle was refused.


class KeyFileError(BundleError):
    """A key file is missing, unreadable or not an ed25519 key."""


class MissingSignatureError(BundleError):
    """The bundle has no ``manifest.sig`` (or no ``manifest.json``)."""


class BadSignatureError(BundleError):
    """The signature is malformed or does not match the manifest bytes."""


class UnknownKeyError(BundleError):
    """The signature names a key id that is not in the trusted key list."""


class UnsupportedFormatError(BundleError):
    """The manifest's ``format_version`` is not one this code reads."""


class ManifestError(BundleError):
    """The manifest is not valid JSON or does not match the manifest schema."""


class UnsafePathError(BundleError):
    """A payload or archive member name is absolute, climbs out (``..``), or is not a regular file."""


class PayloadMissingError(BundleError):
    """A payload file listed in the manifest is not in the bundle."""


class PayloadSizeError(BundleError):
    """A payload file's size differs from the size the manifest lists."""


class PayloadHashError(BundleError):
    """A payload file's sha256 differs from the hash the manifest lists."""


class UnlistedPayloadError(BundleError):
    """The bundle holds a file that the signed manifest does not list (mix-and-match)."""


class OversizeError(BundleError):
    """A payload file or an archive exceeds the configured size cap."""


class ExpiredBundleError(BundleError):
    """The manifest's ``expires_at`` is in the past."""


class RollbackError(BundleError):
    """The bundle's version is lower than the lowest version the caller accepts (rollback attempt)."""


class BundleExistsError(BundleError):
    """The output directory of a new bundle already exists and is not empty."""
