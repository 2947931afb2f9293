"""Each AWS call a step makes is listed for its audit entries with AWS's request id, and
never with a parameter's value."""

from __future__ import annotations

import json

import pytest
from moto import mock_aws

from drorch.adapters.aws import AwsClients
from drorch.adapters.aws_calls import recording_calls


@mock_aws
def test_calls_are_listed_with_request_ids_and_no_values() -> None:
    aws = AwsClients()
    ssm = aws("ssm", "us-east-1")
    ssm.put_parameter(Name="/x", Value="hunter2-secret", Type="String")  # not recorded
    with recording_calls() as calls:
        ssm.put_parameter(Name="/x", Value="s3cr3t-value", Type="String", Overwrite=True)
        with pytest.raises(ssm.exceptions.ParameterNotFound):
            ssm.get_parameter(Name="/missing")
    assert [(c["service"], c["region"], c["operation"]) for c in calls] == [
        ("ssm", "us-east-1", "PutParameter"), ("ssm", "us-east-1", "GetParameter")]
    assert calls[0]["status"] == 200 and calls[0]["request_id"]
    assert calls[1]["error"] == "ParameterNotFound"
    assert "s3cr3t" not in json.dumps(calls) and "/x" not in json.dumps(calls)
    ssm.get_parameter(Name="/x")  # outside the block: nothing more
    assert len(calls) == 2
