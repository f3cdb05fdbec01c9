"""Update attacks (The Update Framework's list) against a running agent.

Attacks the real server accepts (an alias moved to an older version, a manifest that expires before it is
assigned) go through the real server. The others the server refuses at upload, so a compromised server
stands in for it: a small HTTP server on loopback in front of the real one that forwards everything
(enrollment, heartbeats, reports) except, while an attack is armed, the assignment and the bundle it names.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import polars as pl
import pytest

from tests.agent.support import (
    STORE,
    AgentHandle,
    ServerHandle,
    fleet,
    make_keys,
    sales_frame,
    wait_until,
)
from tests.conftest import free_port

pytestmark = pytest.mark.slow

MAX_BUNDLE_BYTES = 3_000_000


# -- bundles an attacker can make ------------------------------------------------------------------------


def _payload(version: int) -> bytes:
    """series.parquet of a bundle; its row order depends on the version, so versions differ."""
    series = sales_frame().select("store_id", "item_id", "category").unique()
    series = series.with_columns(model=pl.lit("SeasonalNaive")).sort("item_id", descending=version % 2 == 1)
    buffer = io.BytesIO()
    series.write_parquet(buffer)
    return buffer.getvalue()


def _manifest(version: int, *, expires_at: datetime | None = None) -> Any:
    from forecasting.bundle.format import Manifest, ModelEntry

    return Manifest(
        model_name="demand",
        version=version,
        created_at=datetime.now(UTC),
        expires_at=expires_at,
        horizon=14,
        season_length=7,
        models={"SeasonalNaive": ModelEntry(state="refit-at-edge", family="SeasonalNaive")},
        selection={"food": "SeasonalNaive", "drinks": "SeasonalNaive"},
        fallback_model="SeasonalNaive",
    )


def _signed(folder: Path, key: Path, version: int, *, expires_at: datetime | None = None) -> dict[str, bytes]:
    """The members of a validly signed bundle: manifest.json, manifest.sig, series.parquet."""
    from forecasting.bundle.format import write_bundle

    out = folder / f"v{version}-{secrets.token_hex(3)}"
    write_bundle(out, _manifest(version, expires_at=expires_at), {"series.parquet": _payload(version)}, key)
    return {name: (out / name).read_bytes() for name in ("manifest.json", "manifest.sig", "series.parquet")}


def _tar(members: dict[str, bytes | None]) -> bytes:
    """A tar archive with exactly these member names (an attacker chooses them); None: a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _signed_manifest_with(key: Path, version: int, files: list[Any]) -> dict[str, bytes]:
    """A manifest listing ``files`` as given (no check of their names), validly signed by ``key``."""
    import msgspec.structs

    from forecasting.bundle.format import encode_manifest
    from forecasting.bundle.signing import encode_signature, load_private_key, sign

    manifest = msgspec.structs.replace(_manifest(version), files=files)
    data = encode_manifest(manifest)
    return {"manifest.json": data, "manifest.sig": encode_signature(sign(data, load_private_key(key)))}


# -- the compromised server --------------------------------------------------------------------------------


@dataclass
class Attack:
    """What the compromised server answers while armed: an assignment and the bytes of its bundle."""

    version: int
    archive: bytes | None  # None: endless data
    claimed_size: int = 0

    def __post_init__(self) -> None:
        import hashlib

        self.sha256 = (
            hashlib.sha256(self.archive).hexdigest() if self.archive is not None else secrets.token_hex(32)
        )
        if not self.claimed_size:
            self.claimed_size = len(self.archive) if self.archive is not None else 100_000

    def assignment(self) -> bytes:
        body = {
            "store_id": STORE,
            "model_name": "demand",
            "version": self.version,
            "bundle_sha256": self.sha256,
            "bundle_size": self.claimed_size,
        }
        return msgspec.json.encode(body)


