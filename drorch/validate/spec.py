"""What a validation flow is, as the runbook declares it (pydantic v2, unknown keys refused).

A flow is a few HTTP steps run in order, each with an expected status and
expected JSON fields, carrying values from one step to the next (``save``: the
login token into checkout), followed by checks that look behind the API: a
row in the new primary, a message in the mailbox. Checks are a discriminated
union on ``kind``; each kind is executed by a ``CheckRunner`` the caller
registers (``drorch.validate.checks``), so production can plug an IMAP or
provider checker in under the same kind without touching the runbook format.

Templates: ``{name}`` in a URL, a header value, a JSON string value, an
expected JSON string value or a mailbox subject is replaced by a saved value or
a runbook variable (``drorch.validate.template``). ``{{`` and ``}}`` are
literal braces. SQL takes psycopg-style ``%(name)s`` parameters instead, never
text substitution.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drorch.unique import DuplicateName, require_unique
from drorch.validate.template import sql_parameter_names, template_names

PRESENT = "*"
"""An ``expect_json`` value meaning "this path exists, any value"."""

_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_PATH_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpStep(_Spec):
    """One request and what its answer must look like.

    ``expect_json`` maps a dotted path (``data.id``, ``items.0.sku``) to the
    expected value, or to ``"*"`` meaning the path must exist. ``save`` maps a
    variable name to a dotted path in the response JSON; later steps and the
    checks can use ``{name}``.
    """

    name: str = Field(min_length=1)
    method: str = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_json: dict[str, Any] = Field(default_factory=dict)
    save: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=5.0, gt=0, le=300)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        upper = value.upper()
        if upper not in _HTTP_METHODS:
            raise ValueError(f"method must be one of {', '.join(_HTTP_METHODS)}")
        return upper

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value

    @field_validator("expect_json", "save")
    @classmethod
    def _dotted_paths(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        paths = value.keys() if info.field_name == "expect_json" else value.values()
        for path in paths:
            if not isinstance(path, str) or not _PATH_RE.match(path):
                raise ValueError(f"{path!r} is not a dotted JSON path like 'data.id'")
        if info.field_name == "save":
            for name in value:
                if not _VAR_RE.match(name):
                    raise ValueError(f"{name!r} is not a valid variable name")
        return value

    def variables_used(self) -> set[str]:
        """Every ``{name}`` this step needs before it can be sent."""
        names = template_names(self.url)
        for value in self.headers.values():
            names |= template_names(value)
        names |= template_names(self.json_body)
        names |= template_names(self.expect_json)
        return names


class DbRowCheckSpec(_Spec):
    """Rows exist in a database of the runbook: ``sql`` must return ``expect_rows`` or more."""

    kind: Literal["db_row"] = "db_row"
    name: str = "db_row"
    database: str = Field(min_length=1)
    sql: str = Field(min_length=1)
    expect_rows: int = Field(default=1, ge=1)

    def variables_used(self) -> set[str]:
        return sql_parameter_names(self.sql)


class MailboxCheckSpec(_Spec):
    """A message arrived: ``store`` is the lab sink's directory (relative: under the
    runbook's state directory) or a provider's name."""

    kind: Literal["mailbox"] = "mailbox"
    name: str = "mailbox"
    store: str = Field(min_length=1)
    subject_contains: str = Field(min_length=1)
    to: str | None = None

    def variables_used(self) -> set[str]:
        return template_names(self.subject_contains) | template_names(self.to)


Check = Annotated[DbRowCheckSpec | MailboxCheckSpec, Field(discriminator="kind")]


class FlowSpec(_Spec):
    """A user journey that must pass in the new region before a failover is done.

    ``deadline_s`` bounds the whole flow, retries included; ``variables_used``
    lists the runbook variables it needs (names no earlier step saves).
    """

    name: str = Field(min_length=1)
    deadline_s: float = Field(default=30, gt=0, le=3600)
    steps: list[HttpStep] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)

    @model_validator(mode="after")
    def _well_formed(self) -> FlowSpec:
        if not self.steps and not self.checks:
            raise ValueError(f"flow {self.name!r} has neither steps nor checks")
        # Steps and checks share one namespace (their results are reported by name).
        require_unique([s.name for s in self.steps], "step name", ("steps",))
        require_unique([c.name for c in self.checks], "check name", ("checks",))
        step_index = {s.name: i for i, s in enumerate(self.steps)}
        for i, check in enumerate(self.checks):
            if check.name in step_index:
                raise DuplicateName(f"step/check name {check.name!r} is used twice",
                                    at=("checks", i, "name"),
                                    first=("steps", step_index[check.name], "name"))
        return self

    def variables_used(self) -> set[str]:
        """Names that must come from the runbook (not saved by an earlier step)."""
        saved: set[str] = set()
        needed: set[str] = set()
        for step in self.steps:
            needed |= step.variables_used() - saved
            saved |= set(step.save)
        for check in self.checks:
            needed |= check.variables_used() - saved
        return needed

    def missing_variables(self, provided: set[str] | frozenset[str]) -> set[str]:
        """The names this flow needs that neither a step nor ``provided`` supplies."""
        return self.variables_used() - set(provided)
