"""A tiny real HTTP shop for the flow tests: login, checkout, and a debug echo that leaks.

It runs a ``ThreadingHTTPServer`` on a loopback address in a thread. Checkout
calls ``on_order(order_id, user)`` so a test can write the order to a real
database and send the confirmation e-mail.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PASSWORD = "correct-horse-battery"


class Shop:
    def __init__(self, on_order: Callable[[int, str], None] | None = None) -> None:
        self.tokens: dict[str, str] = {}
        self.hosts_seen: list[str] = []
        self.requests = 0
        self.next_order = 1000 + secrets.randbelow(10**9)  # unique across tests sharing a DB
        self.fail_checkout = False
        self.on_order = on_order
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests += 1
            self.hosts_seen.append(headers.get("Host", ""))
        if (method, path) == ("POST", "/login"):
            if not isinstance(body, dict) or body.get("password") != PASSWORD:
                return 401, {"error": "bad credentials"}
            token = "tok-" + secrets.token_hex(12)
            self.tokens[token] = body["user"]
            return 200, {"token": token, "user": {"name": body["user"]}}
        if (method, path) == ("POST", "/checkout"):
            auth = headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            if token not in self.tokens:
                return 401, {"error": "not logged in"}
            if self.fail_checkout:
                # A badly behaved backend that echoes the credential back.
                return 500, {"error": f"payment backend down for {token}",
                             "request": {"authorization": auth}}
            with self.lock:
                self.next_order += 1
                order_id = self.next_order
            if self.on_order:
                self.on_order(order_id, self.tokens[token])
            return 201, {"order": {"id": order_id, "status": "paid", "sku": body.get("sku")}}
        return 404, {"error": "no route"}


def serve(shop: Shop, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, reply = shop.handle(self.command, self.path, body, self.headers)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server
