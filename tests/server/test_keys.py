"""Trust over the admin API: `shelfcast keys trust|list|revoke|history` against a real server, audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from forecasting.bundle.signing import key_id, load_public_key
from tests.server.conftest import RunningServer, make_bundle, publish, unique


def _keys(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHELFCAST_SERVER_URL": server.url, "SHELFCAST_TOKEN": server.admin_token}
    return subprocess.run(
        [sys.executable, "-m", "shelfcast", "keys", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_trust_publish_revoke_refuse_with_the_command_named(
    fresh_server: RunningServer, other_key: Path, tmp_path: Path
) -> None:
    """An untrusted signer is refused naming `shelfcast keys trust`; trusted, it publishes; revoked, not."""
    model = unique("keys")
    public = other_key.with_name(other_key.name + ".pub")
    kid = key_id(load_public_key(public))
    with fresh_server.admin() as admin:
        refused = publish(admin, make_bundle(tmp_path, other_key, model, 1), model)
        assert refused.status_code == 422
        assert "shelfcast keys trust FILE.pub" in refused.json()["detail"]

        trusted = _json(_keys(fresh_server, "trust", str(public), "--label", "ci signer", "-o", "json"))
        assert trusted["key_id"] == kid and trusted["source"] == "state_dir"
        listed = _json(_keys(fresh_server, "list", "-o", "json"))
        assert {k["key_id"]: k["source"] for k in listed}[kid] == "state_dir"
        assert any(k["source"] == "config" for k in listed)
        assert publish(admin, make_bundle(tmp_path, other_key, model, 1), model).status_code == 201

        revoked = _json(_keys(fresh_server, "revoke", kid, "-o", "json"))
        assert revoked["revoked"] is True
        again = publish(admin, make_bundle(tmp_path, other_key, model, 2), model)
        assert again.status_code == 422 and "keys trust" in again.json()["detail"]

        config_key = next(k["key_id"] for k in listed if k["source"] == "config")
        kept = _keys(fresh_server, "revoke", config_key)
        assert kept.returncode == 1 and "[server] trusted_keys" in kept.stderr
        private = _keys(fresh_server, "trust", str(other_key))
        assert private.returncode != 0 and "private key" in private.stderr

        history = _json(_keys(fresh_server, "history", "-o", "json"))
        assert [(e["action"], e["key_id"]) for e in history][:2] == [("revoke", kid), ("trust", kid)]
        assert all(e["actor"] for e in history) and history[1]["label"] == "ci signer"

        reader = admin.post("/v1/credentials", json={"role": "reader"}).json()["token"]
    with fresh_server.client(reader) as as_reader:
        denied = as_reader.post("/v1/keys", json={"public_key": public.read_text()})
        assert denied.status_code == 403
        assert as_reader.get("/v1/keys").status_code == 200
