"""Typed, layered configuration: code defaults < TOML files < ``SHELFCAST_<SECTION>__<KEY>`` environment.

Every layer is validated on its own before merging, so an error names the file (or the environment
variable), the field path and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from forecasting.common.errors import ConfigError

try:
    import tomllib
except ImportError:  # pragma: no cover - interpreters without tomllib use the tomli backport
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

ENV_PREFIX = "SHELFCAST_"
SYSTEM_CONFIG_DIR = Path("/etc/shelfcast")

T = TypeVar("T", bound=msgspec.Struct)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file, turning syntax and I/O errors into ``ConfigError`` naming the file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None


def _env_value(raw: str) -> Any:
    """Interpret an environment value as a TOML value (``8080``, ``true``, ``[1, 2]``), else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from ``SHELFCAST_SECTION__KEY[__SUBKEY]`` variables (names lower-cased)."""
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"environment variable {name}: empty name segment")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: conflicts with another override")
            node = child
        node[parts[-1]] = _env_value(raw)
    return tree


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; tables merge, every other value replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(data: Mapping[str, Any], cls: type[T], source: str) -> T:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(
    cls: type[T],
    files: Sequence[Path] = (),
    *,
    environ: Mapping[str, str] | None = None,
    system_file: str | None = None,
    restrict_env_to: Sequence[str] | None = None,
) -> T:
    """Build ``cls`` from code defaults, ``/etc/shelfcast/<system_file>`` (if present), ``files``, then env.

    ``restrict_env_to`` lists the top-level sections env overrides may touch (other SHELFCAST_ variables
    belong to another component and are ignored).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if system_file is not None:
        system_path = SYSTEM_CONFIG_DIR / system_file
        if system_path.is_file():
            layers.append((str(system_path), read_toml(system_path)))
    layers.extend((str(path), read_toml(path)) for path in files)
    env = env_overrides(os.environ if environ is None else environ)
    if restrict_env_to is not None:
        env = {k: v for k, v in env.items() if k in restrict_env_to}
    if env:
        layers.append(("environment (SHELFCAST_* variables)", env))

    merged: dict[str, Any] = {}
    for source, data in layers:
        _validate(data, cls, source)
        merged = deep_merge(merged, data)
    return _validate(merged, cls, "merged configuration")


def to_toml_dict(config: msgspec.Struct) -> dict[str, Any]:
    """The effective configuration as plain builtins (for ``config show`` and logs)."""
    result = msgspec.to_builtins(config)
    assert isinstance(result, dict)
    return result


def file_errors(cls: type[T], path: Path) -> tuple[T | None, list[str]]:
    """Validate one file and name *every* bad key (``config check``): (the config or None, errors).

    Each key is checked alone within its table, then together with the table's good keys, so a key
    that is fine only beside another (``insecure`` for an ``http://`` URL) is not reported; a table
    whose keys are each fine but not together is reported as a whole.
    """
    data = read_toml(path)
    try:
        return msgspec.convert(data, cls), []
    except msgspec.ValidationError as exc:
        first = f"{path}: {exc}"
    errors: list[str] = []
    for name, value in data.items():
        if isinstance(value, dict):
            errors += _table_errors(cls, path, name, value)
        else:
            errors += _errors_of(cls, path, {name: value})
    return None, errors or [first]


def _errors_of(cls: type[T], path: Path, data: dict[str, Any]) -> list[str]:
    try:
        msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        return [f"{path}: {exc}"]
    return []


def _table_errors(cls: type[T], path: Path, name: str, table: dict[str, Any]) -> list[str]:
    if not _errors_of(cls, path, {name: table}):
        return []
    alone = {key: _errors_of(cls, path, {name: {key: value}}) for key, value in table.items()}
    good = {key: table[key] for key, errs in alone.items() if not errs}
    errors = []
    for key, errs in alone.items():
        if errs and _errors_of(cls, path, {name: {**good, key: table[key]}}):
            errors += errs
    return errors or _errors_of(cls, path, {name: table})
