"""A PostgreSQL wire proxy that loses the answers to chosen writes.

``turnlog serve`` connects to the proxy's unix socket instead of the database; the proxy
passes bytes both ways unchanged, except that after a client message carrying ``marker``
(the parameters of the write under test) it lets the server's whole answer through but for
its final ReadyForQuery, and drops the connection there. The server has by then finished
the statement (an autocommit statement has committed); the client cannot tell whether it
did. That is the lost acknowledgement a crash-safe writer must survive.

Over a unix socket libpq sends no SSLRequest, so after the untyped startup packet every
message in both directions is framed as type byte + int32 length.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit


class LostAnswers:
    def __init__(self, upstream_url: str, directory: Path, *, marker: bytes, times: int) -> None:
        self.upstream_url = upstream_url
        self.directory = directory
        self.marker = marker
        self.remaining = times
        self.fired = 0
        self.port = 5432
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    # -- addresses -----------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """A URL of database ``dbname`` through the proxy."""
        parts = urlsplit(self.upstream_url)
        query = f"host={self.directory}&port={self.port}"
        return urlunsplit(
            ("postgresql", f"{parts.username or 'postgres'}@", f"/{dbname}", query, "")
        )

    def _upstream(self) -> socket.socket:
        parts = urlsplit(self.upstream_url)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host = params.get("host") or parts.hostname or "localhost"
        port = int(params.get("port") or parts.port or 5432)
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            sock = socket.create_connection((host, port))
        return sock

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LostAnswers:
        self.directory.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.directory / f".s.PGSQL.{self.port}"))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True, name="pgproxy").start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = self._upstream()
            with self._lock:
                self._sockets += [client, server]
            armed = threading.Event()
            threading.Thread(
                target=self._client_to_server, args=(client, server, armed), daemon=True
            ).start()
            threading.Thread(
                target=self._server_to_client, args=(server, client, armed), daemon=True
            ).start()

    # -- pumps ---------------------------------------------------------------------------

    def _client_to_server(
        self, client: socket.socket, server: socket.socket, armed: threading.Event
    ) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                # The marker may straddle two reads: look at the end of the previous one too.
                if self.marker in tail + data and not armed.is_set():
                    with self._lock:
                        if self.remaining > 0:
                            self.remaining -= 1
                            armed.set()
                tail = data[-len(self.marker) :]
                server.sendall(data)
        _close(client, server)

    def _server_to_client(
        self, server: socket.socket, client: socket.socket, armed: threading.Event
    ) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                buffer += data
                out, cut = _frames_until_ready(buffer, armed.is_set())
                client.sendall(buffer[:out])
                buffer = buffer[out:]
                if cut:
                    with self._lock:
                        self.fired += 1
                    break
        _close(client, server)


def _frames_until_ready(buffer: bytes, armed: bool) -> tuple[int, bool]:
    """How many bytes of whole messages to pass on, and whether to cut the connection at
    the next one (a ReadyForQuery while armed)."""
    at = 0
    while len(buffer) - at >= 5:
        length = int.from_bytes(buffer[at + 1 : at + 5], "big")
        if len(buffer) - at < 1 + length:
            break
        if armed and buffer[at : at + 1] == b"Z":
            return at, True
        at += 1 + length
    return at, False


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
