"""Running the Pulumi program (infra/__main__.py) under Pulumi's mocks, as `pulumi up` would run it."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"
# Pulumi runs the program with infra/ first on sys.path (flat imports); so do we.
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))

STACK = "test"


@dataclass
class Registered:
    """One resource the program declared: type token, name, inputs (secrets unwrapped) and which were secret."""

    typ: str
    name: str
    inputs: dict[str, Any]
    secret_keys: set[str] = field(default_factory=set)


@dataclass
class Request:
    """What the program asked the engine for, beyond inputs: the options a real engine acts on."""

    urn: str
    dependencies: set[str]  # names (the last URN part) of the resources this one waits for
    property_dependencies: dict[str, set[str]]
    additional_secret_outputs: list[str]
    delete_before_replace: bool
    ignore_changes: list[str]


_SIG = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key
_SECRET = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig


def unwrap(value: Any) -> Any:
    """Inputs as plain values: Pulumi hands secrets to mocks wrapped in a signature map."""
    if isinstance(value, dict):
        if value.get(_SIG) == _SECRET:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SIG) == _SECRET


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like AWS would (ids, ARNs, endpoints) and remembers every declaration.

    ``lookups`` answers data-source invokes (``aws:rds/getInstance:getInstance`` ...);
    ``on_resource`` may replace the state of a resource (the end-to-end test creates it for real).
    """

    lookups: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_resource: Callable[[pulumi.runtime.MockResourceArgs], tuple[str, dict[str, Any]] | None] | None = None
    resources: list[Registered] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)  # by resource name

    def record(self, request: Any) -> None:
        """Called with each RegisterResource request (see ``run_program``)."""
        self.requests[request.name] = Request(
            urn="",
            dependencies={_name_of(u) for u in request.dependencies},
            property_dependencies={
                k: {_name_of(u) for u in v.urns} for k, v in request.propertyDependencies.items()
            },
            additional_secret_outputs=list(request.additionalSecretOutputs),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=list(request.ignoreChanges),
        )

    def request(self, typ: str) -> Request:
        return self.requests[self.one(typ).name]

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = unwrap(dict(args.inputs))
        secret = {k for k, v in args.inputs.items() if is_secret(v)}
        self.resources.append(Registered(args.typ, args.name, inputs, secret))
        if self.on_resource is not None:
            made = self.on_resource(args)
            if made is not None:
                return made
        return fake_state(args.typ, args.name, inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.invokes.append((args.token, dict(args.args)))
        if args.token not in self.lookups:
            raise AssertionError(f"unexpected invoke {args.token}")
        return self.lookups[args.token], []

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def fake_state(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What AWS would compute for the resource types the program uses."""
    state = dict(inputs)
    rid = f"{name}-id"
    if typ in ("aws:rds/parameterGroup:ParameterGroup", "aws:rds/clusterParameterGroup:ClusterParameterGroup"):
        state.setdefault("name", f"{name}-pg")
        rid = state["name"]
    elif typ == "aws:rds/instance:Instance":
        state["address"] = f"{inputs['identifier']}.abcdefghij.eu-west-1.rds.amazonaws.com"
        state.setdefault("port", 5432)
    elif typ == "aws:rds/cluster:Cluster":
        state["endpoint"] = f"{inputs['clusterIdentifier']}.cluster-abcdefghij.eu-west-1.rds.amazonaws.com"
        state.setdefault("port", 5432)
        rid = inputs["clusterIdentifier"]
    elif typ == "aws:ec2/securityGroup:SecurityGroup":
        rid = "sg-0123456789abcdef0"
    elif typ == "aws:secretsmanager/secret:Secret":
        state["arn"] = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{inputs.get('name') or name}-AbCdEf"
        rid = state["arn"]
    elif typ == "aws:rds/subnetGroup:SubnetGroup":
        state.setdefault("name", f"{name}-sng")
    elif typ == "pulumi-python:dynamic/replicator:ReplicationUser":
        state["password"] = "generated-by-the-provider"
    elif typ == "aws:sns/topic:Topic":
        state["arn"] = f"arn:aws:sns:eu-west-1:123456789012:{name}"
        rid = state["arn"]
    return rid, state


def pulumi_config(values: dict[str, Any]) -> dict[str, str]:
    """Stack config as the engine hands it over: ``ns:key`` -> text (JSON for lists and objects)."""
    out = {}
    for key, value in values.items():
        full = key if ":" in key else f"replicator:{key}"
        out[full] = value if isinstance(value, str) else json.dumps(value)
    return out


def run_program(
    config: dict[str, Any], mocks: RecordingMocks, acl_entries: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run infra/__main__.py with ``config``; returns the resolved stack outputs.

    ``acl_entries`` stands in for ``describe_network_acls`` (the program reads the ACL to choose rule
    numbers); without it, the program asks the AWS endpoint (the moto-backed tests).
    """
    if acl_entries is not None:
        import network

        original = network.describe_acl_entries
        network.describe_acl_entries = lambda *_args: acl_entries  # type: ignore[assignment]
        try:
            return run_program(config, mocks)
        finally:
            network.describe_acl_entries = original  # type: ignore[assignment]
    pulumi.runtime.set_mocks(mocks, project="replicator-source", stack=STACK, preview=False)
    monitor = pulumi.runtime.settings.get_monitor()
    register = monitor.RegisterResource

    def recording_register(request: Any) -> Any:
        # Mocks see inputs only; the engine also acts on dependencies and options, so record those too.
        mocks.record(request)
        return register(request)

    monitor.RegisterResource = recording_register
    pulumi.runtime.set_all_config(pulumi_config({"aws:region": "eu-west-1", **config}))
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        namespace = runpy.run_path(str(INFRA / "__main__.py"))
        return pulumi.Output.all(**namespace["outputs"]).apply(outputs.update)

    program()
    return outputs


BASE = {
    "engine": "postgres",
    "engineVersion": "16.4",
    "identifier": "orders-db",
    "databaseName": "orders",
    "adminUsername": "postgres",
    "adminPassword": "admin-secret-value",
    "allowlist": [{"cidr": "203.0.113.7/32", "description": "replicator host"}, "198.51.100.0/24"],
    # A private database (the default) must say how the program reaches it.
    "adminAccess": {"via": "vpc"},
}


@pytest.fixture
def mocks() -> RecordingMocks:
    return RecordingMocks()
