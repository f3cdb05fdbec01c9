"""The store agent's typed configuration (``configs/agent.toml``, ``/etc/shelfcast/agent.toml``)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from forecasting.logs import LoggingConfig
from forecasting.settings import load_config


class AgentSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[agent]``: identity, the server to follow, and local state."""

    store_id: str = "store-1"
    server_url: str = "http://127.0.0.1:8470"
    token: str = ""
    state_dir: str = ".shelfcast/agent"
    sales_dir: str = ""
    poll_interval_seconds: float = 60.0
    request_timeout_seconds: float = 30.0
    max_bundle_bytes: int = 512 * 1024 * 1024


class ApiSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[api]``: the inventory API on the store network."""

    host: str = "127.0.0.1"
    port: int = 8471
    max_horizon: int = 366
    max_page_size: int = 10_000


class ScoringSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[scoring]``: what to forecast and how."""

    horizon: int = 28
    levels: list[int] = msgspec.field(default_factory=lambda: [80, 95])
    threads: int = 2


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Whole agent configuration file."""

    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    scoring: ScoringSection = msgspec.field(default_factory=ScoringSection)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.agent.state_dir)


def load_agent_config(files: list[Path]) -> AgentConfig:
    """Defaults < /etc/shelfcast/agent.toml < files < SHELFCAST_{AGENT,API,SCORING,LOGGING}__* variables."""
    return load_config(
        AgentConfig,
        files,
        system_file="agent.toml",
        restrict_env_to=("agent", "api", "scoring", "logging"),
    )