class CompromisedServer:
    """A loopback HTTP server forwarding to the real server unless an attack is armed."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.attack: Attack | None = None
        self.streamed = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_GET(self) -> None:
                owner.handle(self)

            def do_POST(self) -> None:
                owner.handle(self)

            def do_PUT(self) -> None:
                owner.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        attack = self.attack
        if attack is not None and req.command == "GET":
            if req.path == f"/v1/stores/{STORE}/assignment":
                etag = f'"attack-{attack.sha256[:16]}"'
                if req.headers.get("If-None-Match") == etag:
                    self._answer(req, 304, b"", {"ETag": etag})
                else:
                    self._answer(req, 200, attack.assignment(), {"ETag": etag})
                return
            if req.path == f"/v1/bundles/{attack.sha256}":
                if attack.archive is None:
                    self._endless(req)
                else:
                    self._answer(req, 200, attack.archive, {"Content-Type": "application/x-tar"})
                return
        self._forward(req)

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        skip = {"host", "content-length", "connection", "accept-encoding"}
        headers = {k: v for k, v in req.headers.items() if k.lower() not in skip}
        try:
            response = self.upstream.request(req.command, req.path, content=body, headers=headers)
        except httpx.HTTPError:
            self._answer(req, 502, b"", {})
            return
        keep = {"content-type", "etag", "content-range", "accept-ranges", "location"}
        self._answer(
            req,
            response.status_code,
            response.content,
            {k: v for k, v in response.headers.items() if k.lower() in keep},
        )

    @staticmethod
    def _answer(req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if body:
            req.wfile.write(body)

    def _endless(self, req: BaseHTTPRequestHandler) -> None:
        """Endless data: no length, bytes until the client hangs up (bounded at 20 caps for safety)."""
        req.send_response(200)
        req.send_header("Content-Type", "application/x-tar")
        req.send_header("Connection", "close")
        req.end_headers()
        chunk = secrets.token_bytes(64 * 1024)
        try:
            while self.streamed < 20 * MAX_BUNDLE_BYTES:
                req.wfile.write(chunk)
                self.streamed += len(chunk)
        except OSError:
            return

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.upstream.close()


# -- the running agent -------------------------------------------------------------------------------------


@dataclass
class Target:
    server: ServerHandle
    evil: CompromisedServer
    agent: AgentHandle
    private: Path
    root: Path

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.json.decode((self.agent.state_dir / "lifecycle.json").read_bytes())
        return data

    def refusal(self, sha256: str, timeout: float = 30) -> str:
        """Wait until the agent has refused the bundle ``sha256``; its recorded reason."""
        try:
            reason: str = wait_until(
                lambda: self.record()["rejected"].get(sha256), timeout, 0.1, what=f"refusal of {sha256[:12]}"
            )
        except AssertionError as exc:
            log = self.agent.proc.log()[-3000:] if self.agent.proc else ""
            raise AssertionError(f"{exc}\n--- agent log ---\n{log}") from None
        return reason

    def reported(self, expected: str, errors_before: int = -1, timeout: float = 30) -> dict[str, Any]:
        """Wait until the store's status on the real server names the refusal (with more errors counted than
        ``errors_before``); that status."""

        def check() -> dict[str, Any] | None:
            status = self.server.admin.get(f"/v1/stores/{STORE}").json()["status"]
            if not status or expected not in (status.get("last_error") or ""):
                return None
            return status if sum(status["errors"].values()) > errors_before else None

        try:
            found: dict[str, Any] = wait_until(check, timeout, 0.2, what=f"the server told of {expected!r}")
        except AssertionError as exc:
            store = self.server.admin.get(f"/v1/stores/{STORE}").json()
            raise AssertionError(f"{exc}\nserver has: {store.get('status')}") from None
        return found

    def still_serving_v2(self) -> None:
        status = self.agent.status()
        assert (status["active_version"], status["served_version"]) == (2, 2), status
        response = self.agent.client.get("/v1/forecasts", params={"limit": 5})
        assert response.status_code == 200 and response.headers["X-Model-Version"] == "2"
        assert sorted(p.name for p in (self.agent.state_dir / "versions").iterdir()) == ["demand-2"]
        assert list((self.agent.state_dir / "staging").glob("*")) == []
        assert list((self.agent.state_dir / "downloads").glob("*")) == []


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """An agent serving v2 (v1 was never on it), following the real server through a forwarding server."""
    root = tmp_path_factory.mktemp("attacks")
    with fleet(root) as (server, private, public):
        token = server.create_store()
        for version in (1, 2):
            server.publish(_archive_file(root, _signed(root, private, version)))
        server.promote(2)
        evil = CompromisedServer(server.url)
        agent = AgentHandle(
            root,
            evil.url,
            public,
            enrollment_token=token,
            agent={"max_bundle_bytes": MAX_BUNDLE_BYTES, "poll_interval_seconds": 0.3},
        )
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            agent.wait_serving(2, timeout=120)
            yield Target(server, evil, agent, private, root)
        finally:
            agent.close()
            evil.close()


def _archive_file(folder: Path, members: dict[str, bytes]) -> Path:
    path = folder / f"bundle-{secrets.token_hex(4)}.tar"
    path.write_bytes(_tar(members))
    return path


def _through_evil(target: Target, attack: Attack, expected: str) -> str:
    """Arm the compromised server with ``attack``; the agent refuses it for ``expected``, keeps serving v2,
    and its next heartbeat tells the real server (error count up, ``last_error`` naming the refusal)."""
    before = sum(target.server.admin.get(f"/v1/stores/{STORE}").json()["status"]["errors"].values())
    target.evil.attack = attack
    try:
        reason = target.refusal(attack.sha256)
    finally:
        target.evil.attack = None
    assert expected in reason, reason
    target.still_serving_v2()
    status = target.reported(expected, before)
    assert status["active_version"] == 2
    return reason


# -- attacks through the real server ----------------------------------------------------------------------


def test_rollback_to_an_older_signed_version_via_the_server(target: Target) -> None:
    """The champion alias moved back to v1 (validly signed, older than the trusted v2, not kept): refused."""
    v1 = target.server.admin.get("/v1/models/demand/versions/1").json()
    target.server.promote(1)
    try:
        reason = target.refusal(v1["bundle_sha256"])
    finally:
        target.server.promote(2)
    assert "older than v2" in reason and "downgrade refused" in reason
    target.still_serving_v2()
    assert target.reported("downgrade refused")["errors"].get("verify", 0) >= 1


def test_freeze_an_expired_manifest_via_the_server(target: Target) -> None:
    """A version whose signed manifest expired after publishing: the server refuses to assign it (409), and
    served anyway (a compromised server) the agent refuses it (ExpiredBundleError)."""
    expires = datetime.now(UTC) + timedelta(seconds=2)
    target.server.publish(
        _archive_file(target.root, _signed(target.root, target.private, 3, expires_at=expires))
    )
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    moved = target.server.admin.put(
        "/v1/models/demand/aliases/champion", json={"version": 3, "reason": "test"}
    )
    assert moved.status_code == 409 and "expired" in moved.text, moved.text
    stale = _signed(target.root, target.private, 23, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    reason = _through_evil(target, Attack(23, _tar(stale)), "ExpiredBundleError")
    assert "expired at" in reason


# -- attacks from a compromised server ---------------------------------------------------------------------


def test_rollback_replay_of_an_old_signed_bundle(target: Target) -> None:
    """An old, validly signed bundle (v1) served as a new version is refused by the version floor."""
    old = _signed(target.root, target.private, 1)
    reason = _through_evil(target, Attack(9, _tar(old)), "RollbackError")
    assert "lowest acceptable version 3" in reason


def test_tampered_payload(target: Target) -> None:
    """A payload changed after signing (same size) fails its signed sha256 (PayloadHashError)."""
    members = _signed(target.root, target.private, 10)
    data = bytearray(members["series.parquet"])
    data[len(data) // 2] ^= 0xFF
    members["series.parquet"] = bytes(data)
    _through_evil(target, Attack(10, _tar(members)), "PayloadHashError")


def test_mix_and_match_payload_from_another_version(target: Target) -> None:
    """v11's signed manifest with v12's payload: the payload does not match v11's manifest."""
    v11 = _signed(target.root, target.private, 11)
    v12 = _signed(target.root, target.private, 12)
    assert v11["series.parquet"] != v12["series.parquet"]
    mixed = {**v11, "series.parquet": v12["series.parquet"]}
    _through_evil(target, Attack(11, _tar(mixed)), "PayloadHashError")


