"""The emulator's network side: an HTTP proxy that opens the TLS of every ``CONNECT`` with the
emulator's certificate and hands each request inside to the emulator, whatever Azure host it
was for. A process reaches it the way any process reaches a corporate proxy: ``HTTPS_PROXY``
(and ``HTTP_PROXY`` for the instance metadata endpoint), with ``REQUESTS_CA_BUNDLE`` trusting
the emulator's CA. The SDK, its transport and its credentials run unchanged."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    host: str
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw_path: str = ""  # path and query as sent

    def json(self):
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int = 200
    body: bytes | dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, dict | list):
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
            return json.dumps(self.body).encode(), headers
        return self.body or b"", headers


App = Callable[[Request], Response]


class WireServer(ThreadingHTTPServer):
    """Listens on 127.0.0.1 (a free port); ``app`` answers every request, plain or tunnelled."""

    daemon_threads = True

    def __init__(self, app: App, tls: ssl.SSLContext):
        self.app, self.tls = app, tls
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tunnel_host: str | None = None

    def log_message(self, format, *args):  # noqa: A002 -- the emulator keeps its own request log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        if self.tunnel_host is not None:
            host, target = self.tunnel_host, self.path
        else:  # a plain-HTTP proxy request: the absolute URL
            parts = urlsplit(self.path)
            host, target = parts.hostname or "", parts.path + (f"?{parts.query}" if parts.query else "")
        path, _, query = target.partition("?")
        request = Request(self.command, host.lower(), path, dict(parse_qsl(query, keep_blank_values=True)),
                          {k.lower(): v for k, v in self.headers.items()}, self._read_body(), target)
        try:
            response = self.server.app(request)
        except Exception as exc:  # noqa: BLE001 -- a bug in the emulator answers 500, visibly
            import traceback

            traceback.print_exc()
            response = Response(500, {"error": {"code": "EmulatorError", "message": repr(exc)}})
        body, headers = response.encoded()
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.command != "HEAD" or "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _dispatch


class _ProxyHandler(_Handler):
    def do_CONNECT(self):
        host = self.path.rsplit(":", 1)[0]
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.close_connection = True
            return
        handler = type("_Tunnel", (_Handler,), {"tunnel_host": host})
        try:
            handler(tls, self.client_address, self.server)
        except (ssl.SSLError, OSError):
            pass
        self.close_connection = True
