"""The central server's typed configuration (``configs/server.toml``, ``/etc/shelfcast/server.toml``)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from forecasting.common.errors import ConfigError
from forecasting.common.logs import LoggingConfig
from forecasting.common.settings import load_config
from server.quality.alerts import AlertsConfig
from server.retraining.schemas import RetrainingConfig


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[server]``: where the API listens and what it holds."""

    host: str = "127.0.0.1"
    port: int = 8470
    state_dir: str = ".shelfcast/server"
    admin_token: str = ""
    max_request_body_bytes: int = 512 * 1024 * 1024
    max_json_body_bytes: int = 1024 * 1024
    max_page_size: int = 500
    default_page_size: int = 100
    stale_after_seconds: int = 900
    enrollment_ttl_seconds: int = 7 * 24 * 3600
    keep_alive_seconds: int = 30
    tls_cert_file: str = ""
    tls_key_file: str = ""
    allow_plain_http: bool = False
    trusted_keys: list[str] = msgspec.field(default_factory=list)


class RolloutsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[rollouts]``: how often the rollout engine decides and how long its lease lasts."""

    engine_interval_seconds: float = 10.0
    lease_seconds: float = 60.0


class WritesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[writes]``: the group writer of heartbeats and reports (``docs/server.md``, *The write path*)."""

    max_batch: int = 256  # requests committed in one transaction at most
    max_wait_ms: float = 0.0  # how long a batch waits for more requests once it has one
    max_queue: int = 2048  # requests waiting for the writer; beyond it they are refused with 429
    retry_after_seconds: int = 2  # the Retry-After of those refusals
    contact_flush_seconds: float = 5.0  # polls' last contact is written this often (with the next batch)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        if self.max_wait_ms < 0 or self.retry_after_seconds < 1 or self.contact_flush_seconds <= 0:
            raise ValueError("max_wait_ms >= 0, retry_after_seconds >= 1 and contact_flush_seconds > 0")


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whole server configuration file."""

    server: HttpConfig = msgspec.field(default_factory=HttpConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    retraining: RetrainingConfig = msgspec.field(default_factory=RetrainingConfig)
    rollouts: RolloutsConfig = msgspec.field(default_factory=RolloutsConfig)
    writes: WritesConfig = msgspec.field(default_factory=WritesConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.server.state_dir)

    @property
    def uses_tls(self) -> bool:
        return bool(self.server.tls_cert_file)

    def check_transport(self) -> None:
        """Plain HTTP only on loopback or when allowed; a certificate needs its key (else ConfigError)."""
        server = self.server
        if bool(server.tls_cert_file) != bool(server.tls_key_file):
            raise ConfigError("[server] tls_cert_file and tls_key_file must be given together")
        loopback = server.host in {"127.0.0.1", "::1", "localhost"} or server.host.startswith("127.")
        if not self.uses_tls and not loopback and not server.allow_plain_http:
            raise ConfigError(
                f"[server] host = {server.host!r} is not loopback: set tls_cert_file and tls_key_file "
                "(HTTPS), or allow_plain_http = true behind a TLS-terminating proxy"
            )

    def with_overrides(
        self, *, host: str | None = None, port: int | None = None, state_dir: str | None = None
    ) -> ServerConfig:
        """A copy with command-line overrides applied (``--host``, ``--port``, ``--state-dir``)."""
        changes: dict[str, object] = {}
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = port
        if state_dir is not None:
            changes["state_dir"] = state_dir
        return msgspec.structs.replace(self, server=msgspec.structs.replace(self.server, **changes))


class ClientSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[client]``: where the admin CLI finds the server and which credential it sends."""

    server_url: str = "http://127.0.0.1:8470"
    token: str = ""
    timeout_seconds: float = 120.0


class ClientConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The admin CLI's config file (``--config``, ``/etc/shelfcast/client.toml``)."""

    client: ClientSection = msgspec.field(default_factory=ClientSection)


def load_client_config(files: list[Path]) -> ClientConfig:
    """Defaults < /etc/shelfcast/client.toml < files < SHELFCAST_CLIENT__* variables."""
    return load_config(ClientConfig, files, system_file="client.toml", restrict_env_to=("client",))


def load_server_config(files: list[Path]) -> ServerConfig:
    """Defaults < /etc/shelfcast/server.toml < files < SHELFCAST_<SECTION>__* variables.

    The sections the environment may set: server, logging, rollouts, retraining, writes.
    """
    return load_config(
        ServerConfig,
        files,
        system_file="server.toml",
        restrict_env_to=("server", "logging", "rollouts", "retraining", "writes"),
    )
