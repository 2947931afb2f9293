"""The lab's sample application: login, checkout, test e-mail, health, as JSON over HTTP.

One process per lab region. It reads its database connection from a Secrets Manager
secret (cached; read again whenever a connection fails, so after drorch rewrites the
secret on failover the next request follows it to the new primary), honours the write
freeze flag in SSM (cached at most ``flag_cache_seconds``; while it is ``"true"``
writes get 503), and sends mail through the lab SMTP sink. Every failure of the
database or of SMTP is a JSON error (503/502), never a traceback. Login tokens live in
this process's memory only. The database password never reaches a log or a reply.

Run: ``python -m drorch.lab.app --config FILE`` (JSON with the ``AppConfig`` fields).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import psycopg
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, SecretStr, ValidationError

from drorch.lab.schema import verify_password

log = structlog.get_logger("drorch.lab.app")
Reply = tuple[int, dict[str, Any]]


class AppConfig(BaseModel):
    """Everything one region's app needs; validated once at start."""

    region: str
    aws_region: str
    endpoint_url: str | None = None
    secret_id: str
    flag_parameter: str = "/drorch/lab/writes-frozen"
    smtp_host: str = "127.0.0.1"
    smtp_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int
    flag_cache_seconds: float = 0.5
    connect_timeout_s: int = 2
    statement_timeout_ms: int = 2000
    mail_from: str = "app@lab.drorch.test"


class DbSecret(BaseModel):
    """The database secret's JSON (``username``/``password`` as Secrets Manager stores them)."""

    host: str
    port: int
    dbname: str
    username: str
    password: SecretStr


class WritesFrozen(Exception):
    """The SSM write-freeze flag is set for this region."""


def _aws(cfg: AppConfig, service: str) -> Any:
    return boto3.client(service, region_name=cfg.aws_region, endpoint_url=cfg.endpoint_url,
                        config=Config(retries={"max_attempts": 2}, connect_timeout=2,
                                      read_timeout=3))


class SecretInvalid(Exception):
    """The secret is not a database secret; the message names fields, never values."""


class SecretCache:
    """The database secret: read once, then again only after ``invalidate``/``refresh``."""

    def __init__(self, cfg: AppConfig) -> None:
        self._client, self._secret_id = _aws(cfg, "secretsmanager"), cfg.secret_id
        self._lock = threading.Lock()
        self._value: DbSecret | None = None
        self._stale = True

    def get(self) -> DbSecret:
        with self._lock:
            if self._stale or self._value is None:
                raw = self._client.get_secret_value(SecretId=self._secret_id)["SecretString"]
                try:
                    self._value = DbSecret.model_validate_json(raw)
                except ValidationError as exc:  # its text would quote the password
                    fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
                    raise SecretInvalid(f"{self._secret_id}: bad fields {fields}") from None
                self._stale = False
                log.info("app.secret_read", host=self._value.host, port=self._value.port)
            return self._value

    def invalidate(self) -> None:
        """Mark the cached value stale: the next ``get`` reads Secrets Manager again."""
        with self._lock:
            self._stale = True

    def refresh(self) -> tuple[DbSecret, bool]:
        """Read the secret again; returns it and whether it differs from the last one read."""
        old = self._value
        self.invalidate()
        new = self.get()
        return new, old is None or _secret_key(new) != _secret_key(old)


def _secret_key(s: DbSecret) -> tuple[str, int, str, str, str]:
    return s.host, s.port, s.dbname, s.username, s.password.get_secret_value()


class FreezeFlag:
    """The SSM write-freeze flag; on a read error the last known value stands."""

    def __init__(self, cfg: AppConfig) -> None:
        self._client, self._name = _aws(cfg, "ssm"), cfg.flag_parameter
        self._max_age = cfg.flag_cache_seconds
        self._lock = threading.Lock()
        self._value, self._read_at = False, float("-inf")

    def is_set(self) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at > self._max_age:
                try:
                    value = self._client.get_parameter(Name=self._name)["Parameter"]["Value"]
                    self._value = str(value).strip().lower() == "true"
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                        self._value = False
                    else:
                        log.warning("app.flag_unreadable", error=str(exc))
                except BotoCoreError as exc:
                    log.warning("app.flag_unreadable", error=str(exc))
                self._read_at = time.monotonic()
            return self._value