def test_mix_and_match_bundle_of_another_version(target: Target) -> None:
    """A whole valid bundle of v14 served for an assignment of v13: refused, the manifest names v14."""
    reason = _through_evil(target, Attack(13, _tar(_signed(target.root, target.private, 14))), "v14")
    assert "assignment said demand v13" in reason


def test_unsigned_manifest(target: Target) -> None:
    """A bundle without manifest.sig is refused (MissingSignatureError)."""
    members = _signed(target.root, target.private, 15)
    del members["manifest.sig"]
    _through_evil(target, Attack(15, _tar(members)), "MissingSignatureError")


def test_manifest_signed_by_an_untrusted_key(target: Target) -> None:
    """A bundle signed by a key the agent does not trust is refused (UnknownKeyError)."""
    stranger, _ = make_keys(target.root / f"stranger-{secrets.token_hex(2)}")
    _through_evil(target, Attack(16, _tar(_signed(target.root, stranger, 16))), "UnknownKeyError")


def test_manifest_changed_after_signing(target: Target) -> None:
    """A trusted key's signature over a different manifest (edited afterwards) fails (BadSignatureError)."""
    members = _signed(target.root, target.private, 17)
    members["manifest.json"] = members["manifest.json"].replace(b'"version": 17', b'"version": 18')
    _through_evil(target, Attack(18, _tar(members)), "BadSignatureError")


