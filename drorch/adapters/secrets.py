"""AWS Secrets Manager: read and rewrite a database connection secret.

The secret's value holds a password: it is returned to callers that need to
connect, and never put in a log, journal or audit entry by this module.
``put_value`` creates a new version; AWS (and moto) move the old one to
AWSPREVIOUS. It is not idempotent by itself: callers compare first.
"""

from __future__ import annotations

import json
from typing import Any

from drorch.logs import REDACTOR


def get_value(client: Any, secret_id: str, stage: str = "AWSCURRENT") -> dict[str, Any]:
    return get_with_version(client, secret_id, stage)[0]


def get_with_version(client: Any, secret_id: str,
                     stage: str = "AWSCURRENT") -> tuple[dict[str, Any], str]:
    """The value and its version id from one call (a failover rewrites many secrets at
    once; every call saved is time the lab's single AWS endpoint does not queue)."""
    resp = client.get_secret_value(SecretId=secret_id, VersionStage=stage)
    value = json.loads(resp["SecretString"])
    if not isinstance(value, dict):
        raise ValueError(f"secret {secret_id}: value is not a JSON object")
    # From now on this process masks the password wherever it might be written.
    REDACTOR.add(value.get("password"))
    return value, str(resp["VersionId"])


def put_value(client: Any, secret_id: str, value: dict[str, Any], token: str) -> str:
    """New version with ``value``; ``token`` makes a retried call the same version."""
    resp = client.put_secret_value(SecretId=secret_id, SecretString=json.dumps(value),
                                   ClientRequestToken=token)
    return str(resp["VersionId"])


def version_count(client: Any, secret_id: str) -> int:
    versions = client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    return len(versions["Versions"])


def dsn_from_secret(value: dict[str, Any], connect_timeout: int = 3) -> str:
    parts = {
        "host": value["host"], "port": value.get("port", 5432),
        "dbname": value.get("dbname", "postgres"), "user": value.get("username", "postgres"),
        "connect_timeout": connect_timeout,
    }
    if value.get("password"):
        parts["password"] = value["password"]
    return " ".join(f"{k}={v}" for k, v in parts.items())
