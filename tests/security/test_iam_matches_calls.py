"""Each function's IAM role allows exactly the AWS calls its code makes.

The calls are those recorded (``local/aws_calls.py``) while the e2e tier ran the template's functions
under the Lambda emulator and while the fault schedules ran the sync, ping and resync code; run
``make faults e2e`` first (``make test`` does). The permissions are the template's, expanded by SAM's
translator. Every recorded call must be allowed on the resource it touched, and every allowed action
on every resource must have been recorded at least once — except the permissions listed below, each
with the reason it cannot be seen in a local run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from local.aws_calls import read_calls
from local.stack import ROOT
from tests.security.iam_policies import SECRET_ARN, Grant, arn, function_roles

RECORDINGS = {tier: ROOT / ".local" / "aws-calls" / tier for tier in ("e2e", "faults")}
MANAGED = "arn:aws:iam::aws:policy/"
# Managed policies SAM attaches for what Lambda itself does on the function's behalf: write its logs
# (AWSLambdaBasicExecutionRole), send X-Ray segments (Tracing: Active; the X-Ray SDK talks to the
# daemon, not to the API) and, for the publisher, read the tables' streams (the event source mappings).
EXPECTED_MANAGED = {f"{MANAGED}service-role/AWSLambdaBasicExecutionRole", f"{MANAGED}AWSXrayWriteOnlyAccess"}
STREAM_READER = f"{MANAGED}service-role/AWSLambdaDynamoDBExecutionRole"
# Lambda, not the code, sends failed asynchronous invocations and stream batches to the failure queue.
LAMBDA_SENDS_FAILURES = ("sqs:SendMessage", "arn:aws:sqs:us-east-1:000000000000:FailureQueue")
# Allowed, and needed in the cloud, but never made by a local run.
UNOBSERVED = {
    **{
        (function, "secretsmanager:GetSecretValue", SECRET_ARN): (
            "locally the Feishu credentials come from the environment (FEISHU_APP_ID, ...); in the cloud "
            "config.load_credentials reads them once per container with Powertools' parameters.get_secret"
        )
        for function in ("CallbackFunction", "SyncFunction", "OAuthFunction")
    },
    ("CallbackFunction", "dynamodb:DeleteItem", arn("table/IdempotencyTable")): (
        "Powertools deletes the in-progress record when the dispatch raises (DynamoDB failing mid-dispatch), "
        "so Feishu's retry runs it again; the e2e tier provokes no AWS failure"
    ),
    ("CallbackFunction", "dynamodb:GetItem", arn("table/IdempotencyTable")): (
        "Powertools reads an existing record only when a conditional PutItem did not return it "
        "(ReturnValuesOnConditionCheckFailure); DynamoDB Local and the cloud always return it"
    ),
}


@pytest.fixture(scope="module")
def recorded() -> set[tuple[str, str, str]]:
    """(function, action, resource ARN) of every call the e2e tier and the fault schedules recorded."""
    calls: set[tuple[str, str, str]] = set()
    for tier, directory in RECORDINGS.items():
        found = read_calls(directory) if directory.exists() else set()
        assert found, f"no AWS calls recorded by the {tier} tier in {directory}: run `make faults e2e` first"
        calls |= {(function, action, arn(resource)) for function, action, resource in found}
    return calls


@pytest.fixture(scope="module")
def roles() -> dict[str, tuple[list[Grant], list[str]]]:
    """Each function's grants and managed policies, from the template as SAM expands it."""
    return function_roles(ROOT)


def test_every_recorded_call_is_allowed_on_the_resource_it_touched(
    recorded: set[tuple[str, str, str]], roles: dict[str, tuple[list[Grant], list[str]]]
) -> None:
    denied = sorted(
        (function, action, resource)
        for function, action, resource in recorded
        if not any(grant.allows(action, resource) for grant in roles[function][0])
    )
    assert not denied, "calls the template does not allow:\n" + "\n".join(map(str, denied))


def test_every_allowed_action_on_every_resource_was_called(
    recorded: set[tuple[str, str, str]], roles: dict[str, tuple[list[Grant], list[str]]]
) -> None:
    surplus: list[str] = []
    for function, (grants, _managed) in roles.items():
        for grant in grants:
            if (grant.action, grant.resource) == LAMBDA_SENDS_FAILURES:
                continue
            if (function, grant.action, grant.resource) in UNOBSERVED:
                continue
            used = any(who == function and grant.allows(action, resource) for who, action, resource in recorded)
            if not used:
                surplus.append(f"{function}: {grant.action} on {grant.resource} ({grant.policy})")
    assert not surplus, "allowed but never called:\n" + "\n".join(surplus)


def test_the_unobserved_permissions_are_still_granted(roles: dict[str, tuple[list[Grant], list[str]]]) -> None:
    # A stale entry in UNOBSERVED would hide nothing, but it would document a permission that is gone.
    for function, action, resource in UNOBSERVED:
        assert any(g.action == action and g.resource == resource for g in roles[function][0]), (function, action)


def test_managed_policies_are_only_those_lambda_uses_on_the_functions_behalf(
    roles: dict[str, tuple[list[Grant], list[str]]],
) -> None:
    for function, (_grants, managed) in roles.items():
        expected = EXPECTED_MANAGED | ({STREAM_READER} if function == "PublisherFunction" else set())
        assert set(managed) == expected, function


def test_only_the_sync_and_oauth_functions_may_use_the_token_key_and_only_oauth_cannot_decrypt(
    roles: dict[str, tuple[list[Grant], list[str]]],
) -> None:
    key = arn("key/TokenKey")
    kms = {
        f: sorted(g.action for g in grants if g.resource == key or g.action.startswith("kms:"))
        for f, (grants, _) in roles.items()
    }
    assert {f: actions for f, actions in kms.items() if actions} == {
        "SyncFunction": ["kms:Decrypt", "kms:GenerateDataKey"],
        "OAuthFunction": ["kms:GenerateDataKey"],
    }


def test_recordings_are_from_this_tree(recorded: set[tuple[str, str, str]]) -> None:
    # Every function of the template was exercised (a missing one means a tier did not run it).
    functions = {function for function, _action, _resource in recorded}
    assert functions == set(function_roles(ROOT)), sorted(functions)
    assert all(Path(directory).is_dir() for directory in RECORDINGS.values())