def test_endless_data(target: Target) -> None:
    """A bundle that never ends (announced as 100 kB) is cut off at its announced size or max_bundle_bytes."""
    reason = _through_evil(target, Attack(19, None), "bundle")
    assert "exceeds the" in reason and "cap" in reason, reason
    assert target.evil.streamed < 20 * MAX_BUNDLE_BYTES, reason


def test_oversize_bundle_announced(target: Target) -> None:
    """An assignment announcing a bundle over max_bundle_bytes is refused before downloading it."""
    attack = Attack(20, _tar(_signed(target.root, target.private, 20)), claimed_size=MAX_BUNDLE_BYTES + 1)
    _through_evil(target, attack, f"over the {MAX_BUNDLE_BYTES} cap")


def test_path_traversal_in_archive_members(target: Target) -> None:
    """An archive member named ../../escape is refused while unpacking; nothing lands outside."""
    members = {**_signed(target.root, target.private, 21), "../../escape.parquet": b"x" * 100}
    _through_evil(target, Attack(21, _tar(members)), "UnsafePathError")
    state = target.agent.state_dir
    assert not list(state.parent.rglob("escape.parquet"))


def test_directory_member_climbing_out_is_refused_not_skipped(target: Target) -> None:
    """A directory member named ../../.. beside a valid signed bundle: the whole archive is refused."""
    members: dict[str, bytes | None] = {**_signed(target.root, target.private, 24), "../../..": None}
    _through_evil(target, Attack(24, _tar(members)), "UnsafePathError")


def test_file_member_colliding_with_a_directory_is_a_verify_error(target: Target) -> None:
    """A file ``fitted`` before ``fitted/AutoETS.parquet``: refused as a verify error, no handler crash."""
    members: dict[str, bytes | None] = {
        **_signed(target.root, target.private, 25),
        "fitted": b"x",
        "fitted/AutoETS.parquet": b"y",
    }
    reason = _through_evil(target, Attack(25, _tar(members)), "UnsafePathError")
    assert "fitted" in reason
    assert target.agent.proc is not None
    assert "lifecycle_handler_crashed" not in target.agent.proc.log()


def test_path_traversal_in_a_signed_manifest(target: Target) -> None:
    """A validly signed manifest listing ../outside.parquet is refused (UnsafePathError)."""
    from forecasting.bundle.format import PayloadFile

    payload = _payload(22)
    import hashlib

    files = [
        PayloadFile(path="../outside.parquet", size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    ]
    members = _signed_manifest_with(target.private, 22, files)
    _through_evil(target, Attack(22, _tar(members)), "UnsafePathError")


# -- after the attacks ---------------------------------------------------------------------------------------


def test_highest_trusted_version_survives_a_restart(target: Target) -> None:
    """After a restart the agent still trusts nothing below v3: an old signed bundle is refused again."""
    assert target.record()["highest_version"] == 2
    target.agent.proc.stop()  # type: ignore[union-attr]
    target.agent.start()
    target.agent.wait_serving(2, timeout=60)
    assert target.record()["highest_version"] == 2
    older = _signed(target.root, target.private, 1)  # a new bundle, signed, but older than the trusted v2
    reason = _through_evil(target, Attack(1, _tar(older)), "downgrade refused")
    assert "older than v2" in reason
    replay = _signed(target.root, target.private, 2)  # same version as the trusted one, another bundle
    reason = _through_evil(target, Attack(30, _tar(replay)), "RollbackError")
