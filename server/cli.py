"""``shelfcast server ...``: run the central server, create its first admin credential, back up, restore."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from forecasting.commands.train import config_option
from forecasting.common.logs import configure_logging, get_logger
from forecasting.common.systemd_notify import notify, watchdog_interval_seconds
from server.config import ServerConfig, load_server_config
from server.errors import ServerError

log = get_logger("server.cli")


def _load(config_files: tuple[Path, ...], state_dir: Path | None, **overrides: Any) -> ServerConfig:
    config = load_server_config(list(config_files))
    return config.with_overrides(state_dir=None if state_dir is None else str(state_dir), **overrides)


def state_dir_source(config_files: tuple[Path, ...], state_dir: Path | None) -> str:
    """Where ``[server] state_dir`` came from, by the layering of ``load_server_config`` (last one wins)."""
    from forecasting.common.settings import SYSTEM_CONFIG_DIR, read_toml

    if state_dir is not None:
        return "--state-dir"
    if os.environ.get("SHELFCAST_SERVER__STATE_DIR"):
        return "SHELFCAST_SERVER__STATE_DIR"
    system = SYSTEM_CONFIG_DIR / "server.toml"
    for path in reversed([*config_files, *([system] if system.is_file() else [])]):
        if "state_dir" in read_toml(path).get("server", {}):
            return str(path)
    return "the built-in default"


def say_state_dir(config: ServerConfig, config_files: tuple[Path, ...], state_dir: Path | None) -> None:
    """One line on stderr: the state folder used and which setting chose it."""
    source = state_dir_source(config_files, state_dir)
    click.echo(f"state folder: {config.state_path.absolute()} (from {source})", err=True)


def admin_credentials(config: ServerConfig) -> int:
    """How many admin credentials the state folder's database holds (0 when there is none yet)."""
    from server.db import DB_FILE_NAME, Database

    if not (config.state_path / DB_FILE_NAME).is_file():
        return 0
    db = Database.open(config.state_path / DB_FILE_NAME)
    try:
        count = db.scalar("SELECT count(*) FROM credentials WHERE role = 'admin' AND revoked_at IS NULL")
    finally:
        db.close()
    return int(count or 0)


def state_dir_option(func: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder for the database and bundle blobs (overrides [server] state_dir).",
    )(func)


@click.group()
def server() -> None:
    """Run and administer the central server."""
    from forecasting.common.private import private_files

    private_files()


@server.command("run")
@config_option
@click.option("--host", default=None, help="Address to listen on (overrides [server] host).")
@click.option("--port", type=int, default=None, help="Port to listen on (overrides [server] port).")
@state_dir_option
@click.option(
    "--discard-damaged-wal",
    is_flag=True,
    help="If the database's write-ahead log cannot be replayed, move it into wal-recovery/ and start from "
    "the last checkpoint (loses what the log held; without this flag the server refuses to start).",
)
def run(
    config_files: tuple[Path, ...],
    host: str | None,
    port: int | None,
    state_dir: Path | None,
    discard_damaged_wal: bool,
) -> None:
    """Serve the registry, fleet and agent API (Litestar under uvicorn) until interrupted."""
    import uvicorn

    from server.app import ServerState, create_app
    from server.db import DB_FILE_NAME, Database

    config = _load(config_files, state_dir, host=host, port=port)
    config.check_transport()
    configure_logging(config.logging.level, config.logging.format)
    say_state_dir(config, config_files, state_dir)
    if discard_damaged_wal:
        Database.open(config.state_path / DB_FILE_NAME, migrate=False, discard_damaged_wal=True).close()
    if not config.server.admin_token and not admin_credentials(config):
        where = f"--state-dir {config.state_path}" if state_dir is not None else _same_as(config_files)
        raise ServerError(
            f"no admin credential for the state folder {config.state_path.absolute()}: create one with "
            f"`shelfcast server init {where}` (or set SHELFCAST_SERVER__ADMIN_TOKEN)"
        )
    state = ServerState(config)
    # A locked or unreadable database, or a write-ahead log that cannot be replayed, fails here as one
    # clear sentence (see server/db.py); a log with an incomplete tail is replayed with an error line.
    state.open()
    app = create_app(config, state)
    scheme = "https" if config.uses_tls else "http"
    url = f"{scheme}://{config.server.host}:{config.server.port}"

    watchdog_seconds = watchdog_interval_seconds()

    class Server(uvicorn.Server):
        """uvicorn with systemd's notify protocol: READY once listening, WATCHDOG from the main loop."""

        last_watchdog = 0.0

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                notify(f"READY=1\nSTATUS=serving on {url}\nMAINPID={os.getpid()}")
                log.info("server_started", url=url, state_dir=str(config.state_path), pid=os.getpid())

        async def on_tick(self, counter: int) -> bool:
            now = time.monotonic()
            if watchdog_seconds and now - self.last_watchdog >= watchdog_seconds:
                notify("WATCHDOG=1")
                self.last_watchdog = now
            return await super().on_tick(counter)

        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn re-raises SIGTERM once serving stops, so everything that must happen on the way out
            # happens here, inside the graceful shutdown.
            notify("STOPPING=1")
            await super().shutdown(sockets)
            state.close()
            log.info("server_stopped", url=url)

    uv_config = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        http="httptools",
        loop="uvloop",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=config.server.keep_alive_seconds,
        ssl_certfile=config.server.tls_cert_file or None,
        ssl_keyfile=config.server.tls_key_file or None,
    )
    try:
        Server(uv_config).run()
    finally:
        state.close()


