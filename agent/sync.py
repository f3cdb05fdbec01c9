"""The agent's client of the central server: enrollment, assignment polls, bundle downloads, reports.

Every request goes through ``SYNC_RETRY``: a dropped connection, a timeout or a 429/502/503/504 answer is
tried again within the call (full-jitter exponential backoff, at most 3 tries, no wait ending more than
4 s after the first try), and a 429 or 503 with ``Retry-After`` waits what the server asked plus jitter.
When the tries end on such an answer (or the wait does not fit the call), the answer goes back to the
caller and the client sends nothing more before that time (capped at 30 s): the next request waits for
it, so the outbox is delivered in order and no sooner than the server asked. A bundle download is tried
again only before its body starts; a download cut half-way is resumed with ``Range`` by a later call.

Every method raises ``SyncError`` (or ``EnrollmentError``) for anything the caller should retry later or
report; nothing here decides what to do about it (that is the lifecycle's and the runtime's job).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent.errors import EnrollmentError, ResponseTooLargeError, SyncError, UpdateRejectedError
from forecasting.common.contracts import Assignment
from forecasting.common.logs import get_logger
from forecasting.common.retry import RetryPolicy

if TYPE_CHECKING:
    import httpx

log = get_logger("agent.sync")

CHUNK_BYTES = 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
# The one retry policy of the agent's calls to the server. A call retries within 4 s at most: a timed-out
# request is not repeated at once (the runtime's own backoff spaces the next), and a longer Retry-After
# holds the next request back instead (see ``SyncClient._send``).
SYNC_RETRY = RetryPolicy(
    max_attempts=3, max_elapsed_seconds=4.0, backoff_seconds=0.5, max_backoff_seconds=2.0,
    max_retry_after_seconds=30.0,
)  # fmt: skip


class EnrollResponse(msgspec.Struct, frozen=True):
    """``POST /v1/enroll`` answer (extra fields the server adds are ignored)."""

    store_id: str
    token: str


@dataclass(frozen=True)
class AssignmentPoll:
    """Result of one assignment poll: a new assignment, ``not_modified`` (304), or nothing assigned (404)."""

    assignment: Assignment | None
    etag: str | None
    not_modified: bool = False


@dataclass(frozen=True)
class Answer:
    """A server answer read whole, within the client's size cap (bundles are streamed to disk instead)."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def _problem_detail(response: Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


