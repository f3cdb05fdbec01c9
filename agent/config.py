"""The store agent's typed configuration (``configs/agent.toml``, ``/etc/shelfcast/agent.toml``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from forecasting.common.errors import ConfigError
from forecasting.common.logs import LoggingConfig
from forecasting.common.settings import load_config

Positive = Annotated[float, Meta(gt=0)]
DEFAULT_SCHEDULE = "0 2 * * *"  # scheduled scoring: every day at 02:00 local time


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1`` (a host name other than localhost is not loopback)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AgentSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[agent]``: identity, the server to follow, and local state."""

    store_id: str = "store-1"
    server_url: str = "http://127.0.0.1:8470"
    token: str = ""
    enrollment_token: str = ""
    trusted_keys: list[str] = msgspec.field(default_factory=list)
    state_dir: str = ".shelfcast/agent"
    sales_dir: str = ""
    ca_file: str = ""
    # Allow plain http:// to a server that is not on loopback (a warning is logged at every start).
    insecure: bool = False
    poll_interval_seconds: Positive = 60.0
    heartbeat_interval_seconds: Positive = 60.0
    max_backoff_seconds: Positive = 300.0
    request_timeout_seconds: Positive = 30.0
    max_bundle_bytes: Annotated[int, Meta(ge=1)] = 512 * 1024 * 1024
    # Every other answer of the server (enrollment, assignment, report acknowledgements) is read up to
    # this size and refused beyond it.
    max_response_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    keep_versions: Annotated[int, Meta(ge=0)] = 2
    max_update_attempts: Annotated[int, Meta(ge=1)] = 3
    outbox_max_rows: Annotated[int, Meta(ge=1)] = 10_000
    stale_after_seconds: Positive = 3 * 24 * 3600.0
    # Testing crash recovery only: hold this long in the named lifecycle state (e.g. "activate").
    fault_hold_state: str = ""
    fault_hold_seconds: Annotated[float, Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.server_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server_url must be an http:// or https:// URL, got {self.server_url!r}")
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not self.insecure:
            raise ValueError(
                f"server_url {self.server_url!r} is plain HTTP to a non-loopback address: use https:// "
                "(ca_file names a private CA), or set insecure = true to allow it"
            )

    @property
    def plain_http_off_loopback(self) -> bool:
        parts = urlsplit(self.server_url)
        return parts.scheme == "http" and not is_loopback(parts.hostname or "")


class ApiSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[api]``: the inventory API on the store network."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8471
    max_horizon: Annotated[int, Meta(ge=1)] = 366
    max_page_size: Annotated[int, Meta(ge=1)] = 10_000
    default_page_size: Annotated[int, Meta(ge=1)] = 1_000
    # Bearer tokens of the /v1 routes: ``token`` reads forecasts and status; ``operator_token`` also
    # posts sales, scores and rolls back. Neither set: /v1 is open (keep the API on loopback then).
    token: str = ""
    operator_token: str = ""
    max_upload_bytes: int = 256 * 1024 * 1024
    # HTTPS for the inventory API: a PEM certificate (chain) and its private key, both or neither.
    tls_cert_file: str = ""
    tls_key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be given together")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"


class ScoringSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[scoring]``: what to forecast and how."""

    horizon: int = 28
    levels: list[int] = msgspec.field(default_factory=lambda: [80, 95])
    threads: Annotated[int, Meta(ge=1)] = 2
    # When to score on schedule: a cron expression in local time ("30 2 * * *": every day at 02:30).
    # Neither this nor daily_at set: DEFAULT_SCHEDULE.
    schedule: str = ""
    # The older form of a daily schedule, "HH:MM" local time (read as the cron "MM HH * * *").
    daily_at: str = ""
    keep_runs: Annotated[int, Meta(ge=1)] = 7
    timeout_seconds: Positive = 3600.0
    worker_idle_seconds: Annotated[float, Meta(ge=0)] = 120.0
    # "process": score in a warm child process (the daemon stays small; a crash cannot take the API down).
    # "inline": score in the agent's own process (many agents in one process, e.g. a fleet simulation).
    isolation: str = "process"
    # New sales (sales folder or POST /v1/sales) re-score once none has arrived for this long: forecasts
    # then start the day after the last day sold. 0 = only on schedule and on activation.
    rescore_after_sales_seconds: Annotated[float, Meta(ge=0)] = 30.0

    def __post_init__(self) -> None:
        if self.isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', got {self.isolation!r}")
        if self.schedule and self.daily_at:
            raise ValueError(
                f"schedule = {self.schedule!r} and daily_at = {self.daily_at!r} are both set: keep schedule "
                "(a cron expression; daily_at is its older form)"
            )
        if self.daily_at:
            hour, sep, minute = self.daily_at.partition(":")
            if not (sep and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
                raise ValueError(f"daily_at must be HH:MM local time, got {self.daily_at!r}")
        if self.schedule:
            from croniter import croniter

            if not croniter.is_valid(self.schedule):
                raise ValueError(
                    f"schedule must be a cron expression (minute hour day-of-month month day-of-week, "
                    f"local time), got {self.schedule!r}"
                )
        if self.horizon < 1:
            raise ValueError("horizon must be >= 1")

    @property
    def cron(self) -> str:
        """The schedule as a cron expression: ``schedule``, else ``daily_at`` translated, else the default."""
        if self.daily_at:
            hour, _, minute = self.daily_at.partition(":")
            return f"{int(minute)} {int(hour)} * * *"
        return self.schedule or DEFAULT_SCHEDULE

    def next_run(self, after: datetime) -> datetime:
        """The first scheduled scoring time strictly after ``after`` (aware), in ``after``'s time zone."""
        from croniter import croniter

        value = croniter(self.cron, after).get_next(datetime)
        assert isinstance(value, datetime)
        return value


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whole agent configuration file."""

    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    scoring: ScoringSection = msgspec.field(default_factory=ScoringSection)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.agent.state_dir)

    @property
    def sales_path(self) -> Path:
        return Path(self.agent.sales_dir) if self.agent.sales_dir else self.state_path / "inbox"

    def check_transport(self) -> None:
        """At start: the CA bundle and the API's certificate and key load (ConfigError naming the field)."""
        import ssl

        if self.agent.ca_file:
            try:
                ssl.create_default_context(cafile=self.agent.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"[agent] ca_file = {self.agent.ca_file!r}: cannot load it ({exc})"
                ) from None
        if self.api.tls_cert_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                context.load_cert_chain(self.api.tls_cert_file, self.api.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"[api] tls_cert_file = {self.api.tls_cert_file!r} / tls_key_file = "
                    f"{self.api.tls_key_file!r}: cannot load them ({exc})"
                ) from None

    def with_overrides(
        self, *, host: str | None = None, port: int | None = None, state_dir: str | None = None
    ) -> AgentConfig:
        """A copy with command-line overrides applied (``--host``, ``--port``, ``--state-dir``)."""
        api_changes: dict[str, object] = {}
        if host is not None:
            api_changes["host"] = host
        if port is not None:
            api_changes["port"] = port
        agent = self.agent
        if state_dir is not None:
            agent = msgspec.structs.replace(agent, state_dir=state_dir)
        return msgspec.structs.replace(
            self, agent=agent, api=msgspec.structs.replace(self.api, **api_changes)
        )


def load_agent_config(files: list[Path]) -> AgentConfig:
    """Defaults < /etc/shelfcast/agent.toml < files < SHELFCAST_{AGENT,API,SCORING,LOGGING}__* variables."""
    return load_config(
        AgentConfig,
        files,
        system_file="agent.toml",
        restrict_env_to=("agent", "api", "scoring", "logging"),
    )
