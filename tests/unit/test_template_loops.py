"""``Fn::ForEach`` as the project's tools read it (``local.template.parse``): expanded as CloudFormation's
``AWS::LanguageExtensions`` transform expands it, and into the same resources as SAM CLI's own expander."""

from __future__ import annotations

from pathlib import Path

import pytest
from samcli.lib.cfn_language_extensions.sam_integration import process_template_for_sam_cli

from local.template import expand_for_each, parse

ROOT = Path(__file__).resolve().parents[2]


def test_a_loop_writes_its_fragment_once_per_item_with_the_identifier_replaced_everywhere() -> None:
    # GIVEN a loop whose fragment names the identifier in a key, a plain string, a !Sub and a !Ref
    template = {
        "Resources": {
            "Kept": {"Type": "AWS::SNS::Topic"},
            "Fn::ForEach::Topics": [
                "Name",
                ["Orders", "Refunds"],
                {
                    "${Name}Topic": {
                        "Type": "AWS::SNS::Topic",
                        "Properties": {
                            "DisplayName": "Topic of ${Name}",
                            "TopicName": {"Fn::Sub": "${AWS::StackName}-${Name}"},
                            "Tags": [{"Key": "for", "Value": {"Ref": "Name"}}],
                        },
                    }
                },
            ],
        },
        "Parameters": {"Fn::ForEach::NotHere": ["X", ["a"], {}]},  # loops are expanded in their sections only
    }
    # WHEN it is expanded
    expanded = expand_for_each(template)
    # THEN each item has its own resource, with every mention of the identifier replaced
    resources = expanded["Resources"]
    assert list(resources) == ["Kept", "OrdersTopic", "RefundsTopic"]
    assert resources["RefundsTopic"]["Properties"] == {
        "DisplayName": "Topic of Refunds",
        "TopicName": {"Fn::Sub": "${AWS::StackName}-Refunds"},
        "Tags": [{"Key": "for", "Value": "Refunds"}],
    }
    assert expanded["Parameters"] == template["Parameters"]


def test_loops_nest_and_the_ampersand_form_keeps_only_letters_and_digits() -> None:
    # GIVEN an outer loop over stages and an inner one over endpoints whose names have dots
    outputs = {
        "Fn::ForEach::Stages": [
            "Stage",
            ["Dev", "Prod"],
            {"Fn::ForEach::Hosts": ["Host", ["api.example", "cdn.example"], {"${Stage}&{Host}": {"Value": "${Host}"}}]},
        ]
    }
    # WHEN expanded THEN there is one output per pair, keyed without the dots, valued with them
    assert expand_for_each({"Outputs": outputs})["Outputs"] == {
        "Devapiexample": {"Value": "api.example"},
        "Devcdnexample": {"Value": "cdn.example"},
        "Prodapiexample": {"Value": "api.example"},
        "Prodcdnexample": {"Value": "cdn.example"},
    }


def test_a_loop_that_makes_a_name_twice_is_refused() -> None:
    template = {"Resources": {"ATopic": {}, "Fn::ForEach::Topics": ["N", ["A"], {"${N}Topic": {}}]}}
    with pytest.raises(ValueError, match="ATopic"):
        expand_for_each(template)


def test_the_project_template_expands_to_the_resources_sam_cli_expands_it_to() -> None:
    # GIVEN template.yaml as the project's tools read it, and as SAM CLI's language-extensions step reads it
    ours = parse(ROOT)
    theirs = process_template_for_sam_cli(parse(ROOT, expand=False))
    # THEN both have the same resources, of the same types, and no loop is left in ours
    assert {lid: res["Type"] for lid, res in ours["Resources"].items()} == {
        lid: res["Type"] for lid, res in theirs["Resources"].items()
    }
    assert not [name for name in ours["Resources"] if name.startswith("Fn::ForEach::")]
    # AND the loops do write the per-function alarms
    assert {"CallbackErrorsAlarm", "PublisherThrottlesAlarm", "SyncErrorsAlarm", "SyncThrottlesAlarm"} <= set(
        ours["Resources"]
    )
