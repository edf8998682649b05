"""Reads ``template.yaml`` the way the local stack needs it: functions, routes, schedules, tables, keys.

``parse`` is the one reader of the template for every tool of the project (the local stack, the tests,
the benchmarks): CloudFormation's short tags in their long form, and ``Fn::ForEach`` loops expanded as
the ``AWS::LanguageExtensions`` transform expands them before SAM's. ``load`` then resolves the intrinsics the template uses in
environment variables (``Ref``, ``Fn::If`` with conditions, ``Fn::Sub``, ``Fn::GetAtt``) against
local resource names, so nothing about the app is hard-coded in ``local/``. A KMS key's ``Ref`` / ``!GetAtt .Arn`` resolve to the
key the local stand-in created for it (``key_arns``), or to a placeholder ARN before it exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REGION = "us-east-1"
ACCOUNT = "000000000000"
NO_VALUE = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader that turns ``!Ref x`` into ``{"Ref": x}`` and ``!Sub`` into ``{"Fn::Sub": ...}``."""


def _tag(name: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "Fn::GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {name: value}

    return construct


_Loader.add_constructor("!Ref", _tag("Ref"))
_Loader.add_constructor("!Condition", _tag("Condition"))
for _fn in ("GetAtt", "Sub", "If", "Not", "Equals", "And", "Or", "Select", "Join", "Split", "FindInMap", "Base64"):
    _Loader.add_constructor(f"!{_fn}", _tag(f"Fn::{_fn}"))


FOR_EACH = "Fn::ForEach::"
# The sections where CloudFormation allows Fn::ForEach (AWS::LanguageExtensions).
FOR_EACH_SECTIONS = ("Conditions", "Resources", "Outputs")


def _substitute(node: Any, identifier: str, value: str) -> Any:
    """``node`` with ``${identifier}`` and ``&{identifier}`` replaced by ``value`` in every key and string
    (``&{}`` drops the value's non-alphanumeric characters), and ``{"Ref": identifier}`` by ``value``."""
    if isinstance(node, str):
        return node.replace(f"${{{identifier}}}", value).replace(
            f"&{{{identifier}}}", re.sub(r"[^A-Za-z0-9]", "", value)
        )
    if isinstance(node, list):
        return [_substitute(item, identifier, value) for item in node]
    if isinstance(node, dict):
        if node == {"Ref": identifier}:
            return value
        return {_substitute(k, identifier, value): _substitute(v, identifier, value) for k, v in node.items()}
    return node


def _expand_section(section: Mapping[str, Any]) -> dict[str, Any]:
    """A section's entries with each ``Fn::ForEach::Name: [identifier, collection, fragment]`` replaced by
    the fragment's entries once per item of the collection (loops nest)."""
    out: dict[str, Any] = {}
    for key, entry in section.items():
        if not key.startswith(FOR_EACH):
            out[key] = entry
            continue
        identifier, collection, fragment = entry
        if not isinstance(collection, list):
            raise ValueError(f"{key}: only a literal list is supported as the collection locally")
        for item in collection:
            for name, value in _expand_section(_substitute(fragment, identifier, str(item))).items():
                if name in out or name in section:
                    raise ValueError(f"{key} makes {name}, which exists already")
                out[name] = value
    return out


def expand_for_each(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template as ``AWS::LanguageExtensions`` leaves it for SAM: every ``Fn::ForEach`` loop expanded."""
    return {
        name: _expand_section(body) if name in FOR_EACH_SECTIONS and isinstance(body, Mapping) else body
        for name, body in template.items()
    }


def parse(root: Path, template: str = "template.yaml", *, expand: bool = True) -> dict[str, Any]:
    """The template under ``root``: short tags in their long form (``!Ref x`` is ``{"Ref": "x"}``), and
    ``Fn::ForEach`` loops expanded (unless ``expand`` is false)."""
    # _Loader is a SafeLoader subclass (it only adds CloudFormation's short tags), so this load is safe.
    raw: dict[str, Any] = yaml.load((root / template).read_text(), Loader=_Loader)  # noqa: S506  # nosec B506
    return expand_for_each(raw) if expand else raw


@dataclass(frozen=True)
class Route:
    """One HTTP API route: method (or ANY) and path with ``{param}`` placeholders."""

    method: str
    path: str
    function: str

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Path parameters if this route serves the request, else None."""
        if self.method not in ("ANY", method):
            return None
        pattern = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.+)", re.escape(self.path))
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
        found = re.fullmatch(pattern, path)
        return found.groupdict() if found else None


@dataclass(frozen=True)
class Function:
    """A function of the template, with everything needed to run it locally."""

    logical_id: str
    name: str
    code_uri: Path
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    layers: tuple[str, ...]
    reserved_concurrency: int | None
    max_retry_attempts: int


@dataclass(frozen=True)
class StreamSource:
    """A ``DynamoDB`` event source: a table's stream feeding a function (an event source mapping)."""

    function: str
    table: str
    starting_position: str = "TRIM_HORIZON"
    batch_size: int = 100
    bisect_on_error: bool = False
    max_retry_attempts: int = -1  # -1: until the records expire, as Lambda's default
    report_batch_item_failures: bool = False
    on_failure: str | None = None


@dataclass(frozen=True)
class Schedule:
    """A scheduled trigger (``rate(...)`` expressions only)."""

    function: str
    seconds: int


@dataclass
class Template:
    """The parts of ``template.yaml`` the local stack uses."""

    root: Path
    functions: dict[str, Function] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    table_names: dict[str, str] = field(default_factory=dict)
    layers: dict[str, Path] = field(default_factory=dict)
    stream_sources: list[StreamSource] = field(default_factory=list)
    event_buses: dict[str, str] = field(default_factory=dict)  # local name by logical id
    kms_keys: dict[str, str] = field(default_factory=dict)  # description by logical id

    def function_by_name(self, name: str) -> Function | None:
        """Look a function up by its local name, logical id or ARN."""
        name = name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        for function in self.functions.values():
            if name in (function.name, function.logical_id):
                return function
        return None


def rate_seconds(expression: str) -> int:
    """``rate(15 minutes)`` → 900."""
    found = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days|second|seconds)\)", expression.strip())
    if not found:
        raise ValueError(f"unsupported schedule expression {expression!r}")
    unit = found.group(2).rstrip("s")
    return int(found.group(1)) * {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[unit]


class _Resolver:
    def __init__(
        self,
        raw: Mapping[str, Any],
        names: Mapping[str, str],
        parameters: Mapping[str, str],
        key_arns: Mapping[str, str] | None = None,
    ) -> None:
        self.raw = raw
        self.names = names
        resources = raw.get("Resources") or {}
        self.key_arns = {
            lid: (key_arns or {}).get(lid) or f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{lid}"
            for lid, res in resources.items()
            if res.get("Type") == "AWS::KMS::Key"
        }
        self.parameters = {
            name: str(parameters.get(name, spec.get("Default", "")))
            for name, spec in (raw.get("Parameters") or {}).items()
        }
        self.conditions = raw.get("Conditions") or {}

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": "local",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.key_arns:
            return self.key_arns[name].rsplit("/", 1)[-1]  # a key's Ref is its key id
        return self.names.get(name, name)

    def condition(self, name: str) -> bool:
        return bool(self.value(self.conditions[name]))

    def value(self, node: Any) -> Any:  # noqa: PLR0911 - one branch per intrinsic
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: v for k, v in ((k, self.value(n)) for k, n in node.items()) if v is not NO_VALUE}
        ((key, arg),) = node.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            return self.value(arg[1] if self.condition(arg[0]) else arg[2])
        if key == "Fn::Not":
            return not self.value(arg[0])
        if key == "Fn::Equals":
            return self.value(arg[0]) == self.value(arg[1])
        if key == "Fn::GetAtt" and arg[0] in self.key_arns and arg[1] == "Arn":
            return self.key_arns[arg[0]]
        if key == "Fn::GetAtt":
            return f"arn:aws:local:{REGION}:{ACCOUNT}:{self.names.get(arg[0], arg[0])}/{arg[1]}"
        if key == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return re.sub(r"\$\{([\w:.]+)\}", lambda m: str(self.ref(m.group(1).split(".")[0])), text)
        if key == "Fn::Join":
            return str(arg[0]).join(str(self.value(v)) for v in arg[1])
        return {key: self.value(arg)}


