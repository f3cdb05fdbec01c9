"""``shelfcast agent install``: the config file (0600), trusted keys and the systemd unit of a store agent.

Everything is written under ``root`` (``/`` on a store machine; a temporary folder in tests and when
building a package). The service user is created only when installing into the real root as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from agent.errors import AgentError
from agent.paths import atomic_write_bytes

SERVICE_USER = "shelfcast-agent"
UNIT_NAME = "shelfcast-agent.service"
DEFAULT_EXECUTABLE = "/opt/shelfcast/bin/shelfcast"


def unit_text(name: str = UNIT_NAME) -> str:
    """The packaged unit file (identical to ``systemd/<name>`` in the source tree)."""
    return (resources.files("agent") / "units" / name).read_text()


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(
    *,
    server_url: str,
    store_id: str,
    enrollment_token: str,
    trusted_keys: list[str],
    api_host: str,
    api_port: int,
    ca_file: str = "",
    insecure: bool = False,
) -> str:
    keys = ", ".join(_toml_string(k) for k in trusted_keys)
    transport = f"ca_file = {_toml_string(ca_file)}\n" if ca_file else ""
    transport += "insecure = true\n" if insecure else ""
    return (
        "# Written by `shelfcast agent install`. The enrollment token is used once; the store credential\n"
        "# then lives in the state directory (/var/lib/shelfcast-agent/credential, 0600).\n"
        "[agent]\n"
        f"server_url = {_toml_string(server_url)}\n"
        f"store_id = {_toml_string(store_id)}\n"
        f"enrollment_token = {_toml_string(enrollment_token)}\n"
        f"trusted_keys = [{keys}]\n"
        f"{transport}"
        'sales_dir = "/var/lib/shelfcast-agent/inbox"\n'
        "\n[api]\n"
        f"host = {_toml_string(api_host)}\n"
        f"port = {api_port}\n"
        "\n[logging]\n"
        'format = "json"\n'
    )


def _ensure_user(root: Path) -> None:
    if root != Path("/") or os.geteuid() != 0:
        return
    if subprocess.run(["/usr/bin/id", "-u", SERVICE_USER], capture_output=True, check=False).returncode == 0:  # noqa: S603
        return
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(  # noqa: S603 - fixed arguments
        [useradd, "--system", "--no-create-home", "--home-dir", "/var/lib/shelfcast-agent", "--shell",
         "/usr/sbin/nologin", SERVICE_USER],
        check=True,
    )  # fmt: skip


def _chown(path: Path, root: Path) -> None:
    if root == Path("/") and os.geteuid() == 0:
        shutil.chown(path, user=SERVICE_USER, group=SERVICE_USER)


def install(
    *,
    root: Path,
    server_url: str,
    store_id: str,
    enrollment_token: str,
    trusted_keys: list[Path],
    api_host: str,
    api_port: int,
    executable: Path | None = None,
    force: bool = False,
    ca_file: Path | None = None,
    insecure: bool = False,
) -> tuple[list[Path], list[str]]:
    """Write config, keys (and the CA bundle) and unit under ``root``; the files written and warnings.

    The config is checked like the agent checks it at start before anything is written, so a plain
    ``http://`` server off loopback without ``--insecure`` fails here, naming the setting.
    """
    import msgspec

    from agent.config import AgentConfig

    if not server_url.startswith(("http://", "https://")):
        raise AgentError(f"--server must be an http(s) URL, got {server_url!r}")
    etc = root / "etc" / "shelfcast"
    config_path = etc / "agent.toml"
    if config_path.exists() and not force:
        raise AgentError(f"{config_path} exists; pass --force to overwrite it")
    if not trusted_keys:
        raise AgentError(
            "no --trusted-key given: the agent would refuse every model bundle; pass the public key that "
            "signs them (--trusted-key signing.key.pub, repeatable)"
        )
    for key in trusted_keys:
        if not key.is_file():
            raise AgentError(f"trusted key {key} not found")
    if ca_file is not None and not ca_file.is_file():
        raise AgentError(f"CA bundle {ca_file} not found")
    text = render_config(
        server_url=server_url,
        store_id=store_id,
        enrollment_token=enrollment_token,
        trusted_keys=[str(Path("/etc/shelfcast/keys") / key.name) for key in trusted_keys],
        api_host=api_host,
        api_port=api_port,
        ca_file="/etc/shelfcast/ca.pem" if ca_file is not None else "",
        insecure=insecure,
    )
    try:
        msgspec.toml.decode(text.encode(), type=AgentConfig)
    except msgspec.ValidationError as exc:
        raise AgentError(f"the agent would refuse this config: {exc}") from None
    _ensure_user(root)
    keys_dir = etc / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for key in trusted_keys:
        target = keys_dir / key.name
        atomic_write_bytes(target, key.read_bytes(), mode=0o644)
        written.append(target)
    if ca_file is not None:
        atomic_write_bytes(etc / "ca.pem", ca_file.read_bytes(), mode=0o644)
        written.append(etc / "ca.pem")
    atomic_write_bytes(config_path, text.encode(), mode=0o600)
    _chown(config_path, root)
    written.append(config_path)
    exe = executable or _default_executable()
    unit = unit_text().replace(DEFAULT_EXECUTABLE, str(exe))
    unit_path = root / "etc" / "systemd" / "system" / UNIT_NAME
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(unit_path, unit.encode(), mode=0o644)
    written.append(unit_path)
    warnings = []
    hidden = hidden_executable(unit, exe)
    if hidden is not None:
        warnings.append(
            f"ExecStart runs {exe}, but the unit's {hidden} from the service: install shelfcast "
            f"outside {', '.join(p for ps in HIDDEN_BY.values() for p in ps)} (e.g. /opt/shelfcast) "
            "or pass --executable"
        )
    return written, warnings


# Paths a unit's sandboxing setting hides from the service (empty or inaccessible at run time).
HIDDEN_BY: dict[str, tuple[str, ...]] = {
    "ProtectHome": ("/home", "/root", "/run/user"),
    "PrivateTmp": ("/tmp", "/var/tmp"),  # noqa: S108 - paths compared, never written
}


def hidden_executable(unit: str, executable: Path) -> str | None:
    """The ``Setting=value`` of ``unit`` that hides ``executable`` from the service; None if none does."""
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    candidates = {executable.absolute(), executable.resolve()}
    for setting, prefixes in HIDDEN_BY.items():
        value = settings.get(setting, "no").strip().lower()
        if value in ("no", "false", "0", "read-only"):
            continue
        for path in candidates:
            if any(path.is_relative_to(prefix) for prefix in prefixes):
                return f"{setting}={settings[setting].strip()} hides {path}"
    return None


def _default_executable() -> Path:
    """The ``shelfcast`` script beside this interpreter (the venv it was installed into)."""
    candidate = Path(sys.executable).parent / "shelfcast"
    if candidate.is_file():
        return candidate
    found = shutil.which("shelfcast")
    return Path(found) if found else Path(DEFAULT_EXECUTABLE)
