"""A loopback TCP proxy that injects network faults between a real agent and a real server.

It forwards bytes both ways and reads just enough HTTP/1.1 to know which request a connection is
carrying, so a test can make the server look down (connections refused), slow (every answer delayed),
stalled (an answer never comes), or make a bundle download break after some bytes (cut, stall, flip).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Fault:
    """What happens to the answers of the next ``times`` requests whose path starts with ``prefix``.

    ``drop``: the request reaches the server, its answer never reaches the agent (connection closed);
    after ``after_bytes`` bytes of the answer's body: ``cut`` closes the connection, ``stall`` sends
    nothing more (until the agent gives up), ``flip`` inverts that one byte and sends the rest.
    """

    prefix: str
    kind: str
    after_bytes: int = 0
    times: int = 1


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FaultProxy:
    """``127.0.0.1:<port>`` -> ``127.0.0.1:<upstream_port>``, with switchable faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay_seconds = 0.0  # added before every answer is forwarded (a slow server)
        self.stall = threading.Event()  # set: answers are held back until cleared (a hung server)
        self.faults: list[Fault] = []
        self.requests: list[SeenRequest] = []
        self.faults_done: list[str] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- switching ------------------------------------------------------------------------------------

    def up(self) -> None:
        """Listen (again, on the same port): connections reach the server."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and drop every open connection: to the agent the server is gone."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            live = list(self._sockets)
        for sock in live:
            _close(sock)

    def close(self) -> None:
        self._closed.set()
        self.stall.clear()
        self.down()

    def requests_to(self, prefix: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    # --- plumbing -------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            conn = _Connection(self, client, upstream)
            threading.Thread(target=conn.pump_requests, daemon=True).start()
            threading.Thread(target=conn.pump_answers, daemon=True).start()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and path.startswith(fault.prefix):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)


class _Connection:
    """One proxied connection: requests parsed on the way up, faults applied on the way down."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.pending: list[Fault | None] = []  # one entry per request, in order
        self.pending_lock = threading.Lock()

    def pump_requests(self) -> None:
        buffer = b""
        body_left = 0
        try:
            while True:
                data = self.client.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    if body_left:
                        taken = min(body_left, len(buffer))
                        body_left -= taken
                        buffer = buffer[taken:]
                        if body_left:
                            break
                    head_end = buffer.find(b"\r\n\r\n")
                    if head_end < 0:
                        break
                    request = _parse_head(buffer[:head_end])
                    buffer = buffer[head_end + 4 :]
                    body_left = int(request.headers.get("content-length", "0") or 0)
                    self.proxy._record(request)
                    fault = self.proxy._take_fault(request.path)
                    with self.pending_lock:
                        self.pending.append(fault)
                self.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close()

    def pump_answers(self) -> None:
        buffer = b""
        fault: Fault | None = None
        body_left: int | None = None  # None: reading an answer's head
        seen = 0
        try:
            while True:
                data = self.upstream.recv(65536)
                if not data:
                    break
                self._hold()
                buffer += data
                while buffer:
                    if body_left is None:
                        end = buffer.find(b"\r\n\r\n")
                        if end < 0:
                            break
                        head, buffer = buffer[: end + 4], buffer[end + 4 :]
                        with self.pending_lock:
                            fault = self.pending.pop(0) if self.pending else None
                        if fault is not None and fault.kind == "drop":
                            self.proxy.faults_done.append("drop")
                            return
                        self.client.sendall(head)
                        body_left, seen = _body_length(head), 0
                        if body_left < 0:  # chunked or unknown: pass the rest through untouched
                            self.client.sendall(buffer)
                            self._pass_through()
                            return
                    else:
                        piece, buffer = buffer[:body_left], buffer[body_left:]
                        body_left -= len(piece)
                        if fault is None:
                            self.client.sendall(piece)
                        elif not self._apply(fault, seen, piece):
                            return
                        seen += len(piece)
                    if body_left == 0:
                        body_left, fault = None, None
        except OSError:
            pass
        finally:
            self._close()

    def _pass_through(self) -> None:
        while data := self.upstream.recv(65536):
            self.client.sendall(data)

    def _hold(self) -> None:
        proxy = self.proxy
        if proxy.delay_seconds:
            time.sleep(proxy.delay_seconds)
        while proxy.stall.is_set() and not proxy._closed.is_set():
            time.sleep(0.05)

    def _apply(self, fault: Fault, seen: int, data: bytes) -> bool:
        """Forward ``data`` (body bytes ``seen``..) through ``fault``; False once the connection is dead."""
        if seen + len(data) <= fault.after_bytes:
            self.client.sendall(data)
            return True
        keep = max(0, fault.after_bytes - seen)
        if fault.kind == "flip":
            if seen <= fault.after_bytes:
                data = data[:keep] + bytes([data[keep] ^ 0xFF]) + data[keep + 1 :]
                self.proxy.faults_done.append("flip")
            self.client.sendall(data)
            return True
        self.client.sendall(data[:keep])
        self.proxy.faults_done.append(fault.kind)
        if fault.kind == "stall":
            while not self.proxy._closed.is_set():
                time.sleep(0.05)
                with contextlib.suppress(OSError):
                    if self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        break  # the agent gave up (its read timeout) and closed the connection
        self._close()
        return False

    def _close(self) -> None:
        _close(self.client)
        _close(self.upstream)
        self.proxy._forget(self.client, self.upstream)


def _body_length(head: bytes) -> int:
    """Bytes of body after an answer's head: Content-Length, 0 for 1xx/204/304, -1 when unknown."""
    answer = _parse_head(head[:-4])
    status = int(head.split(b" ", 2)[1])
    if status < 200 or status in (204, 304):
        return 0
    if "chunked" in answer.headers.get("transfer-encoding", ""):
        return -1
    length = answer.headers.get("content-length")
    return int(length) if length is not None else -1


def _parse_head(raw: bytes) -> SeenRequest:
    lines = raw.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.rsplit(" ", 1)[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return SeenRequest(method, path, headers)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
