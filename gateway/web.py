"""The daemon's HTTP endpoints (SPEC 7): /metrics, /healthz and the iFax webhook."""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("gateway.web")

MAX_WEBHOOK_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    server_version = "fax-gateway"
    protocol_version = "HTTP/1.1"
    service: Any = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            ok, _ = self.service.health()  # fax_gateway_healthy says what /healthz would (SPEC 8)
            self.service.metrics.healthy.set(1 if ok else 0)
            self._send(200, self.service.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, body = self.service.health()
            self._json(200 if ok else 503, body)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_WEBHOOK_BODY)) if length else b""
        path = self.path.split("?", 1)[0]
        prefix = "/ifax/webhook/"
        webhook = self.service.config.webhook
        if not path.startswith(prefix) or not webhook.enabled or webhook.secret is None or \
                not hmac.compare_digest(path[len(prefix):].encode(), webhook.secret.reveal().encode()):
            self._json(404, {"error": "not found"})
            return
        self._json(200, {"status": "ok"})
        self.service.webhook(body)


class WebServer:
    def __init__(self, host: str, port: int, service: Any) -> None:
        handler = type("Handler", (_Handler,), {"service": service})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
