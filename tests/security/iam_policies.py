"""The functions' IAM permissions as deployed: ``template.yaml`` expanded by SAM's own translator
(policy templates become IAM statements), resources resolved to canonical local ARNs.

A resource named by logical id resolves to that id (a table ``X`` is ``table/X``, a function
``function:X``, a key ``key/X``, a bus ``event-bus/X``), so recorded calls (``local.aws_calls``, which
names resources by logical id too) can be matched against statements with IAM's wildcards.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samtranslator.translator.transform import transform  # type: ignore[import-untyped]

from local.template import parse

PARTITION, REGION, ACCOUNT = "aws", "us-east-1", "000000000000"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:feishu-calendar-mirror"
# The deployed configuration: a Feishu secret is required (the template's rule), no alarm topic.
PARAMETERS = {"FeishuSecretArn": SECRET_ARN, "AlarmTopicArn": ""}


@dataclass(frozen=True, slots=True)
class Grant:
    """One allowed (action pattern, resource pattern) of a role, and the policy it came from."""

    function: str
    action: str
    resource: str
    policy: str

    def allows(self, action: str, arn: str) -> bool:
        """IAM's matching: ``*`` and ``?`` wildcards, actions case-insensitively."""
        return fnmatch.fnmatchcase(action.lower(), self.action.lower()) and fnmatch.fnmatchcase(arn, self.resource)


def arn(resource: str) -> str:
    """A recorded resource (``table/UsersTable``, ``function/SyncFunction``, ...) as its local ARN."""
    kind, _, name = resource.partition("/")
    return {
        "table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
        "function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}",
        "key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{name}",
        "event-bus": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{name}",
        "secret": name,
    }.get(kind, resource)


class _Resolver:
    def __init__(self, template: Mapping[str, Any]) -> None:
        self.resources: Mapping[str, Any] = template["Resources"]
        self.parameters = {
            name: PARAMETERS.get(name, str(spec.get("Default", "")))
            for name, spec in (template.get("Parameters") or {}).items()
        }
        self.conditions: Mapping[str, Any] = template.get("Conditions") or {}

    def ref(self, name: str) -> str:
        pseudo = {"AWS::Partition": PARTITION, "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        assert name in self.resources, f"unknown Ref {name}"
        return name  # a table's, function's, bus's name or a key's id: its logical id locally

    def get_att(self, lid: str, attribute: str) -> str:
        kind = self.resources[lid]["Type"]
        arns = {
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{lid}",
            "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{lid}",
            "AWS::KMS::Key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{lid}",
            "AWS::Events::EventBus": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{lid}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{lid}",
        }
        if attribute == "StreamArn":
            return f"{arns[kind]}/stream/*"
        assert attribute == "Arn", f"unsupported GetAtt {lid}.{attribute}"
        return arns[kind]

    def value(self, node: Any) -> Any:  # noqa: PLR0911 - one branch per intrinsic
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not None]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: self.value(v) for k, v in node.items()}
        ((key, arg),) = node.items()
        if key == "Ref":
            return None if arg == "AWS::NoValue" else self.ref(arg)
        if key == "Fn::GetAtt":
            lid, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.get_att(lid, attribute)
        if key == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            local = {k: self.value(v) for k, v in names.items()}
            return re.sub(r"\$\{([\w:.]+)\}", lambda m: str(local.get(m.group(1)) or self._sub(m.group(1))), text)
        if key == "Fn::If":
            return self.value(arg[1] if self.condition(arg[0]) else arg[2])
        if key == "Fn::Join":
            return str(arg[0]).join(str(self.value(v)) for v in arg[1])
        if key == "Fn::Not":
            return not self.value(arg[0])
        if key == "Fn::Equals":
            return self.value(arg[0]) == self.value(arg[1])
        if key == "Condition":
            return self.condition(arg)
        return {key: self.value(arg)}

    def _sub(self, name: str) -> str:
        if "." in name:
            return self.get_att(*name.split(".", 1))
        return self.ref(name)

    def condition(self, name: str) -> bool:
        return bool(self.value(self.conditions[name]))


def expanded_template(root: Path) -> dict[str, Any]:
    """``template.yaml`` after SAM's transform (as CloudFormation receives it, less the code upload)."""
    template = parse(root)
    for resource in template["Resources"].values():  # the translator wants uploaded code, not local paths
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/key"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return dict(transform(copy.deepcopy(template), PARAMETERS, NoManagedPolicies()))


def function_roles(root: Path) -> dict[str, tuple[list[Grant], list[str]]]:
    """Per function (logical id): its role's inline grants and managed policy ARNs."""
    template = expanded_template(root)
    resolver = _Resolver(template)
    functions = {lid for lid, res in template["Resources"].items() if res["Type"] == "AWS::Lambda::Function"}
    roles: dict[str, tuple[list[Grant], list[str]]] = {}
    for function in sorted(functions):
        role = resolver.value(template["Resources"][f"{function}Role"]["Properties"])
        grants: list[Grant] = []
        for policy in role.get("Policies") or []:
            for statement in policy["PolicyDocument"]["Statement"]:
                assert statement["Effect"] == "Allow"
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = (
                    statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                )
                grants += [Grant(function, a, r, policy["PolicyName"]) for a in actions for r in resources]
        roles[function] = (grants, list(role.get("ManagedPolicyArns") or []))
    return roles