def load(
    root: Path,
    *,
    prefix: str = "fcm-",
    parameters: Mapping[str, str] | None = None,
    template: str = "template.yaml",
    key_arns: Mapping[str, str] | None = None,
) -> Template:
    """Read the template under ``root``; local resource names are ``prefix + logical id``, a KMS key's
    ARN the one in ``key_arns`` (by logical id)."""
    raw = parse(root, template)
    resources: dict[str, Any] = raw.get("Resources") or {}
    names = {
        lid: prefix + lid
        for lid, res in resources.items()
        if res["Type"]
        in ("AWS::Serverless::Function", "AWS::DynamoDB::Table", "AWS::Lambda::Function", "AWS::Events::EventBus")
    }
    resolver = _Resolver(raw, names, parameters or {}, key_arns)
    out = Template(root=root)
    globals_ = (raw.get("Globals") or {}).get("Function") or {}
    invoke_configs = {
        resolver.value(res["Properties"]["FunctionName"]): res["Properties"].get("MaximumRetryAttempts", 2)
        for res in resources.values()
        if res["Type"] == "AWS::Lambda::EventInvokeConfig"
    }
    for lid, res in resources.items():
        props = res.get("Properties") or {}
        if res["Type"] == "AWS::DynamoDB::Table":
            out.tables[lid] = resolver.value(props)
            out.table_names[lid] = names[lid]
        elif res["Type"] == "AWS::Events::EventBus":
            out.event_buses[lid] = names[lid]
        elif res["Type"] == "AWS::KMS::Key":
            out.kms_keys[lid] = str(props.get("Description", lid))
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            out.layers[lid] = root / props["ContentUri"]
        elif res["Type"] == "AWS::Serverless::Function":
            merged = {**globals_, **props}
            env = {
                **((globals_.get("Environment") or {}).get("Variables") or {}),
                **((props.get("Environment") or {}).get("Variables") or {}),
            }
            resolved_env = {k: str(v) for k, v in resolver.value(env).items() if v is not NO_VALUE}
            retries = (props.get("EventInvokeConfig") or {}).get("MaximumRetryAttempts")
            if retries is None:
                retries = invoke_configs.get(names[lid], 2)
            # SAM's Globals rule for lists: the global entries come first, then the function's own.
            declared = [*(globals_.get("Layers") or []), *(props.get("Layers") or [])]
            layers = tuple(str(layer["Ref"]) for layer in declared if isinstance(layer, dict) and "Ref" in layer)
            reserved = resolver.value(props.get("ReservedConcurrentExecutions"))
            out.functions[lid] = Function(
                logical_id=lid,
                name=names[lid],
                code_uri=root / merged["CodeUri"],
                handler=merged["Handler"],
                timeout=int(merged.get("Timeout", 3)),
                memory=int(merged.get("MemorySize", 128)),
                environment=resolved_env,
                layers=layers,
                reserved_concurrency=int(reserved) if reserved not in (None, "") else None,
                max_retry_attempts=int(retries),
            )
            for event in (props.get("Events") or {}).values():
                event_props = event.get("Properties") or {}
                if event["Type"] == "HttpApi":
                    out.routes.append(Route(str(event_props.get("Method", "ANY")).upper(), event_props["Path"], lid))
                elif event["Type"] in ("ScheduleV2", "Schedule"):
                    expression = resolver.value(event_props.get("ScheduleExpression") or event_props.get("Schedule"))
                    out.schedules.append(Schedule(lid, rate_seconds(str(expression))))
                elif event["Type"] == "DynamoDB":
                    out.stream_sources.append(_stream_source(lid, event_props, resolver))
    return out


def _stream_source(function: str, props: Mapping[str, Any], resolver: _Resolver) -> StreamSource:
    """A ``DynamoDB`` event of a function; its ``Stream`` must be ``!GetAtt <table>.StreamArn``."""
    stream = props.get("Stream")
    if not (isinstance(stream, dict) and "Fn::GetAtt" in stream and stream["Fn::GetAtt"][1] == "StreamArn"):
        raise ValueError(f"{function}: only Stream: !GetAtt <table>.StreamArn is supported locally")
    on_failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    return StreamSource(
        function=function,
        table=str(stream["Fn::GetAtt"][0]),
        starting_position=str(resolver.value(props.get("StartingPosition", "TRIM_HORIZON"))),
        batch_size=int(resolver.value(props.get("BatchSize", 100))),
        bisect_on_error=bool(resolver.value(props.get("BisectBatchOnFunctionError", False))),
        max_retry_attempts=int(resolver.value(props.get("MaximumRetryAttempts", -1))),
        report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
        on_failure=str(resolver.value(on_failure)) if on_failure else None,
    )


if __name__ == "__main__":  # the template with its loops expanded, as JSON: what checkov scans (make security)
    print(json.dumps(parse(Path.cwd()), indent=1))