class Database:
    """Opens one connection per request from the cached secret, re-reading it on failure."""

    def __init__(self, cfg: AppConfig, secrets_: SecretCache) -> None:
        self.cfg, self.secrets = cfg, secrets_

    def _connect(self, s: DbSecret) -> psycopg.Connection:
        return psycopg.connect(
            host=s.host, port=s.port, dbname=s.dbname, user=s.username,
            password=s.password.get_secret_value(), connect_timeout=self.cfg.connect_timeout_s,
            tcp_user_timeout=self.cfg.connect_timeout_s * 1000,
            options=f"-c statement_timeout={self.cfg.statement_timeout_ms}",
            application_name=f"drorch-lab-app-{self.cfg.region}",
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection; a failed connect re-reads the secret and retries once if it changed.

        A connection lost mid-request or a refused write (standby) drops the cached secret,
        so the next request reads it again: the app never sticks to a demoted server.
        """
        try:
            conn = self._connect(self.secrets.get())
        except psycopg.OperationalError:
            secret, changed = self.secrets.refresh()
            if not changed:
                raise
            log.info("app.secret_changed", host=secret.host, port=secret.port)
            conn = self._connect(secret)
        try:
            with conn:
                yield conn
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction):
            # The server went away or is a standby now: read the secret again next time.
            self.secrets.invalidate()
            raise


def db_error_reply(exc: psycopg.Error) -> Reply:
    """The JSON answer for a database failure (pure): 503 when the DB cannot take it."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return 503, {"error": "database read-only", "detail": detail}
    if isinstance(exc, psycopg.OperationalError):
        return 503, {"error": "database unavailable", "detail": detail}
    return 500, {"error": "database error", "detail": type(exc).__name__}


class LabApp:
    """The request handlers, each ``(body, headers) -> (status, json)``; no HTTP here."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.db = Database(cfg, SecretCache(cfg))
        self.flag = FreezeFlag(cfg)
        self._tokens: dict[str, int] = {}
        self._tokens_lock = threading.Lock()

    def login(self, body: dict[str, Any], headers: Any) -> Reply:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return 400, {"error": "email and password required"}
        with self.db.connection() as conn:
            row = conn.execute("SELECT id, password_hash FROM users WHERE email = %s",
                               (email,)).fetchone()
        if row is None or not verify_password(password, row[1]):
            return 401, {"error": "bad credentials"}
        token = secrets.token_urlsafe(24)
        with self._tokens_lock:
            self._tokens[token] = int(row[0])
        return 200, {"token": token, "user_id": int(row[0])}

    def checkout(self, body: dict[str, Any], headers: Any) -> Reply:
        auth = str(headers.get("Authorization", ""))
        with self._tokens_lock:
            user_id = self._tokens.get(auth.removeprefix("Bearer ").strip())
        if not auth.startswith("Bearer ") or user_id is None:
            return 401, {"error": "login required"}
        amount = body.get("amount_cents")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return 400, {"error": "amount_cents must be a positive integer"}
        if self.flag.is_set():
            raise WritesFrozen
        with self.db.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO orders (user_id, amount_cents, region) VALUES (%s, %s, %s)"
                " RETURNING id", (user_id, amount, self.cfg.region)).fetchone()
        assert row is not None
        return 200, {"order_id": int(row[0]), "region": self.cfg.region}

    def email_test(self, body: dict[str, Any], headers: Any) -> Reply:
        to = body.get("to")
        if not isinstance(to, str) or "@" not in to:
            return 400, {"error": "to must be an e-mail address"}
        message_id = make_msgid(domain="lab.drorch.test")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Message-ID"] = self.cfg.mail_from, to, message_id
        msg["Subject"] = f"drorch lab test {message_id} from {self.cfg.region}"
        msg.set_content(f"Test message from the drorch lab app in {self.cfg.region}.\n")
        try:
            with smtplib.SMTP(self.cfg.smtp_host, self.cfg.smtp_port, timeout=5) as smtp:
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("app.smtp_failed", error=str(exc))
            return 502, {"error": "smtp unavailable", "region": self.cfg.region}
        return 200, {"message_id": message_id, "region": self.cfg.region}

    def health(self, body: dict[str, Any], headers: Any) -> Reply:
        frozen = self.flag.is_set()
        try:
            with self.db.connection() as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            read_only = bool(row and row[0])
        except (psycopg.Error, ClientError, BotoCoreError, SecretInvalid) as exc:
            detail = db_error_reply(exc)[1]["detail"] if isinstance(exc, psycopg.Error) else exc
            log.warning("app.health_db_down", error=str(detail))
            return 503, {"region": self.cfg.region, "db": "down", "writes_frozen": frozen}
        return 200, {"region": self.cfg.region, "db": "ok", "db_read_only": read_only,
                     "writes_frozen": frozen}

    def routes(self) -> dict[tuple[str, str], Callable[[dict[str, Any], Any], Reply]]:
        return {("POST", "/login"): self.login, ("POST", "/checkout"): self.checkout,
                ("POST", "/email/test"): self.email_test, ("GET", "/health"): self.health}

    def dispatch(self, method: str, path: str, raw: bytes, headers: Any) -> Reply:
        """Route one request; every failure becomes a JSON reply (never raises)."""
        handler = self.routes().get((method, path.split("?", 1)[0]))
        if handler is None:
            return 404, {"error": "not found"}
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                return 400, {"error": "JSON object expected"}
            return handler(body, headers)
        except json.JSONDecodeError:
            return 400, {"error": "invalid JSON"}
        except WritesFrozen:
            return 503, {"error": "writes frozen", "region": self.cfg.region}
        except psycopg.Error as exc:
            status, reply = db_error_reply(exc)
            log.warning("app.db_error", path=path, **reply)
            return status, {**reply, "region": self.cfg.region}
        except (ClientError, BotoCoreError, SecretInvalid) as exc:
            log.warning("app.aws_error", path=path, error=str(exc))
            return 503, {"error": "configuration service unavailable", "region": self.cfg.region}
        except Exception:
            log.exception("app.unexpected_error", path=path)
            return 500, {"error": "internal error", "region": self.cfg.region}


def make_server(app: LabApp) -> ThreadingHTTPServer:
    """A threaded HTTP server bound to the config's listen address (not started)."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            status, reply = app.dispatch(self.command, self.path, raw, self.headers)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.info("app.http", client=self.client_address[0], line=format % args)

    server = ThreadingHTTPServer((app.cfg.listen_host, app.cfg.listen_port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    from drorch.lab.services import configure_process_logging

    parser = argparse.ArgumentParser(description="drorch lab sample application")
    parser.add_argument("--config", required=True, type=Path, help="JSON file of AppConfig")
    args = parser.parse_args(argv)
    configure_process_logging()
    cfg = AppConfig.model_validate_json(args.config.read_text())
    server = make_server(LabApp(cfg))

    def _stop(*_: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("app.listening", region=cfg.region, host=cfg.listen_host, port=cfg.listen_port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
