"""Run validation flows against the region the world is now sent to.

Each flow has two phases that share one deadline (``FlowSpec.deadline_s``):

1. **HTTP steps**, run in order with values carried between them. Any failure
   (no answer, wrong status, a missing or different JSON field) fails the
   attempt, and the whole sequence is tried again from the first step with
   exponential backoff (tenacity) until it passes or the next try would start
   after the deadline. Starting over keeps a fresh login token with its
   checkout.
2. **Checks**, run with the values of the passing attempt and polled (same
   backoff) until each has passed once: a row or an e-mail may arrive a little
   after the request that caused it, and re-running the checkout would only
   chase a new order.

Flows are independent, so ``run_flows`` runs them concurrently (one thread
each, results in the order given); pass ``concurrent=False`` to run them one by
one. A runbook mistake (``TemplateError``: a variable nobody provides;
``FlowMisconfigured``: no runner for a check kind) fails the flow at once
instead of retrying it. Requests always carry a timeout
(``HttpStep.timeout_s``, never more than what is left of the deadline).

Nothing here writes to the journal: the caller records the returned
``FlowResult``s (``to_dict()``), whose evidence is already redacted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import structlog
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from drorch.validate.checks import CheckFailed, CheckRunner
from drorch.validate.evidence import (
    CheckEvidence,
    FlowResult,
    StepEvidence,
    body_evidence,
    headers_evidence,
    is_secret_key,
    redact,
    redact_url,
    scrub_text,
    secret_values_in,
)
from drorch.validate.spec import PRESENT, FlowSpec, HttpStep
from drorch.validate.template import PathError, TemplateError, json_get, render, render_text
from drorch.validate.transport import HttpTransport, Resolver, route

log = structlog.get_logger("drorch.validate")

MIN_REQUEST_TIMEOUT_S = 0.2


class AttemptFailed(Exception):
    """One try of a flow's HTTP steps did not pass (retryable)."""


class FlowMisconfigured(Exception):
    """The flow cannot run as declared (no runner for a check kind): not retried."""


def run_flows(
    flows: Sequence[FlowSpec],
    *,
    http: HttpTransport,
    resolve: Resolver | None,
    checks: Mapping[str, CheckRunner],
    variables: Mapping[str, Any],
    concurrent: bool = True,
    backoff_max_s: float = 2.0,
) -> list[FlowResult]:
    """Run every flow until it passes or its deadline ends; never raises for a failed flow.

    ``resolve(hostname) -> address`` picks where each request connects (the
    ``Host`` header keeps the name); ``None`` leaves name resolution to the
    transport. ``checks`` maps a check ``kind`` to its runner. ``variables``
    are the runbook's values for ``{name}`` templates; those under
    secret-looking names are scrubbed from all evidence.
    """

    def one(flow: FlowSpec) -> FlowResult:
        return run_flow(flow, http=http, resolve=resolve, checks=checks, variables=variables,
                        backoff_max_s=backoff_max_s)

    if not concurrent or len(flows) <= 1:
        return [one(flow) for flow in flows]
    with ThreadPoolExecutor(max_workers=min(len(flows), 8),
                            thread_name_prefix="drorch-flow") as pool:
        return list(pool.map(one, flows))


def run_flow(
    flow: FlowSpec,
    *,
    http: HttpTransport,
    resolve: Resolver | None,
    checks: Mapping[str, CheckRunner],
    variables: Mapping[str, Any],
    backoff_max_s: float = 2.0,
) -> FlowResult:
    """One flow, both phases, bounded by its deadline (see the module docstring)."""
    run = _FlowRun(flow, http, resolve, checks, variables, backoff_max_s)
    return run.execute()