class SyncClient:
    """Blocking HTTP client of the server API, one per agent process (connection pooling)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float,
        ca_file: str = "",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry: RetryPolicy = SYNC_RETRY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import ssl

        import httpx

        # One client for every request (polls, downloads, reports): all of them verify the server
        # against ``ca_file`` when given (a private CA), else against the system trust store.
        self.ca_file = ca_file
        verify = ssl.create_default_context(cafile=ca_file or None)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
            verify=verify,
            # Answers are read as sent (no decompression): a small compressed answer cannot unfold into
            # gigabytes between two checks of the size caps.
            headers={"User-Agent": "shelfcast-agent", "Accept-Encoding": "identity"},
        )
        self.token = ""
        self.max_response_bytes = max_response_bytes
        self.retry = retry
        self._sleep = sleep
        self._quiet_until = 0.0  # monotonic time before which the server asked for nothing more

    def close(self) -> None:
        self._client.close()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _send(self, attempt: Callable[[], Answer], what: str) -> Answer:
        """Run ``attempt`` under the retry policy, after any wait the server asked for; a transport error
        that outlasts the tries is a ``SyncError`` prefixed with ``what``."""
        import httpx

        held = self._quiet_until - time.monotonic()
        if held > 0:
            log.info("request_held", what=what, wait_seconds=round(held, 2))
            self._sleep(held)
        try:
            answer = self.retry.call(attempt, what=what, sleep=self._sleep)
        except httpx.HTTPError as exc:
            raise SyncError(f"{what}: {self._describe(exc)}") from exc
        asked = self.retry.asked_wait(answer)
        self._quiet_until = time.monotonic() + asked if asked else 0.0
        return answer

    def _request(self, method: str, url: str, **kwargs: Any) -> Answer:
        """Send a request and read its answer, streaming, up to ``max_response_bytes`` (decoded)."""
        cap = self.max_response_bytes

        def attempt() -> Answer:
            with self._client.stream(method, url, **kwargs) as response:
                announced = response.headers.get("content-length", "")
                if announced.isdigit() and int(announced) > cap:
                    raise ResponseTooLargeError(
                        f"{method} {url}: the answer announces {announced} bytes, over the {cap}-byte cap"
                    )
                body = bytearray()
                for chunk in _raw_chunks(response, f"{method} {url}"):
                    body += chunk
                    if len(body) > cap:
                        raise ResponseTooLargeError(f"{method} {url}: the answer exceeds the {cap}-byte cap")
                return Answer(response.status_code, response.headers, bytes(body))

        return self._send(attempt, f"{method} {url}")

    def _describe(self, exc: Exception) -> str:
        """The transport error, saying so plainly when the server's certificate is not trusted."""
        text = f"{type(exc).__name__}: {exc}"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            trusted = f"ca_file {self.ca_file}" if self.ca_file else "the system CA store (no ca_file set)"
            return f"TLS: the server's certificate is not trusted by {trusted} ({exc})"
        return text

    def enroll(self, store_id: str, enrollment_token: str) -> str:
        """Trade the one-time enrollment token for the store credential."""
        response = self._request(
            "POST", "/v1/enroll", json={"store_id": store_id, "enrollment_token": enrollment_token}
        )
        if response.status_code in (400, 401, 403, 404, 409, 410):
            raise EnrollmentError(f"enrollment refused ({response.status_code}): {_problem_detail(response)}")
        if response.status_code != 200:
            raise SyncError(f"enrollment failed ({response.status_code}): {_problem_detail(response)}")
        answer = msgspec.json.decode(response.content, type=EnrollResponse, strict=False)
        return answer.token

    def poll_assignment(self, store_id: str, etag: str | None) -> AssignmentPoll:
        """``GET /v1/stores/{id}/assignment`` with ``If-None-Match``."""
        headers = self._auth()
        if etag:
            headers["If-None-Match"] = etag
        response = self._request("GET", f"/v1/stores/{store_id}/assignment", headers=headers)
        if response.status_code == 304:
            return AssignmentPoll(None, etag, not_modified=True)
        if response.status_code == 404:
            return AssignmentPoll(None, None)
        if response.status_code in (401, 403):
            raise EnrollmentError(f"credential refused ({response.status_code}): {_problem_detail(response)}")
        if response.status_code != 200:
            raise SyncError(f"assignment poll failed ({response.status_code}): {_problem_detail(response)}")
        try:
            decoder = msgspec.json.Decoder(Assignment)
            assignment = decoder.decode(response.content)
        except msgspec.DecodeError:
            # A newer server may add fields: accept them rather than stop updating.
            try:
                assignment = msgspec.convert(response.json(), Assignment, strict=False, from_attributes=False)
            except (ValueError, msgspec.ValidationError) as exc:
                raise SyncError(f"assignment poll: unusable answer ({exc})") from None
        return AssignmentPoll(assignment, response.headers.get("ETag"))

    def download_bundle(self, sha256: str, expected_size: int, dest_dir: Path, *, max_bytes: int) -> Path:
        """Download ``/v1/bundles/{sha256}`` into ``dest_dir/<sha256>``, resuming a ``.part`` with ``Range``.

        The size cap (and the size the assignment announced) is enforced before and while reading; the
        sha256 of the whole file must match. A full disk is a ``SyncError`` (retried later; the partial
        file is removed to give the space back).
        """
        if expected_size > max_bytes:
            raise UpdateRejectedError(
                f"bundle {sha256[:12]} is {expected_size} bytes, over the {max_bytes} cap"
            )
        final = dest_dir / sha256
        if final.is_file() and _sha256_file(final) == sha256:
            return final
        part = dest_dir / f"{sha256}.part"
        have = part.stat().st_size if part.exists() else 0
        if have > max_bytes or (expected_size and have > expected_size):
            part.unlink()
        label = f"bundle {sha256[:12]}"
        # A server (or anything in between) sending more than announced is cut off at the announced size.
        limit = min(max_bytes, expected_size) if expected_size else max_bytes
        try:
            answer = self._send(
                lambda: self._download_once(sha256, part, limit, expected_size),
                f"{label} download interrupted",
            )
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise SyncError(f"{label} cannot be written to {dest_dir}: {exc.strerror or exc}") from exc
        if answer.status_code not in (200, 206):
            raise SyncError(f"{label} download failed ({answer.status_code})")
        digest = _sha256_file(part)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise UpdateRejectedError(f"bundle {sha256[:12]}: sha256 mismatch (got {digest[:12]})")
        Path(part).replace(final)
        return final

    def _download_once(self, sha256: str, part: Path, limit: int, expected_size: int) -> Answer:
        """One try at the bundle: from the ``.part`` file's end with ``Range``, into that file.

        A status the policy retries comes back before any byte is written; a transport error once the
        body has started is a ``SyncError`` (not retried here: a later call resumes from the part file).
        """
        import httpx

        label = f"bundle {sha256[:12]}"
        have = part.stat().st_size if part.exists() else 0
        headers = self._auth()
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = f'"{sha256}"'
        with self._client.stream("GET", f"/v1/bundles/{sha256}", headers=headers) as response:
            if response.status_code == 200:
                have = 0
            elif response.status_code == 416:
                # The part file is complete or garbage: start over next time.
                part.unlink(missing_ok=True)
                raise SyncError(f"{label}: range not satisfiable, restarting download")
            elif response.status_code != 206:
                return Answer(response.status_code, response.headers, b"")
            try:
                with part.open("r+b" if have else "wb") as fh:
                    fh.seek(have)
                    fh.truncate()
                    written = have
                    # As they arrive (no re-chunking): what was received before a cut is on disk to resume.
                    for chunk in _raw_chunks(response, label):
                        written += len(chunk)
                        if written > limit:
                            raise UpdateRejectedError(
                                f"{label} exceeds the {limit}-byte cap"
                                + (f" (announced size {expected_size})" if limit == expected_size else "")
                            )
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
            except httpx.HTTPError as exc:
                raise SyncError(f"{label} download interrupted: {self._describe(exc)}") from exc
            return Answer(response.status_code, response.headers, b"")

    def post_report(self, path: str, body: bytes, idempotency_key: str) -> int:
        """POST one outbox report; returns the status code (transport errors raise ``SyncError``)."""
        headers = {**self._auth(), "Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        response = self._request("POST", path, content=body, headers=headers)
        return response.status_code


def _raw_chunks(response: httpx.Response, what: str) -> Iterator[bytes]:
    """The answer's bytes as they arrive; an answer in a content encoding the agent did not ask for is
    refused (``Accept-Encoding: identity``)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise SyncError(f"{what}: the answer is {encoding}-encoded, which was not asked for")
    return response.iter_raw()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
