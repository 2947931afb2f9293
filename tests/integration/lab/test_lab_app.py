"""The lab app against real PostgreSQL, moto and the SMTP sink (app runs as a subprocess)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from drorch.lab.postgres import PgNode
from drorch.lab.schema import SEED_USERS, create_database_and_schema
from drorch.lab.smtp_sink import find_message

from .conftest import APP_PASSWORD, FLAG, REGION_AWS, aws, db_secret, needs_postgres, wait_for

pytestmark = [pytest.mark.postgres, needs_postgres]


@pytest.fixture(scope="module")
def app_a(pg_pair: tuple[PgNode, PgNode], moto_url: str,
          launch_app: Callable[..., str]) -> str:
    aws(moto_url, "secretsmanager", REGION_AWS["region-a"]).create_secret(
        Name="lab/region-a/db", SecretString=db_secret(pg_pair[0]))
    return launch_app("region-a")


@pytest.fixture(scope="module")
def app_b(pg_pair: tuple[PgNode, PgNode], moto_url: str,
          launch_app: Callable[..., str]) -> str:
    aws(moto_url, "secretsmanager", REGION_AWS["region-b"]).create_secret(
        Name="lab/region-b/db", SecretString=db_secret(pg_pair[1]))
    return launch_app("region-b")


def post(url: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url, json=body, headers=headers, timeout=15)


def login(base: str, email: str = "alice@example.com") -> str:
    resp = post(f"{base}/login", {"email": email, "password": SEED_USERS[email]})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def set_flag(moto_url: str, value: str) -> None:
    aws(moto_url, "ssm", REGION_AWS["region-a"]).put_parameter(
        Name=FLAG, Value=value, Type="String", Overwrite=True)


def test_schema_creation_is_idempotent(pg_pair: tuple[PgNode, PgNode]) -> None:
    """Running the schema setup again keeps the seed users and their password hashes."""
    primary = pg_pair[0]
    with psycopg.connect(primary.dsn("app")) as conn:
        before = conn.execute("SELECT email, password_hash FROM users ORDER BY id").fetchall()
    create_database_and_schema(primary.dsn(), APP_PASSWORD)
    with psycopg.connect(primary.dsn("app")) as conn:
        after = conn.execute("SELECT email, password_hash FROM users ORDER BY id").fetchall()
    assert after == before
    assert {row[0] for row in after} == set(SEED_USERS)


def test_login_then_checkout_writes_an_order(app_a: str, pg_pair: tuple[PgNode, PgNode]) -> None:
    """A logged-in checkout commits one order row tagged with the app's region."""
    token = login(app_a)
    resp = post(f"{app_a}/checkout", {"amount_cents": 1299}, token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["region"] == "region-a"
    with psycopg.connect(pg_pair[0].dsn("app")) as conn:
        row = conn.execute(
            "SELECT o.amount_cents, o.region, u.email FROM orders o JOIN users u"
            " ON u.id = o.user_id WHERE o.id = %s", (resp.json()["order_id"],)).fetchone()
    assert row == (1299, "region-a", "alice@example.com")


def test_bad_password_and_missing_token_are_refused(app_a: str) -> None:
    """A wrong password gives 401 and a checkout without a valid token gives 401."""
    assert post(f"{app_a}/login", {"email": "alice@example.com", "password": "x"}
                ).status_code == 401
    assert post(f"{app_a}/checkout", {"amount_cents": 5}, "not-a-token").status_code == 401
    assert post(f"{app_a}/checkout", {"amount_cents": 5}).status_code == 401


def test_email_reaches_the_sink(app_a: str, smtp_sink: tuple[int, Path]) -> None:
    """A test e-mail arrives in the sink with its message id in the subject."""
    resp = post(f"{app_a}/email/test", {"to": "ops@example.com"})
    assert resp.status_code == 200, resp.text
    message_id = resp.json()["message_id"]
    found = wait_for(lambda: find_message(smtp_sink[1], message_id=message_id),
                     what="the e-mail in the sink")
    assert message_id in found["subject"]
    assert found["to"] == ["ops@example.com"]


def test_freeze_flag_refuses_writes_but_not_logins(app_a: str, moto_url: str) -> None:
    """While the SSM flag is "true" checkout answers 503 "writes frozen"; clearing it reopens."""
    token = login(app_a)
    set_flag(moto_url, "true")
    try:
        frozen = wait_for(
            lambda: (r := post(f"{app_a}/checkout", {"amount_cents": 1}, token)).status_code
            == 503 and r, what="writes to freeze")
        assert frozen.json() == {"error": "writes frozen", "region": "region-a"}
        assert login(app_a)
        assert httpx.get(f"{app_a}/health", timeout=15).json()["writes_frozen"] is True
    finally:
        set_flag(moto_url, "false")
    wait_for(lambda: post(f"{app_a}/checkout", {"amount_cents": 1}, token).status_code == 200,
             what="writes to reopen")


def test_read_only_database_gives_json_503(app_b: str) -> None:
    """An app whose secret names a standby can log in but its checkout is a JSON 503."""
    token = login(app_b)
    resp = post(f"{app_b}/checkout", {"amount_cents": 700}, token)
    assert resp.status_code == 503
    assert resp.json()["error"] == "database read-only"
    health = httpx.get(f"{app_b}/health", timeout=15).json()
    assert health["db"] == "ok" and health["db_read_only"] is True


def test_refused_write_makes_the_app_reread_its_secret(
    app_b: str, pg_pair: tuple[PgNode, PgNode], moto_url: str
) -> None:
    """After a write refused by a standby, the next request follows a rewritten secret."""
    token = login(app_b)  # caches the secret that names the standby
    aws(moto_url, "secretsmanager", REGION_AWS["region-b"]).put_secret_value(
        SecretId="lab/region-b/db", SecretString=db_secret(pg_pair[0]))
    refused = post(f"{app_b}/checkout", {"amount_cents": 41}, token)
    assert refused.status_code == 503 and refused.json()["error"] == "database read-only"
    resp = post(f"{app_b}/checkout", {"amount_cents": 42}, token)
    assert resp.status_code == 200, resp.text
    assert resp.json()["region"] == "region-b"


def test_locked_out_role_gives_json_503(app_a: str, pg_pair: tuple[PgNode, PgNode]) -> None:
    """When the app role cannot log in, requests get a JSON 503 and health says db down."""
    token = login(app_a)
    with psycopg.connect(pg_pair[0].dsn(), autocommit=True) as conn:
        conn.execute("ALTER ROLE app NOLOGIN")
        try:
            resp = post(f"{app_a}/checkout", {"amount_cents": 3}, token)
            health = httpx.get(f"{app_a}/health", timeout=15)
        finally:
            conn.execute("ALTER ROLE app LOGIN")
    assert resp.status_code == 503
    assert resp.json()["error"] == "database unavailable"
    assert health.status_code == 503 and health.json()["db"] == "down"
    assert post(f"{app_a}/checkout", {"amount_cents": 3}, token).status_code == 200


def test_malformed_secret_gives_json_503(moto_url: str, launch_app: Callable[..., str]) -> None:
    """A secret missing fields makes requests a JSON 503 that does not echo the secret."""
    aws(moto_url, "secretsmanager", REGION_AWS["region-a"]).create_secret(
        Name="lab/broken/db", SecretString=json.dumps({"host": "127.0.0.1",
                                                       "password": APP_PASSWORD}))
    base = launch_app("region-a", secret_id="lab/broken/db")
    resp = post(f"{base}/login", {"email": "alice@example.com", "password": "wonderland"})
    assert resp.status_code == 503
    assert APP_PASSWORD not in resp.text
    health = httpx.get(f"{base}/health", timeout=15)
    assert health.status_code == 503 and health.json()["db"] == "down"


def test_logs_never_contain_the_password(app_a: str, app_b: str, workdir: Path) -> None:
    """After all the requests above, no app log holds the database password."""
    assert post(f"{app_a}/login", {"email": "alice@example.com", "password": "wonderland"})
    logs = list((workdir / "logs").glob("app-*.log"))
    assert logs
    for path in logs:
        assert APP_PASSWORD not in path.read_text()
