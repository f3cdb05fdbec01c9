"""Errors of the forecasting library: one root, a few children that callers act on."""


class ForecastingError(Exception):
    """Root of every error raised by the forecasting library."""


class ConfigError(ForecastingError):
    """A configuration file, environment override or option is invalid (message names where and why)."""


class DataError(ForecastingError):
    """Input data cannot be read or mapped to the canonical frame."""


class BundleError(ForecastingError):
    """A model bundle is malformed, tampered with, or not trusted."""
