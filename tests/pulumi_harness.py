"""Run a Pulumi program under the SDK's mocks and record every resource it declares.

Pulumi's runtime settings are process-global, so each `run_program` call starts from a fresh
root stack and config and puts them back empty afterwards; test modules using it can share one
pytest process in any order.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings

ACCOUNT = "123456789012"
REGION = "us-east-1"
ZONES = tuple(f"{REGION}{letter}" for letter in "abcdef")
AMI_ID = "ami-0123456789abcdef0"
ROOT_DEVICE = "/dev/sda1"  # the DLAMI (Ubuntu) root device


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    urn: str
    parent: str
    provider: str
    custom: bool
    timeouts: dict[str, str] = field(default_factory=dict)  # customTimeouts the engine would apply

    def fail(self, message: str) -> str:
        """Assertion message that names the resource, as a policy violation would."""
        return f"{self.urn}: {message}"


@dataclass
class Run:
    resources: list[Recorded] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what `pulumi up` would print as warnings

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Recorded:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected exactly one {typ}, found {[r.urn for r in found]}"
        return found[0]

    def aws(self) -> list[Recorded]:
        """Resources managed by the AWS provider (not components, not the provider itself)."""
        return [r for r in self.resources if r.typ.startswith("aws:")]

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.resources:
            counts[r.typ] = counts.get(r.typ, 0) + 1
        return counts


def policy_doc(value: Any) -> dict:
    """A policy input as the provider receives it: a JSON string (or already a dict)."""
    return json.loads(value) if isinstance(value, str) else value


_ENGINE_LOG = logging.getLogger("tests.pulumi_harness.engine")
_ENGINE_LOG.propagate = False


class _WarningSink(logging.Handler):
    def __init__(self, run: Run):
        super().__init__(logging.WARNING)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run.warnings.append(record.getMessage())


class _Monitor(pulumi_mocks.MockMonitor):
    """Tells the mocks the URN and parent of the resource being registered on this thread."""

    def __init__(self, mocks: "HarnessMocks"):
        super().__init__(mocks)
        self.current = threading.local()

    def RegisterResource(self, request):
        self.current.urn = self.make_urn(request.parent, request.type, request.name)
        self.current.parent = request.parent
        timeouts = request.customTimeouts
        self.current.timeouts = {k: getattr(timeouts, k) for k in ("create", "update", "delete")
                                 if getattr(timeouts, k, "")}
        return super().RegisterResource(request)


class HarnessMocks(pulumi.runtime.Mocks):
    """Answers the invokes our programs make and fills the computed outputs they read."""

    def __init__(self, run: Run, region: str, account: str, zones: tuple[str, ...],
                 ssm: dict[str, str]):
        self.run, self.region, self.account, self.zones, self.ssm = run, region, account, zones, ssm
        self.monitor = _Monitor(self)

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.run.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": self.account, "arn": f"arn:aws:iam::{self.account}:user/test",
                    "userId": "AIDTEST", "id": self.account}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": list(self.zones), "zoneIds": [f"use1-az{i + 1}" for i in range(len(self.zones))],
                    "id": self.region, "region": self.region}
        if args.token == "aws:index/getRegion:getRegion":
            return {"region": self.region, "name": self.region, "id": self.region,
                    "endpoint": f"ec2.{self.region}.amazonaws.com", "description": self.region}
        if args.token == "aws:ssm/getParameter:getParameter":
            name = args.args["name"]
            if name not in self.ssm:
                raise KeyError(f"no SSM parameter {name} in the mock")
            return {"name": name, "value": self.ssm[name], "insecureValue": self.ssm[name], "type": "String",
                    "arn": f"arn:aws:ssm:{self.region}::parameter{name}", "id": name, "version": 1}
        if args.token == "aws:ec2/getAmi:getAmi":
            image = next(f["values"][0] for f in args.args["filters"] if f["name"] == "image-id")
            return {"id": image, "imageId": image, "rootDeviceName": ROOT_DEVICE, "architecture": "x86_64",
                    "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"}
        raise NotImplementedError(f"the harness does not answer {args.token}")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.run.resources.append(Recorded(
            typ=args.typ, name=args.name, inputs=dict(args.inputs),
            urn=self.monitor.current.urn, parent=self.monitor.current.parent,
            provider=args.provider or "", custom=bool(args.custom),
            timeouts=dict(getattr(self.monitor.current, "timeouts", {})),
        ))
        return f"{args.name}-id", {**args.inputs, **self._computed(args)}

    def _computed(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        """The outputs AWS would fill in that our programs read back."""
        inputs = args.inputs
        if args.typ == "aws:s3/bucket:Bucket":
            return {"arn": f"arn:aws:s3:::{inputs['bucket']}"}
        if args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            kind = "role" if args.typ.endswith("Role") else "instance-profile"
            name = inputs.get("name") or f"{args.name}-1a2b3c"
            return {"name": name, "arn": f"arn:aws:iam::{self.account}:{kind}/{name}"}
        if args.typ == "aws:iam/policy:Policy":
            return {"arn": f"arn:aws:iam::{self.account}:policy/{args.name}-1a2b3c"}
        if args.typ == "aws:ec2/instance:Instance":
            return {"availabilityZone": inputs.get("availabilityZone", self.zones[0])}
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            return {"latestVersion": 1, "arn": f"arn:aws:ec2:{self.region}:{self.account}:launch-template/{args.name}-id"}
        return {}


def run_program(
    program: Callable[[], Any],
    *,
    project: str = "chronos-training",
    stack: str = "dev",
    config: dict[str, str] | None = None,
    region: str = REGION,
    account: str = ACCOUNT,
    zones: tuple[str, ...] = ZONES,
    ssm: dict[str, str] | None = None,
) -> Run:
    """Run `program` to completion under mocks; exceptions raised by it propagate."""
    run = Run()
    mocks = HarnessMocks(run, region, account, zones, ssm or {})
    pulumi_settings.set_root_resource(None)
    pulumi.runtime.set_all_config(dict(config or {}))
    sink = _WarningSink(run)
    _ENGINE_LOG.addHandler(sink)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=mocks.monitor,
                             logger=_ENGINE_LOG)
    try:
        @pulumi.runtime.test
        def body():
            program()
            root = pulumi_settings.get_root_resource()
            return pulumi.Output.from_input(dict(root.outputs)).apply(run.outputs.update)

        body()
    finally:
        _ENGINE_LOG.removeHandler(sink)
        pulumi.runtime.set_all_config({})
        pulumi_settings.set_root_resource(None)
    return run


def stack_config_file(path) -> dict[str, str]:
    """A Pulumi.<stack>.yaml's `config:` as the engine hands it to a program: strings, with
    structured values (lists, numbers) JSON-encoded."""
    import yaml

    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in (doc.get("config") or {}).items()}
