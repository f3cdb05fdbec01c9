"""Network faults between a real agent and a real server, injected by a loopback proxy.

Server down, slow or hung during a poll and during a download; a download cut or stalled half-way;
a bundle damaged in transit or on the server's disk; answers to reports lost. Throughout, the agent
serves one whole verified version (old or new), and at the end every report is stored exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent.support import AgentHandle, ServerHandle, fleet, make_bundle, sales_frame, wait_until
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.support import (
    assert_one_whole_verified_version,
    has_event,
    reports_queued,
    stored_report_keys,
    watch_serving,
)

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_SECONDS = 2.0


@dataclass
class Net:
    server: ServerHandle
    agent: AgentHandle
    proxy: FaultProxy
    private: Path
    public: Path
    root: Path
    version: int = 1

    def publish_next(self) -> tuple[int, str]:
        """Publish and promote the next version (straight to the server, not through the proxy)."""
        self.version += 1
        archive, sha = make_bundle(self.root, self.private, self.version)
        self.server.publish(archive)
        self.server.promote(self.version)
        return self.version, sha

    def check(self, allowed: set[int]) -> int:
        return assert_one_whole_verified_version(self.agent, self.public, allowed)

    def serving(self) -> int:
        """The one whole verified version served now (after an xfailed step it may be older than the last)."""
        return self.check(set(range(1, self.version + 1)))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A server, a fault proxy in front of it, and an agent that reaches the server only through it."""
    root = tmp_path_factory.mktemp("net")
    with fleet(root) as (server, private, public):
        proxy = FaultProxy(server.port)
        token = server.create_store()
        archive, _ = make_bundle(root, private, 1)
        server.publish(archive)
        server.promote(1)
        agent = AgentHandle(
            root,
            proxy.url,
            public,
            enrollment_token=token,
            agent={"request_timeout_seconds": REQUEST_TIMEOUT_SECONDS, "max_backoff_seconds": 1.0},
        )
        agent.drop_sales(sales_frame())
        agent.start()
        try:
            agent.wait_serving(1, timeout=120)
            yield Net(server, agent, proxy, private, public, root)
        finally:
            agent.close()
            proxy.close()


def _retried(net: Net, version: int) -> None:
    """The update that failed half-way is tried again (a fresh poll of the assignment) and goes through."""
    wait_until(lambda: net.agent.status()["active_version"] == version, 60, what=f"v{version} retried")
    net.agent.wait_serving(version, timeout=60)


def test_server_down_during_poll_keeps_serving_and_updates_when_back(net: Net) -> None:
    """Server unreachable while polling: the old version is served whole; once back, the new one."""
    old = net.serving()
    net.proxy.down()
    new, _ = net.publish_next()
    with watch_serving(net.agent, {old}):
        wait_until(lambda: has_event(net.agent, "sync_failed", reason="ConnectError"), 15, what="poll fails")
        time.sleep(1.0)
    net.proxy.up()
    net.agent.wait_serving(new, timeout=60)
    net.check({new})


def test_slow_server_during_poll_and_download_still_updates(net: Net) -> None:
    """Every answer delayed (under the request timeout): the update completes; the API stays fast."""
    old = net.serving()
    net.proxy.delay_seconds = 0.4
    try:
        new, _ = net.publish_next()
        with watch_serving(net.agent, {old, new}):
            started = time.monotonic()
            response = net.agent.client.get("/v1/forecasts/I00001")
            assert response.status_code == 200 and time.monotonic() - started < 1.0
            net.agent.wait_serving(new, timeout=60)
    finally:
        net.proxy.delay_seconds = 0.0
    net.check({new})


def test_hung_server_during_poll_times_out_and_recovers(net: Net) -> None:
    """Answers held back: the poll times out (request timeout), the old version is served, then updates."""
    old = net.serving()
    net.proxy.stall.set()
    try:
        new, _ = net.publish_next()
        with watch_serving(net.agent, {old}):
            wait_until(
                lambda: has_event(net.agent, "sync_failed", reason="Timeout"),
                4 * REQUEST_TIMEOUT_SECONDS + 5,
                what="poll times out",
            )
    finally:
        net.proxy.stall.clear()
    net.agent.wait_serving(new, timeout=60)
    net.check({new})