def _same_as(config_files: tuple[Path, ...]) -> str:
    """The arguments that give ``init`` the same state folder as this ``run``."""
    return " ".join(f"--config {path}" for path in config_files) or "(with the same settings)"


@server.command("init")
@config_option
@state_dir_option
@click.option(
    "--add-admin", is_flag=True, help="The folder is initialised already: create one more admin credential."
)
def init(config_files: tuple[Path, ...], state_dir: Path | None, add_admin: bool) -> None:
    """Create the state folder and an admin credential; prints the token once (only its hash is kept).

    The token alone goes to stdout (``TOKEN=$(shelfcast server init ...)``); the state folder used and
    where its setting came from go to stderr. On a folder that has an admin already, init refuses unless
    --add-admin is given.
    """
    from server.app import ServerState
    from server.fleet.schemas import CredentialCreate

    config = _load(config_files, state_dir)
    configure_logging(config.logging.level, config.logging.format)
    say_state_dir(config, config_files, state_dir)
    if not add_admin and admin_credentials(config):
        raise ServerError(
            f"{config.state_path.absolute()} is initialised already (it has an admin credential); pass "
            "--add-admin to create another"
        )
    state = ServerState(config)
    state.open()
    try:
        from server.auth import Principal

        created = state.fleet.create_credential(
            CredentialCreate(role="admin", label="shelfcast server init"),
            Principal(role="admin", credential_id="init"),
        )
    finally:
        state.close()
    click.echo(f"admin credential {created.credential_id} (the token below is shown once):", err=True)
    click.echo(created.token)


@server.command("backup")
@config_option
@state_dir_option
@click.option(
    "--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path), help="New folder."
)
@click.option(
    "--server", "server_url", envvar="SHELFCAST_SERVER_URL", default=None, help="Back up a running server."
)
@click.option("--token", envvar="SHELFCAST_TOKEN", default=None, help="Admin token for --server.")
def backup(
    config_files: tuple[Path, ...],
    state_dir: Path | None,
    dest: Path,
    server_url: str | None,
    token: str | None,
) -> None:
    """Write a consistent backup (database + bundles) into a new folder.

    With --server (or SHELFCAST_SERVER_URL) the running server makes the snapshot over HTTP; otherwise
    the state folder of a stopped server is read directly.
    """
    from server.backup import backup_offline, extract_backup_tar

    if server_url:
        import httpx

        from server.cli_client import check_response

        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".backup-") as tmp:
            archive = Path(tmp) / "backup.tar"
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with (
                httpx.stream(
                    "GET", f"{server_url.rstrip('/')}/v1/admin/backup", headers=headers, timeout=600
                ) as resp,
            ):
                if resp.status_code != 200:
                    resp.read()
                    check_response(resp)
                with archive.open("wb") as fh:
                    for chunk in resp.iter_bytes():
                        fh.write(chunk)
            manifest = extract_backup_tar(archive, dest)
    else:
        config = _load(config_files, state_dir)
        manifest = backup_offline(config.state_path, dest)
    size = sum(f.size for f in manifest.files)
    click.echo(f"backup written to {dest}: {len(manifest.files)} files, {size} bytes")


@server.command("restore")
@config_option
@state_dir_option
@click.option("--from", "src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing state (moved aside, not deleted).")
def restore_cmd(config_files: tuple[Path, ...], state_dir: Path | None, src: Path, force: bool) -> None:
    """Restore a backup into the state folder of a stopped server (every file's sha256 is checked first)."""
    from server.backup import restore

    config = _load(config_files, state_dir)
    previous = restore(src, config.state_path, force=force)
    click.echo(f"restored {src} into {config.state_path}")
    if previous is not None:
        click.echo(f"the previous state was moved to {previous}")
