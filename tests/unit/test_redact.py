"""Tests for drorch.redact: secret keys, known values, credentials inside strings."""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import pytest
import structlog

from drorch.redact import MASK, Redactor, is_secret_key, mask_string, redact


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "DB_PASSWORD",
        "passwd",
        "pwd",
        "SecretString",
        "secret_string",
        "api_key",
        "ApiKey",
        "X-Api-Key",
        "private_key",
        "aws_secret_access_key",
        "session_token",
        "Credentials",
        "Authorization",
        "Cookie",
        "client_secret",
    ],
)
def test_secret_looking_keys_are_masked(key: str) -> None:
    """A value under a secret-looking key becomes *** whatever its type."""
    assert is_secret_key(key)
    assert redact({key: "v4lue"}) == {key: MASK}
    assert redact({key: {"nested": 1}}) == {key: MASK}


@pytest.mark.parametrize(
    "key,value",
    [
        ("secret_id", "app/db"),
        ("SecretId", "arn:aws:secretsmanager:us-east-1:123:secret:app/db-AbCdEf"),
        ("secret_arn", "arn:aws:secretsmanager:us-east-1:123:secret:x"),
        ("SecretName", "app/db"),
        ("VersionId", "v1"),
        ("fencing_token", 17),
        ("secret", "arn:aws:secretsmanager:us-east-1:123:secret:x"),
        ("user", "app"),
    ],
)
def test_identifiers_are_not_masked(key: str, value: object) -> None:
    """Secret ids, ARNs, names and the fencing token stay readable in logs."""
    assert redact({key: value}) == {key: value}


def test_bare_secret_key_masks_strings_but_searches_containers() -> None:
    """'secret' masks a plain string value, but a list of secret names under 'secrets' survives."""
    out = redact({"secret": "hunter22", "secrets": ["app/db", {"password": "x"}], "pw": None})
    assert out == {"secret": MASK, "secrets": ["app/db", {"password": MASK}], "pw": None}


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "host=127.0.0.1 port=5432 user=app password=s3cr3t dbname=app",
            "host=127.0.0.1 port=5432 user=app password=*** dbname=app",
        ),
        ("host=h password = 'a b\\'c' user=u", "host=h password = *** user=u"),
        ("PGPASSWORD=s3cr3t psql", "PGPASSWORD=*** psql"),
        (
            "postgresql://app:s3cr3t@127.0.0.1:5432/app?sslmode=disable",
            "postgresql://app:***@127.0.0.1:5432/app?sslmode=disable",
        ),
        ("redis://:s3cr3t@localhost:6379/0", "redis://:***@localhost:6379/0"),
        (
            "https://h/x?X-Amz-Signature=abc&X-Amz-Security-Token=zzz&a=1",
            "https://h/x?X-Amz-Signature=***&X-Amz-Security-Token=***&a=1",
        ),
        ("Authorization: Bearer abcdefghijklmnopqrstu", "Authorization: Bearer ***"),
        ('{"password": "x\\"y", "user": "u"}', '{"password": "***", "user": "u"}'),
    ],
)
def test_credentials_inside_strings_are_masked(text: str, expected: str) -> None:
    """Passwords in libpq DSNs, URLs, query strings, auth headers and JSON text are masked."""
    assert mask_string(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://example.com:8080/path?page=2",
        "postgresql://app@127.0.0.1:5432/app",
        "the fencing token 12345678 is stale",
        "replica replayed 0/3000060; promote",
    ],
)
def test_ordinary_strings_are_left_alone(text: str) -> None:
    """Strings with no credential in them come back unchanged."""
    assert mask_string(text) == text


def test_known_values_are_masked_in_every_form() -> None:
    """A known secret is masked raw, URL-encoded, JSON-escaped, in bytes and in exceptions."""
    secret = 'p@ss/"w0rd'
    redactor = Redactor([secret])
    out = redactor.redact(
        {
            "msg": f"login with {secret} failed",
            "url_form": f"x={quote(secret, safe='')}",
            "json_form": json.dumps({"v": secret}),
            "raw": secret.encode(),
            "error": ValueError(f"bad {secret}"),
            "items": (1, secret, [secret]),
        }
    )
    assert secret not in repr(out) and quote(secret, safe="") not in repr(out)
    assert out["msg"] == "login with *** failed"
    assert out["items"] == (1, MASK, [MASK])
    assert out["error"] == "bad ***"


def test_redact_does_not_mutate_its_input() -> None:
    """redact returns a copy; the caller's structure still holds the original values."""
    original = {"password": "x", "inner": {"token": "t"}, "list": ["a"]}
    snapshot = json.loads(json.dumps(original))
    out = redact(original, ["a"])
    assert original == snapshot
    assert out == {"password": MASK, "inner": {"token": MASK}, "list": [MASK]}


def test_non_string_objects_without_secrets_pass_through() -> None:
    """Numbers, booleans, None and harmless objects are returned as they are."""
    marker = object()
    assert redact([1, 2.5, True, None, marker]) == [1, 2.5, True, None, marker]


def test_redactor_grows_and_ignores_empty_values() -> None:
    """Values added later are masked from then on; empty values and None are ignored."""
    redactor = Redactor()
    redactor.add("")
    redactor.add(None)
    assert len(redactor) == 0
    assert redactor.redact("rotated-42") == "rotated-42"
    redactor.add("rotated-42")
    redactor.add(b"bytes-secret")
    assert "rotated-42" in redactor and len(redactor) == 2
    assert redactor.redact("now rotated-42 and bytes-secret") == "now *** and ***"


def test_redactor_is_safe_to_grow_from_many_threads() -> None:
    """Concurrent add() calls lose no value."""
    redactor = Redactor()
    threads = [
        threading.Thread(target=lambda k=k: [redactor.add(f"v{k}-{i}") for i in range(50)])
        for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(redactor) == 400


def test_redactor_as_structlog_processor_redacts_rendered_events() -> None:
    """In a structlog chain the redactor masks event text, fields and nested secrets."""
    redactor = Redactor(["hunter22"])
    log = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[redactor, structlog.processors.JSONRenderer(sort_keys=True)],
        wrapper_class=structlog.BoundLogger,
    )
    line = log.bind(password="hunter22").info(
        "connecting with hunter22",
        dsn="host=x password=other-pass",
        secret_id="app/db",
        cfg={"api_key": "k-1"},
    )
    assert json.loads(line) == {
        "cfg": {"api_key": MASK},
        "dsn": "host=x password=***",
        "event": "connecting with ***",
        "password": MASK,
        "secret_id": "app/db",
    }
