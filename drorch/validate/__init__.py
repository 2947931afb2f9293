"""Validation flows: does the new region let users log in, check out and get e-mail?

Public API: the runbook models (``FlowSpec``, ``HttpStep``, ``Check``), the
runner (``run_flows``), the transport (``HttpxTransport``), the check registry
(``CheckRunner``, ``DbRowCheck``, ``SinkMailboxCheck``, ``lab_check_runners``)
and the results (``FlowResult``, ``StepEvidence``, ``CheckEvidence``).
"""

from drorch.validate.checks import (
    CheckFailed,
    CheckRunner,
    DbRowCheck,
    SinkMailboxCheck,
    lab_check_runners,
)
from drorch.validate.evidence import CheckEvidence, FlowResult, StepEvidence
from drorch.validate.runner import FlowMisconfigured, run_flow, run_flows
from drorch.validate.spec import Check, DbRowCheckSpec, FlowSpec, HttpStep, MailboxCheckSpec
from drorch.validate.template import TemplateError
from drorch.validate.transport import HttpResponse, HttpTransport, HttpxTransport

__all__ = [
    "Check",
    "CheckEvidence",
    "CheckFailed",
    "CheckRunner",
    "DbRowCheck",
    "DbRowCheckSpec",
    "FlowMisconfigured",
    "FlowResult",
    "FlowSpec",
    "HttpResponse",
    "HttpStep",
    "HttpTransport",
    "HttpxTransport",
    "MailboxCheckSpec",
    "SinkMailboxCheck",
    "StepEvidence",
    "TemplateError",
    "lab_check_runners",
    "run_flow",
    "run_flows",
]
