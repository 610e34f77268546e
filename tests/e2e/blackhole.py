"""A "black hole" API node for edge tests: it forwards each request to a real node (which takes and counts it),
then never answers nginx, which gives up after proxy_read_timeout and re-sends the request elsewhere.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import orjson

from faultline.services import free_port


def _read_message(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    """One HTTP/1.1 message with a Content-Length body: (lower-cased headers, the raw bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return headers, head + b"\r\n\r\n" + body


@dataclass
class BlackHole:
    """Forwards each request to `node` and reads its answer, then never answers nginx (for up to
    `hold` seconds, or until nginx closes the connection)."""

    node: int
    hold: float = 10.0
    port: int = field(default_factory=free_port)
    seen: list[tuple[dict[str, str], dict[str, object]]] = field(default_factory=list)  # request headers, node's body
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> BlackHole:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            headers, raw = _read_message(conn)
            with socket.create_connection(("127.0.0.1", self.node)) as upstream:
                upstream.sendall(raw)
                _, answer = _read_message(upstream)
            self.seen.append((headers, orjson.loads(answer.partition(b"\r\n\r\n")[2])))
            conn.settimeout(self.hold)
            try:
                conn.recv(1)  # until nginx gives up and closes
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