@pytest.mark.parametrize("kind", ["cut", "stall"])
def test_download_broken_half_way_resumes_and_never_serves_half_a_bundle(net: Net, kind: str) -> None:
    """Connection cut (or hung) half-way through a bundle: old version served; later resumed with Range."""
    old = net.serving()
    before = len(net.proxy.requests_to("/v1/bundles/"))
    archive_size = (make_bundle(net.root / f"sizes-{kind}", net.private, 999)[0]).stat().st_size
    net.proxy.faults.append(Fault("/v1/bundles/", kind, after_bytes=archive_size // 2))
    with watch_serving(net.agent, {old, net.version + 1}):
        new, sha = net.publish_next()
        wait_until(lambda: kind in net.proxy.faults_done, 30, what=f"download {kind}")
        wait_until(
            lambda: has_event(net.agent, "download_failed", model_version=str(new)), 15, what="download fails"
        )
        assert net.agent.status()["active_version"] == old
        assert not (net.agent.state_dir / "versions" / f"demand-{new}").exists()
        _retried(net, new)
    net.check({new})
    downloads = net.proxy.requests_to("/v1/bundles/")[before:]
    assert len(downloads) >= 2
    assert any("range" in r.headers and r.headers["range"].startswith("bytes=") for r in downloads[1:]), [
        r.headers for r in downloads
    ]
    assert not (net.agent.state_dir / "downloads" / f"{sha}.part").exists()


def test_bundle_corrupted_in_transit_is_refused_and_old_version_kept(net: Net) -> None:
    """One byte flipped on the wire: sha256 mismatch, refused, nothing staged; the old version served."""
    old = net.serving()
    net.proxy.faults.append(Fault("/v1/bundles/", "flip", after_bytes=700))
    with watch_serving(net.agent, {old}):
        bad, sha = net.publish_next()
        wait_until(lambda: "flip" in net.proxy.faults_done, 30, what="a byte flipped")
        wait_until(
            lambda: has_event(net.agent, "update_rejected", bundle_sha256=sha, reason="sha256 mismatch"),
            15,
            what="refusal",
        )
        time.sleep(1.0)
        assert net.agent.status()["active_version"] == old
    assert not (net.agent.state_dir / "versions" / f"demand-{bad}").exists()
    assert not list((net.agent.state_dir / "downloads").glob(f"{sha}*"))
    net.check({old})
    new, _ = net.publish_next()
    net.agent.wait_serving(new, timeout=60)
    net.check({new})


@pytest.mark.parametrize("damage", ["truncated", "oversize", "garbled"])
def test_damaged_bundle_on_the_server_disk_is_refused(net: Net, damage: str) -> None:
    """The server's stored blob truncated, grown or garbled: the agent refuses it and keeps the old one."""
    old = net.serving()
    version = net.version + 1
    archive, sha = make_bundle(net.root, net.private, version)
    net.server.publish(archive)
    blob = net.server.state_dir / "blobs" / "sha256" / sha[:2] / sha
    data = blob.read_bytes()
    if damage == "truncated":
        blob.write_bytes(data[: len(data) // 2])
    elif damage == "oversize":
        blob.write_bytes(data + b"\0" * (4 * len(data)))
    else:
        blob.write_bytes(data[:1000] + bytes(b ^ 0x5A for b in data[1000:1100]) + data[1100:])
    net.version = version
    with watch_serving(net.agent, {old}):
        net.server.promote(version)
        wait_until(lambda: has_event(net.agent, "update_rejected", bundle_sha256=sha), 30, what="refusal")
        time.sleep(1.0)
        assert net.agent.status()["active_version"] == old
    reason = "exceeds" if damage == "oversize" else "sha256 mismatch"
    assert has_event(net.agent, "update_rejected", bundle_sha256=sha, reason=reason)
    assert not (net.agent.state_dir / "versions" / f"demand-{version}").exists()
    net.check({old})


def test_lost_answers_to_reports_are_redelivered_and_counted_once(net: Net) -> None:
    """Heartbeats reach the server but their answers are lost: redelivered, stored once (next test counts)."""
    net.proxy.faults.append(Fault("/v1/heartbeats", "drop", times=4))
    wait_until(lambda: net.proxy.faults_done.count("drop") >= 4, 30, what="four answers dropped")
    wait_until(lambda: net.agent.status()["outbox_size"] == 0, 30, what="outbox drained")
    keys = [r.headers.get("idempotency-key") for r in net.proxy.requests_to("/v1/heartbeats")]
    assert len(keys) > len(set(keys)), "a dropped answer makes the agent send the same key again"
    net.serving()


def test_every_report_is_stored_exactly_once(net: Net) -> None:
    """After all of the above, the server holds each report key the agent queued, once."""
    wait_until(lambda: net.agent.status()["outbox_size"] == 0, 30, what="outbox drained")
    queued = reports_queued(net.agent)
    sent = {r.headers.get("idempotency-key") for r in net.proxy.requests_to("/v1/") if r.method == "POST"}
    assert net.agent.proc is not None
    net.agent.proc.stop()
    net.server.stop()
    keys = stored_report_keys(net.server.state_dir / "registry.duckdb")
    assert len(keys) == len(set(keys))
    assert sent - {None} <= set(keys)
    # Every report queued up to the drain arrived; the one or two of the last second may follow.
    assert queued <= len(keys) <= queued + 3
