"""The lab app follows its database secret to a promoted replica after its primary dies."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psycopg
import pytest

from drorch.lab.postgres import PgNode
from drorch.lab.schema import SEED_USERS

from .conftest import REGION_AWS, aws, db_secret, needs_postgres

pytestmark = [pytest.mark.postgres, needs_postgres]


def checkout(base: str, token: str, amount: int) -> httpx.Response:
    return httpx.post(f"{base}/checkout", json={"amount_cents": amount},
                      headers={"Authorization": f"Bearer {token}"}, timeout=15)


def test_app_follows_rewritten_secret_after_primary_dies(
    pg_pair: tuple[PgNode, PgNode], moto_url: str, launch_app: Callable[..., str]
) -> None:
    """Primary killed: JSON 503; replica promoted and secret rewritten: the next checkout lands
    on the new primary."""
    primary, replica = pg_pair
    secrets = aws(moto_url, "secretsmanager", REGION_AWS["region-a"])
    secrets.create_secret(Name="lab/region-a/db", SecretString=db_secret(primary))
    base = launch_app("region-a")
    resp = httpx.post(f"{base}/login", timeout=15,
                      json={"email": "bob@example.com", "password": SEED_USERS["bob@example.com"]})
    token = resp.json()["token"]
    assert checkout(base, token, 100).status_code == 200

    primary.kill()
    down = checkout(base, token, 200)
    assert down.status_code == 503
    assert down.json()["error"] == "database unavailable"
    health = httpx.get(f"{base}/health", timeout=15)
    assert health.status_code == 503 and health.json()["db"] == "down"

    with psycopg.connect(replica.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_promote(true)")
    secrets.put_secret_value(SecretId="lab/region-a/db", SecretString=db_secret(replica))

    after = checkout(base, token, 300)
    assert after.status_code == 200, after.text
    with psycopg.connect(replica.dsn("app")) as conn:
        row = conn.execute("SELECT amount_cents, region FROM orders WHERE id = %s",
                           (after.json()["order_id"],)).fetchone()
    assert row == (300, "region-a")
    assert httpx.get(f"{base}/health", timeout=15).json()["db_read_only"] is False
