"""Layered typed config: defaults, files, environment, and errors that name file and field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from agent.config import AgentConfig
from forecasting.common.errors import ConfigError
from forecasting.common.settings import env_overrides, load_config, read_toml
from server.config import ServerConfig
from shelfcast.cli import cli


def test_defaults_need_no_file() -> None:
    """With no file and no environment, the embedded defaults stand (loopback, local state)."""
    cfg = load_config(ServerConfig, [], environ={})
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.state_dir == ".shelfcast/server"


def test_file_then_env_override(tmp_path: Path) -> None:
    """A file overrides defaults; SHELFCAST_SECTION__KEY overrides the file, typed as TOML values."""
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nstore_id = "s7"\npoll_interval_seconds = 5\n[api]\nport = 9000\n')
    cfg = load_config(AgentConfig, [path], environ={"SHELFCAST_API__PORT": "9100", "OTHER": "x"})
    assert cfg.agent.store_id == "s7"
    assert cfg.agent.poll_interval_seconds == 5.0
    assert cfg.api.port == 9100


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    """A typo'd key fails with the file name and the field path."""
    path = tmp_path / "server.toml"
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.toml.*unknown field `prot`.*\$\.server"):
        load_config(ServerConfig, [path], environ={})


def test_wrong_type_names_file_and_path(tmp_path: Path) -> None:
    """A wrong type fails with what was expected and where."""
    path = tmp_path / "server.toml"
    path.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str` - at `\$\.server\.port`"):
        load_config(ServerConfig, [path], environ={})


def test_bad_env_override_is_named() -> None:
    """A bad environment value names the environment as its source."""
    with pytest.raises(ConfigError, match="environment"):
        load_config(ServerConfig, [], environ={"SHELFCAST_SERVER__PORT": "x"})


def test_env_overrides_nest() -> None:
    """Double underscores nest; values parse as TOML where they can."""
    tree = env_overrides({"SHELFCAST_A__B__C": "true", "SHELFCAST_A__D": "hello world"})
    assert tree == {"a": {"b": {"c": True}, "d": "hello world"}}


def test_config_check_cli(tmp_path: Path) -> None:
    """`shelfcast config check` exits 0 on a valid file and 1 with the field path on a typo."""
    good = tmp_path / "agent.toml"
    good.write_text('[agent]\nstore_id = "s1"\n')
    bad = tmp_path / "agent-bad.toml"
    bad.write_text("[agent]\nstore_idd = 1\n")
    runner = CliRunner()
    ok = runner.invoke(cli, ["config", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    fail = runner.invoke(cli, ["config", "check", str(bad)])
    assert fail.exit_code == 1
    assert "store_idd" in fail.output and "$.agent" in fail.output


def test_config_check_reports_every_error_with_ranges(tmp_path: Path) -> None:
    """Every bad key of a file is reported (ranges included); a key fine beside another is not."""
    bad = tmp_path / "agent.toml"
    bad.write_text(
        '[agent]\npoll_interval_seconds = -5\nserver_url = "http://10.0.0.1:8470"\ninsecure = true\n'
        'keep_versions = "two"\nbogus = 1\n[api]\nport = 70000\n[scoring]\ndaily_at = "25:00"\n'
    )
    result = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 1
    for path in ("$.agent.poll_interval_seconds", "$.agent.keep_versions", "bogus", "$.api.port", "25:00"):
        assert path in result.stderr, path
    assert "server_url" not in result.stderr
    assert "5 error(s)" in result.stderr


def test_config_check_checks_rollout_plans(tmp_path: Path) -> None:
    """`--kind rollout` validates a plan's types and every one of its rules."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'stratify_by = ["colour"]\n[[waves]]\nname = "a"\nshare = 0.5\n[[waves]]\nname = "b"\nshare = 0.2\n'
    )
    result = CliRunner().invoke(cli, ["config", "check", str(plan), "--kind", "rollout"])
    assert result.exit_code == 1
    assert "waves[1].share" in result.stderr and "colour" in result.stderr
    typed = tmp_path / "typed.toml"
    typed.write_text('[[waves]]\nname = "a"\nshare = "half"\n')
    result = CliRunner().invoke(cli, ["config", "check", str(typed)])
    assert result.exit_code == 1 and "$.waves[0].share" in result.stderr


@pytest.mark.parametrize("name", ["server.toml", "agent.toml", "train.toml", "rollout.toml"])
def test_shipped_example_configs_are_valid(name: str) -> None:
    """Every example in configs/ passes `config check`."""
    path = Path(__file__).resolve().parents[2] / "configs" / name
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output


def _field_paths(cls: type[Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for f in msgspec.structs.fields(cls):
        inner = f.type
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            paths |= _field_paths(inner, f"{prefix}{f.name}.")
        else:
            paths.add(prefix + f.name)
    return paths


def _file_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            paths |= _file_paths(value, f"{prefix}{key}.")
        else:
            paths.add(prefix + key)
    return paths


@pytest.mark.parametrize(("name", "cls"), [("server.toml", ServerConfig), ("agent.toml", AgentConfig)])
def test_example_configs_document_every_setting(name: str, cls: type[Any]) -> None:
    """configs/server.toml and configs/agent.toml list every setting (lists of tables may be commented)."""
    path = Path(__file__).resolve().parents[2] / "configs" / name
    text = path.read_text()
    missing = {p for p in _field_paths(cls) - _file_paths(read_toml(path)) if f"[[{p}]]" not in text}
    assert not missing, f"{name} does not show: {sorted(missing)}"
