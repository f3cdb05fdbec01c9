"""``shelfcast agent ...``: run the store agent, inspect it, score, roll back, install it as a service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec

from agent.config import AgentConfig, load_agent_config
from agent.errors import AgentError
from forecasting.commands.train import config_option, output_option


def _load(
    config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None
) -> AgentConfig:
    config = load_agent_config(list(config_files))
    return config.with_overrides(host=host, port=port, state_dir=str(state_dir) if state_dir else None)


def _common(func: Any) -> Any:
    func = click.option(
        "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Override [agent] state_dir."
    )(func)
    func = click.option("--port", type=click.IntRange(0, 65535), help="Override [api] port.")(func)
    func = click.option("--host", help="Override [api] host.")(func)
    return config_option(func)


@click.group()
def agent() -> None:
    """Run and inspect the store agent."""


@agent.command("run")
@_common
def run(config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None) -> None:
    """Run the agent: follow the server's assignment, score, serve forecasts (until SIGTERM)."""
    import structlog

    from agent.runtime import AgentRuntime
    from agent.service import serve
    from forecasting.common.logs import configure_logging
    from forecasting.common.private import private_files

    private_files()
    config = _load(config_files, host, port, state_dir)
    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(store_id=config.agent.store_id)
    serve(AgentRuntime(config))


def _api_call(config: AgentConfig, method: str, path: str, timeout: float) -> dict[str, Any] | None:
    """Call the running agent's API; None when no agent listens there."""
    import httpx

    from agent.config import is_loopback

    host = config.api.host if config.api.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    token = config.api.operator_token or config.api.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # Over HTTPS, the agent's own API on this machine is not verified (its certificate names the store's
    # host, not 127.0.0.1); an API on another address is verified against [agent] ca_file or the system.
    verify: Any = True
    if config.api.scheme == "https":
        verify = False if is_loopback(host) else _client_context(config.agent.ca_file)
    try:
        response = httpx.request(
            method,
            f"{config.api.scheme}://{host}:{config.api.port}{path}",
            headers=headers,
            timeout=timeout,
            verify=verify,
        )
    except httpx.ConnectError:
        return None
    except httpx.HTTPError as exc:
        raise AgentError(f"the running agent did not answer {path}: {exc}") from exc
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        raise AgentError(str(body.get("detail") or body.get("title") or response.status_code))
    result: dict[str, Any] = body
    return result


def _client_context(ca_file: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca_file or None)


def _offline_runtime(config: AgentConfig) -> Any:
    from agent.runtime import AgentRuntime
    from forecasting.common.private import private_files

    private_files()
    runtime = AgentRuntime(config)
    try:
        runtime.open_state()
    except Exception as exc:
        raise AgentError(f"cannot open the agent's state in {runtime.paths.root}: {exc}") from exc
    return runtime


def _act(config: AgentConfig, path: str, offline: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Ask the running agent (``POST path``); when none runs, do the same on its state in this process."""
    result = _api_call(config, "POST", path, config.scoring.timeout_seconds + 180)
    if result is not None:
        return result
    runtime = _offline_runtime(config)
    try:
        answer = offline(runtime)
    finally:
        runtime.store.close()
        runtime.scorer.close()
    return answer


def _print(result: dict[str, Any], output: str) -> None:
    from forecasting.common.tables import render

    if output == "json":
        click.echo(msgspec.json.encode(result).decode())
    else:
        rows = [{"field": k, "value": v} for k, v in result.items()]
        click.echo(render(rows, "table"))


@agent.command("status")
@_common
@output_option
def status_cmd(
    config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None, output: str
) -> None:
    """Active version, last sync, last scoring, staleness and lifecycle state."""
    config = _load(config_files, host, port, state_dir)
    result = _api_call(config, "GET", "/v1/status", 10.0)
    if result is None:
        result = _offline_status(config)
    _print(result, output)


def _offline_status(config: AgentConfig) -> dict[str, Any]:
    from agent.paths import StatePaths
    from agent.record import load_record
    from agent.serving import read_serving

    paths = StatePaths(config.state_path)
    record = load_record(paths)
    pointer = read_serving(paths)
    return {
        "store_id": config.agent.store_id,
        "running": False,
        "model_name": record.active.model_name if record.active else None,
        "active_version": record.active.version if record.active else None,
        "served_version": pointer.version if pointer else None,
        "last_sync_at": record.last_sync_at,
        "last_scored_at": pointer.scored_at if pointer else None,
        "state": record.state.value,
        "last_error": record.last_error,
        "shadow_version": record.shadow.version if record.shadow else None,
        "errors": dict(record.error_counts),
        "last_counted_error": record.counted_error,
        "current_errors": dict(record.current_errors),
    }


@agent.command("score")
@_common
@output_option
def score_cmd(
    config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None, output: str
) -> None:
    """Score the active model version on the store's history now."""
    _print(
        _act(_load(config_files, host, port, state_dir), "/v1/score", lambda runtime: runtime.score_now()),
        output,
    )


@agent.command("rollback")
@_common
@output_option
def rollback_cmd(
    config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None, output: str
) -> None:
    """Switch back to the newest kept version older than the active one."""
    _print(
        _act(
            _load(config_files, host, port, state_dir), "/v1/rollback", lambda runtime: runtime.rollback_now()
        ),
        output,
    )


@agent.command("retry")
@_common
@output_option
def retry_cmd(
    config_files: tuple[Path, ...], host: str | None, port: int | None, state_dir: Path | None, output: str
) -> None:
    """Try refused model bundles again at the next poll (after fixing what refused them)."""
    _print(
        _act(_load(config_files, host, port, state_dir), "/v1/retry", lambda runtime: runtime.retry_now()),
        output,
    )


@agent.command("install")
@click.option("--server", "server_url", required=True, help="Central server URL (https://... on a WAN).")
@click.option("--store-id", required=True, help="This store's id as registered on the server.")
@click.option("--enrollment-token", required=True, help="One-time enrollment token from `POST /v1/stores`.")
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Public key (.pub) trusted to sign model bundles (required, repeatable; copied under "
    "/etc/shelfcast/keys).",
)
@click.option("--api-host", default="0.0.0.0", show_default=True, help="Where the inventory API listens.")  # noqa: S104
@click.option("--api-port", default=8471, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Install under this root instead of / (packaging and tests).",
)
@click.option("--executable", type=click.Path(path_type=Path), help="shelfcast executable the unit runs.")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA bundle that signed the server's certificate (copied to /etc/shelfcast/ca.pem).",
)
@click.option("--insecure", is_flag=True, help="Allow plain http:// to a server off loopback (warned).")
def install_cmd(
    server_url: str,
    store_id: str,
    enrollment_token: str,
    trusted_keys: tuple[Path, ...],
    api_host: str,
    api_port: int,
    root: Path,
    executable: Path | None,
    force: bool,
    ca_file: Path | None,
    insecure: bool,
) -> None:
    """Write /etc/shelfcast/agent.toml (0600) and the systemd unit; then `systemctl enable --now`."""
    from agent.install import install

    written, warnings = install(
        root=root,
        server_url=server_url,
        store_id=store_id,
        enrollment_token=enrollment_token,
        trusted_keys=list(trusted_keys),
        api_host=api_host,
        api_port=api_port,
        executable=executable,
        force=force,
        ca_file=ca_file,
        insecure=insecure,
    )
    for path in written:
        click.echo(f"wrote {path}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo("next: systemctl daemon-reload && systemctl enable --now shelfcast-agent")