class _FlowRun:
    """The mutable state of one flow run; lives only for the duration of ``run_flow``."""

    def __init__(self, flow: FlowSpec, http: HttpTransport, resolve: Resolver | None,
                 checks: Mapping[str, CheckRunner], variables: Mapping[str, Any],
                 backoff_max_s: float) -> None:
        self.flow = flow
        self.http = http
        self.resolve = resolve
        self.check_runners = checks
        self.variables = dict(variables)
        self.backoff_max_s = backoff_max_s
        self.secrets: set[str] = secret_values_in(self.variables)
        self.attempts = 0
        self.evidence: list[StepEvidence] = []
        self.saved: dict[str, Any] = {}
        self.check_evidence = [CheckEvidence(name=c.name, kind=c.kind) for c in flow.checks]
        self.started_at = time.time()
        self.deadline = time.monotonic() + flow.deadline_s

    def _retrying(self, exc_type: type[Exception]) -> Retrying:
        remaining = max(0.0, self.deadline - time.monotonic())
        return Retrying(
            stop=stop_before_delay(remaining),
            wait=wait_exponential(multiplier=0.1, min=0.05, max=self.backoff_max_s),
            retry=retry_if_exception_type(exc_type),
            reraise=True,
        )

    def execute(self) -> FlowResult:
        error: str | None = None
        try:
            if self.flow.steps:
                self._retrying(AttemptFailed)(self._http_attempt)
            if self.flow.checks:
                self._retrying(CheckFailed)(self._checks_attempt)
        except (AttemptFailed, CheckFailed, TemplateError, FlowMisconfigured) as exc:
            error = str(exc)
        ended_at = time.time()
        ok = error is None
        result = FlowResult(
            name=self.flow.name,
            ok=ok,
            attempts=self.attempts,
            duration_s=round(ended_at - self.started_at, 3),
            started_at=self.started_at,
            ended_at=ended_at,
            steps=[self._rescrub(e) for e in self.evidence],
            checks=[replace(c, detail=self._scrub(c.detail), error=self._scrub(c.error))
                    for c in self.check_evidence],
            error=self._scrub(error),
        )
        log.info("validate.flow_done", flow=self.flow.name, ok=ok, attempts=self.attempts,
                 reason=result.error or "all steps and checks passed")
        return result

    # -- phase 1 -----------------------------------------------------------------------------

    def _http_attempt(self) -> None:
        self.attempts += 1
        self.evidence = []
        values = dict(self.variables)
        try:
            for step in self.flow.steps:
                self._send(step, values)
        except AttemptFailed as exc:
            log.info("validate.flow_attempt_failed", flow=self.flow.name,
                     attempt=self.attempts, reason=self._scrub(str(exc)))
            raise
        self.saved = {k: v for k, v in values.items() if k not in self.variables}

    def _send(self, step: HttpStep, values: dict[str, Any]) -> None:
        url = render_text(step.url, values)
        headers = {k: render_text(v, values) for k, v in step.headers.items()}
        body = render(step.json_body, values)
        expected = render(step.expect_json, values)
        self.secrets |= secret_values_in(headers) | secret_values_in(body)
        evidence = StepEvidence(name=step.name, method=step.method,
                                url=redact_url(url, self.secrets),
                                request_headers=headers_evidence(headers, self.secrets),
                                request_body=body_evidence(body, self.secrets))
        self.evidence.append(evidence)
        began = time.monotonic()
        try:
            target, host_header, server_name = route(url, self.resolve)
            evidence.connected_to = urlsplit(target).hostname if target != url else None
            if host_header and not any(k.lower() == "host" for k in headers):
                headers = {**headers, "Host": host_header}
            timeout = max(MIN_REQUEST_TIMEOUT_S,
                          min(step.timeout_s, self.deadline - time.monotonic()))
            response = self.http.request(step.method, target, headers=headers,
                                         json_body=body, timeout=timeout,
                                         server_hostname=server_name)
        except Exception as exc:  # not resolved, not sent or no answer: retryable
            evidence.error = f"{type(exc).__name__}: {exc}"
            raise AttemptFailed(f"step {step.name}: request failed ({evidence.error})") from exc
        finally:
            evidence.duration_s = round(time.monotonic() - began, 3)
        evidence.status = response.status
        document = _parse_json(response.body)
        self.secrets |= secret_values_in(document)
        evidence.response_body = body_evidence(response.body, self.secrets)
        problem = _judge(step, response.status, document, expected)
        if problem is None:
            for name, path in step.save.items():
                values[name] = json_get(document, path)
                if is_secret_key(name) or is_secret_key(path):
                    self.secrets.add(str(values[name]))
        if problem is not None:
            evidence.error = problem
            raise AttemptFailed(f"step {step.name}: {problem}")
        evidence.ok = True

    # -- phase 2 -----------------------------------------------------------------------------

    def _checks_attempt(self) -> None:
        values = {**self.variables, **self.saved}
        failures: list[str] = []
        for spec, evidence in zip(self.flow.checks, self.check_evidence, strict=True):
            if evidence.ok:
                continue
            evidence.attempts += 1
            runner = self.check_runners.get(spec.kind)
            if runner is None:
                evidence.error = f"no check runner registered for kind {spec.kind!r}"
                raise FlowMisconfigured(f"check {spec.name}: {evidence.error}")
            try:
                evidence.detail = runner.run(spec, values, since=self.started_at)
            except TemplateError:
                raise
            except Exception as exc:  # CheckFailed or a transient error: retried
                evidence.error = str(exc) if isinstance(exc, CheckFailed) else (
                    f"{type(exc).__name__}: {exc}")
                failures.append(f"check {spec.name}: {evidence.error}")
                continue
            evidence.ok = True
            evidence.error = None
        if failures:
            log.info("validate.checks_pending", flow=self.flow.name,
                     reason=self._scrub("; ".join(failures)))
            raise CheckFailed("; ".join(failures))

    # -- redaction ---------------------------------------------------------------------------

    def _scrub(self, text: str | None) -> str | None:
        return None if text is None else scrub_text(text, self.secrets)

    def _rescrub(self, e: StepEvidence) -> StepEvidence:
        """Apply secrets learned later in the flow (a token saved after this step ran)."""
        return replace(
            e,
            url=redact_url(e.url, self.secrets),
            request_headers=redact(e.request_headers, self.secrets),
            request_body=redact(e.request_body, self.secrets),
            response_body=redact(e.response_body, self.secrets),
            error=self._scrub(e.error),
        )


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _judge(step: HttpStep, status: int, document: Any, expected: Mapping[str, Any]) -> str | None:
    """Why this answer does not pass ``step``, or None when it does (pure)."""
    if status != step.expect_status:
        return f"expected status {step.expect_status}, got {status}"
    if (expected or step.save) and document is None:
        return "response is not JSON"
    for path, want in expected.items():
        try:
            got = json_get(document, path)
        except PathError as exc:
            return str(exc)
        if want != PRESENT and got != want:
            shown = "***" if is_secret_key(path) else repr(got)
            return f"{path}: expected {want!r}, got {shown}"
    for path in step.save.values():
        try:
            json_get(document, path)
        except PathError as exc:
            return f"cannot save: {exc}"
    return None
