"""A stand-in for the `pulumi` CLI, driven by the real Automation API (there is no Pulumi CLI
here). It speaks the CLI's side of the contract the SDK relies on, and plays the engine and the
AWS provider for what the run stack's program declares:
- `version`; `stack select/init/rm/output/history`; `config set`; `plugin install`; `cancel`;
- `up` and `preview` run the program itself: the SDK's inline program serves the language host
  at `--client`, and this engine calls its Run with a resource monitor of its own (the SDK's mock
  monitor behind gRPC), so every resource and invoke the program declares comes here, with its
  real inputs, URN (parent types included, as the engine names them) and provider;
- as the AWS provider (pulumi-aws 7), `up` creates the launch template and the Auto Scaling group
  in moto with the credentials the CLI was given (so the operator policy, enforced by the sandbox,
  shows a missing grant), and answers the program's invokes (the AMI's SSM parameter, the AMI's
  root device) from moto. The group then launches its machine, as on AWS: tagged through the
  template's tag specifications, or not at all when the sandbox's EC2 refuses it
  (automation/sandbox/grouplaunches.py: a failed scaling activity, `up` still succeeds);
- `refresh` and `destroy` work from the recorded state: destroy deletes the group (force) and the
  template, as the provider does;
- engine events go to the SDK's gRPC Events service as JSON (`--event-log tcp://…`) in the shapes
  of pulumi's apitype events (prelude, resourcePre, resOutputs, diagnostic, resOpFailed, summary,
  cancel); a refused AWS call is the provider's error diagnostic on the resource's URN, worded
  as pulumi-aws 7 words it ("sdk-v2/provider2.go:572: sdk.helper_schema: creating Auto Scaling
  Group (NAME): operation error Auto Scaling: CreateAutoScalingGroup, https response error
  StatusCode: 400, RequestID: …, api error LimitExceeded: …: provider=aws@7.51.1");
- state and locks in the DIY backend that PULUMI_BACKEND_URL names (s3:// through the moto
  server at AWS_ENDPOINT_URL, or file://), laid out as the CLI does
  (`.pulumi/stacks/<project>/<stack>.json`, `.pulumi/locks/organization/<project>/<stack>/…`).

Scenario (environment): FAKE_PULUMI_LOG (a JSON line per call: argv, cwd, the Pulumi variables
it saw, SIGINTs received); FAKE_PULUMI_UP = ok | hang | fail:<Operation>:<Code> (the provider's
call <Operation> is refused with <Code> before it reaches moto: what moto cannot refuse, such as
the account's group quota); FAKE_PULUMI_DESTROY = ok | timeout (the group's delete outlasts its
custom timeout: the provider's error, the state kept); FAKE_PULUMI_MARK (a file that gets the
machine's id once a hanging `up` has created the group); FAKE_PULUMI_VERSION (3.220.0).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from concurrent import futures
from urllib.parse import urlsplit

PROJECT = "chronos-run"
PROVIDER_VERSION = "7.51.1"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # how the engine shows a value not known before `up`
SEEN_VARS = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE",
             "PULUMI_SKIP_UPDATE_CHECK", "PULUMI_AUTOMATION_API", "AWS_REGION", "AWS_ACCESS_KEY_ID")
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
# What the provider says while it creates or deletes each resource type, and the SDK's name of the
# service it calls (the AWS SDK for Go v2's ServiceID, as it appears in "operation error <Service>").
WORDS = {TEMPLATE: ("EC2 Launch Template", "EC2"), GROUP: ("Auto Scaling Group", "Auto Scaling")}
# Refusals moto cannot produce by itself, by (operation, code): HTTP status and AWS's message.
REFUSALS = {
    ("CreateLaunchTemplate", "UnauthorizedOperation"): (
        403, "You are not authorized to perform this operation. User: {caller} is not authorized to perform: "
             "ec2:CreateLaunchTemplate on resource: arn:aws:ec2:{region}:{account}:launch-template/* because no "
             "identity-based policy allows the ec2:CreateLaunchTemplate action. Encoded authorization failure message: "
             "wmTkPK0bSgM"),
    ("CreateLaunchTemplate", "InvalidParameterValue"): (
        400, "Value (ami-0unknown) for parameter imageId is invalid. The image id '[ami-0unknown]' does not exist"),
    ("CreateAutoScalingGroup", "AccessDenied"): (
        403, "You are not authorized to use launch template: {template}"),
    ("CreateAutoScalingGroup", "ValidationError"): (
        400, "You must use a valid fully-formed launch template. Value (chronos-training-dev-instance) for parameter "
             "iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"),
    # Modelled on Auto Scaling's words for its other count quota ("Launch Configuration limit
    # exceeded - You may only have 100 launch configurations"); 500 groups a Region by default.
    ("CreateAutoScalingGroup", "LimitExceeded"): (
        400, "AutoScalingGroup limit exceeded - You may only have 500 Auto Scaling groups"),
    ("CreateAutoScalingGroup", "ServiceLinkedRoleFailure"): (
        500, "The service-linked role is not yet ready for use."),
}
_sigints = 0


class Backend:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.scheme = parts.scheme
        if self.scheme == "s3":
            import boto3

            self.bucket, self.root = parts.netloc, parts.path.strip("/")
            self.s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                                   region_name=os.environ.get("AWS_REGION", "us-east-1"))
        else:
            self.root = parts.path

    def _key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def get(self, rel: str):
        if self.scheme == "s3":
            try:
                return json.loads(self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read())
            except self.s3.exceptions.NoSuchKey:
                return None
        path = os.path.join(self.root, rel)
        return json.load(open(path)) if os.path.exists(path) else None

    def put(self, rel: str, doc) -> None:
        if self.scheme == "s3":
            self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=json.dumps(doc).encode())
            return
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(doc, open(path, "w"))

    def delete(self, rel: str) -> None:
        if self.scheme == "s3":
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
        elif os.path.exists(os.path.join(self.root, rel)):
            os.remove(os.path.join(self.root, rel))

    def list(self, prefix: str) -> list[str]:
        if self.scheme == "s3":
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            return [o["Key"][len(self._key("")):] for p in pages for o in p.get("Contents", [])]
        folder = os.path.join(self.root, prefix)
        return [os.path.join(prefix, f) for f in os.listdir(folder)] if os.path.isdir(folder) else []


def stack_file(stack: str) -> str:
    return f".pulumi/stacks/{PROJECT}/{stack}.json"


def lock_prefix(stack: str) -> str:
    return f".pulumi/locks/organization/{PROJECT}/{stack}/"


def stack_urn(stack: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{stack}"


class Events:
    """The engine's events, streamed to the SDK's gRPC Events service (`--event-log tcp://…`)."""

    def __init__(self, address: str | None):
        self.address, self.sent, self.seq = address, [], 0
        self.lock = threading.Lock()

    def add(self, **event) -> None:
        with self.lock:
            self.seq += 1
            self.sent.append({"sequence": self.seq, "timestamp": int(time.time()), **event})

    def step(self, kind: str, op: str, resource: dict, **extra) -> None:
        meta = {"op": op, "urn": resource["urn"], "type": resource["type"], "provider": resource.get("provider", ""),
                "new": {"type": resource["type"], "urn": resource["urn"], "custom": resource.get("custom", False),
                        "id": resource.get("id", ""), "parent": resource.get("parent", ""),
                        "provider": resource.get("provider", ""), "inputs": resource.get("inputs", {}),
                        "outputs": resource.get("outputs", {})}}
        self.add(**{kind: {"metadata": meta, **extra}})

    def diagnostic(self, urn: str, message: str, severity: str = "error") -> None:
        self.add(diagnosticEvent={"urn": urn, "prefix": f"{severity}: ", "severity": severity, "color": "never",
                                  "message": message})

    def flush(self) -> None:
        if not self.address or not self.sent:
            return
        import grpc

        from pulumi.runtime.proto import events_pb2, events_pb2_grpc

        with self.lock:
            sent, self.sent = self.sent, []
        with grpc.insecure_channel(self.address.removeprefix("tcp://")) as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            stub.StreamEvents(iter([events_pb2.EventRequest(event=json.dumps(e)) for e in sent]))


def aws_client(service: str):
    import boto3

    return boto3.client(service, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


class Refused(Exception):
    """The provider's error for a resource: what the engine shows as its diagnostic."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def provider_error(verb: str, typ: str, name: str, operation: str, code: str, status: int, message: str) -> Refused:
    what, service = WORDS[typ]
    return Refused(f"sdk-v2/provider2.go:572: sdk.helper_schema: {verb} {what} ({name}): operation error {service}: "
                   f"{operation}, https response error StatusCode: {status}, RequestID: {uuid.uuid4()}, "
                   f"api error {code}: {message}: provider=aws@{PROVIDER_VERSION}")


def call_aws(verb: str, typ: str, name: str, operation: str, call, context=dict):
    """One AWS call of the provider: refused as FAKE_PULUMI_UP asks (`context()` fills AWS's
    message), else made, its error kept."""
    from botocore.exceptions import ClientError

    mode = os.environ.get("FAKE_PULUMI_UP", "ok")
    if mode.startswith("fail:") and verb == "creating":
        wanted_op, _, code = mode.removeprefix("fail:").partition(":")
        if wanted_op == operation:
            status, message = REFUSALS[(operation, code)]
            raise provider_error(verb, typ, name, operation, code, status, message.format(**context()))
    try:
        return call()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
        raise provider_error(verb, typ, name, operation, err.get("Code", ""), status, err.get("Message", "")) from None


def _tags(tags: dict | None) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in (tags or {}).items()]


def _flag(value) -> bool:
    return value in (True, "true", "True")


class AwsProvider:
    """What pulumi-aws does for the resources and invokes this program declares, against moto."""

    def __init__(self, stack: str, dry_run: bool):
        self.stack, self.dry_run = stack, dry_run

    def call(self, token: str, args: dict) -> dict:
        if token == "aws:ssm/getParameter:getParameter":
            param = aws_client("ssm").get_parameter(Name=args["name"])["Parameter"]
            return {"name": args["name"], "value": param["Value"], "insecureValue": param["Value"],
                    "type": param["Type"], "arn": param.get("ARN", ""), "id": args["name"], "version": param["Version"]}
        if token == "aws:ec2/getAmi:getAmi":
            filters = [{"Name": f["name"], "Values": list(f["values"])} for f in args.get("filters") or []]
            images = aws_client("ec2").describe_images(Owners=list(args.get("owners") or []), Filters=filters)["Images"]
            if not images:
                raise Refused("invoking aws:ec2/getAmi:getAmi: 1 error occurred:\n\t* Your query returned no results. "
                              "Please change your search criteria or add owners.")
            image = sorted(images, key=lambda i: i.get("CreationDate", ""))[-1]
            return {"id": image["ImageId"], "imageId": image["ImageId"], "rootDeviceName": image["RootDeviceName"],
                    "architecture": image.get("Architecture", "x86_64"), "name": image.get("Name", "")}
        raise Refused(f"the stand-in provider does not answer {token}")

    def create(self, typ: str, name: str, inputs: dict) -> tuple[str, dict]:
        if typ == TEMPLATE:
            return self._template(name, inputs)
        if typ == GROUP:
            return self._group(name, inputs)
        return (str(uuid.uuid4()) if typ.startswith("pulumi:providers:") else ""), dict(inputs)

    def _template(self, name: str, inputs: dict) -> tuple[str, dict]:
        if self.dry_run:
            return "", {**inputs, "latestVersion": UNKNOWN}
        data = {
            "ImageId": inputs["imageId"], "InstanceType": inputs["instanceType"],
            "IamInstanceProfile": {"Name": inputs["iamInstanceProfile"]["name"]},
            "SecurityGroupIds": list(inputs.get("vpcSecurityGroupIds") or []), "UserData": inputs.get("userData", ""),
            "InstanceInitiatedShutdownBehavior": inputs.get("instanceInitiatedShutdownBehavior", "stop"),
            "MetadataOptions": {"HttpTokens": inputs["metadataOptions"]["httpTokens"],
                                "HttpEndpoint": inputs["metadataOptions"]["httpEndpoint"],
                                "HttpPutResponseHopLimit": int(inputs["metadataOptions"]["httpPutResponseHopLimit"])},
            "BlockDeviceMappings": [{"DeviceName": m["deviceName"], "Ebs": {
                "VolumeSize": int(m["ebs"]["volumeSize"]), "VolumeType": m["ebs"]["volumeType"],
                "Encrypted": _flag(m["ebs"]["encrypted"]), "DeleteOnTermination": _flag(m["ebs"]["deleteOnTermination"])}}
                for m in inputs.get("blockDeviceMappings") or []],
            "TagSpecifications": [{"ResourceType": s["resourceType"], "Tags": _tags(s["tags"])}
                                  for s in inputs.get("tagSpecifications") or []],
        }
        ec2 = aws_client("ec2")

        def caller() -> dict:
            identity = aws_client("sts").get_caller_identity()
            return {"caller": identity["Arn"], "region": ec2.meta.region_name, "account": identity["Account"]}

        made = call_aws("creating", TEMPLATE, inputs["name"], "CreateLaunchTemplate", lambda: ec2.create_launch_template(
            LaunchTemplateName=inputs["name"], LaunchTemplateData=data,
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": _tags(inputs.get("tags"))}]),
            caller)["LaunchTemplate"]
        return made["LaunchTemplateId"], {**inputs, "latestVersion": made["LatestVersionNumber"]}

    def _group(self, name: str, inputs: dict) -> tuple[str, dict]:
        if self.dry_run:
            return "", {**inputs, "arn": UNKNOWN}
        policy = inputs["mixedInstancesPolicy"]
        spec = policy["launchTemplate"]["launchTemplateSpecification"]
        dist = policy["instancesDistribution"]
        group = inputs["name"]
        autoscaling = aws_client("autoscaling")
        call_aws("creating", GROUP, group, "CreateAutoScalingGroup", lambda: autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=group, MinSize=int(inputs["minSize"]), MaxSize=int(inputs["maxSize"]),
            DesiredCapacity=int(inputs["desiredCapacity"]), VPCZoneIdentifier=",".join(inputs["vpcZoneIdentifiers"]),
            CapacityRebalance=_flag(inputs.get("capacityRebalance")),
            HealthCheckType=inputs.get("healthCheckType", "EC2"),
            HealthCheckGracePeriod=int(inputs.get("healthCheckGracePeriod", 300)),
            MixedInstancesPolicy={
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": spec["launchTemplateId"],
                                                    "Version": str(spec["version"])},
                    "Overrides": [{"InstanceType": o["instanceType"]} for o in policy["launchTemplate"]["overrides"]]},
                "InstancesDistribution": {
                    "OnDemandAllocationStrategy": dist["onDemandAllocationStrategy"],
                    "OnDemandBaseCapacity": int(dist["onDemandBaseCapacity"]),
                    "OnDemandPercentageAboveBaseCapacity": int(dist["onDemandPercentageAboveBaseCapacity"]),
                    "SpotAllocationStrategy": dist["spotAllocationStrategy"]}},
            Tags=[{"Key": t["key"], "Value": t["value"], "PropagateAtLaunch": _flag(t["propagateAtLaunch"]),
                   "ResourceId": group, "ResourceType": "auto-scaling-group"} for t in inputs.get("tags") or []]),
            lambda: {"template": spec["launchTemplateId"]})
        # wait_for_capacity_timeout "0": the provider returns once the group exists.
        [made] = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        return group, {**inputs, "arn": made["AutoScalingGroupARN"]}

    def delete(self, resource: dict) -> None:
        typ, rid = resource["type"], resource.get("id", "")
        if typ == GROUP:
            autoscaling = aws_client("autoscaling")
            if not autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[rid])["AutoScalingGroups"]:
                return  # gone already: the provider's delete succeeds
            call_aws("deleting", GROUP, rid, "DeleteAutoScalingGroup",
                     lambda: autoscaling.delete_auto_scaling_group(AutoScalingGroupName=rid, ForceDelete=True))
        elif typ == TEMPLATE:
            ec2 = aws_client("ec2")
            try:
                call_aws("deleting", TEMPLATE, rid, "DeleteLaunchTemplate",
                         lambda: ec2.delete_launch_template(LaunchTemplateId=rid))
            except Refused as exc:
                # Gone already: the provider's delete succeeds (AWS's code; moto says ...Name.NotFoundException).
                if not any(f"api error {code}" in exc.message for code in ("InvalidLaunchTemplateId.NotFound",
                                                                            "InvalidLaunchTemplateName.NotFoundException")):
                    raise

    def exists(self, resource: dict) -> bool:
        typ, rid = resource["type"], resource.get("id", "")
        if typ == GROUP:
            return bool(aws_client("autoscaling").describe_auto_scaling_groups(
                AutoScalingGroupNames=[rid])["AutoScalingGroups"])
        if typ == TEMPLATE:
            from botocore.exceptions import ClientError

            try:
                return bool(aws_client("ec2").describe_launch_templates(LaunchTemplateIds=[rid])["LaunchTemplates"])
            except ClientError:
                return False
        return True


def _plain(value):
    """A deserialized property as JSON, unknowns as the engine shows them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # a protobuf Struct carries every number as a double; the engine shows 1, not 1.0
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return UNKNOWN


class Engine:
    """Runs the program through the SDK's language host and plays the resource monitor for it."""

    def __init__(self, stack: str, dry_run: bool, events: Events):
        self.stack, self.dry_run, self.events = stack, dry_run, events
        self.provider = AwsProvider(stack, dry_run)
        self.resources: list[dict] = []  # registered, in order
        self.outputs: dict = {}
        self.failed: list[str] = []
        self.logged: list[tuple[int, str, str]] = []

    def urn(self, parent: str, typ: str, name: str) -> str:
        # Children of the root stack carry no parent type; others are qualified by their parent's.
        if parent and "::pulumi:pulumi:Stack::" not in parent:
            typ = parent.split("::")[2] + "$" + typ
        return f"urn:pulumi:{self.stack}::{PROJECT}::{typ}::{name}"

    def register(self, request):
        from pulumi.runtime import rpc
        from pulumi.runtime.mocks import _ensure_event_loop, _sync_await
        from pulumi.runtime.proto import resource_pb2

        urn = self.urn(request.parent, request.type, request.name)
        _ensure_event_loop()
        inputs = _plain(rpc.deserialize_properties(request.object))
        resource = {"urn": urn, "type": request.type, "name": request.name, "custom": bool(request.custom),
                    "parent": request.parent, "provider": request.provider, "inputs": inputs, "outputs": {}}
        self.events.step("resourcePreEvent", "create", resource)
        try:
            rid, outputs = self.provider.create(request.type, request.name, inputs)
        except Refused as exc:
            self.failed.append(urn)
            self.events.diagnostic(urn, exc.message)
            self.events.step("resOpFailedEvent", "create", resource, status=1, steps=0)
            raise
        resource.update(id=rid, outputs=outputs)
        self.resources.append(resource)
        if request.custom:
            self.events.step("resOutputsEvent", "create", resource)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=rid, object=_sync_await(
            rpc.serialize_properties(outputs, {})))

    def register_outputs(self, request) -> None:
        from pulumi.runtime import rpc

        outputs = _plain(rpc.deserialize_properties(request.outputs))
        for resource in self.resources:
            if resource["urn"] == request.urn:
                resource["outputs"] = outputs
                self.events.step("resOutputsEvent", "create", resource)
        if request.urn == stack_urn(self.stack):
            self.outputs = outputs

    def invoke(self, request):
        from pulumi.runtime import rpc
        from pulumi.runtime.mocks import _ensure_event_loop, _sync_await
        from pulumi.runtime.proto import resource_pb2

        _ensure_event_loop()
        try:
            result = self.provider.call(request.tok, rpc.deserialize_properties(request.args))
        except Refused as exc:
            self.failed.append(stack_urn(self.stack))
            self.events.diagnostic(stack_urn(self.stack), exc.message)
            raise
        return resource_pb2.ResourceInvokeResponse(**{"return": _sync_await(rpc.serialize_properties(result, {}))})

    def run(self, client: str, config: dict[str, str]) -> str:
        """Serve the monitor and the engine, ask the language host to run the program; its error."""
        import grpc
        from google.protobuf import empty_pb2

        from pulumi.runtime.proto import (engine_pb2_grpc, language_pb2, language_pb2_grpc, resource_pb2,
                                          resource_pb2_grpc)

        engine = self

        def guarded(method):
            def serve(self, request, context):
                try:
                    return method(request)
                except Refused as exc:
                    # The engine stops the update: the program hears that the monitor is going away.
                    context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
            return serve

        class Monitor(resource_pb2_grpc.ResourceMonitorServicer):
            RegisterResource = guarded(engine.register)
            Invoke = guarded(engine.invoke)

            def RegisterResourceOutputs(self, request, context):
                engine.register_outputs(request)
                return empty_pb2.Empty()

            def SupportsFeature(self, request, context):
                return resource_pb2.SupportsFeatureResponse(hasSupport=False)

            def GetDeploymentInfo(self, request, context):
                return resource_pb2.DeploymentInfo(supportedFeatures=[])

            def SignalAndWaitForShutdown(self, request, context):
                return empty_pb2.Empty()

        class EngineService(engine_pb2_grpc.EngineServicer):
            def Log(self, request, context):
                engine.logged.append((request.severity, request.urn, request.message))
                return empty_pb2.Empty()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        resource_pb2_grpc.add_ResourceMonitorServicer_to_server(Monitor(), server)
        engine_pb2_grpc.add_EngineServicer_to_server(EngineService(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(client) as channel:
                response = language_pb2_grpc.LanguageRuntimeStub(channel).Run(language_pb2.RunRequest(
                    project=PROJECT, stack=self.stack, pwd=os.getcwd(), config=config, dryRun=self.dry_run,
                    parallel=8, monitor_address=f"127.0.0.1:{port}", args=[f"127.0.0.1:{port}"],
                    organization="organization"))
        except grpc.RpcError as exc:
            # The SDK's language host can fail its Run itself (its automation server re-raises a
            # RunError while it cancels the program's pending calls once the monitor has refused
            # one). The engine takes a failed Run as the program's error: the update fails, its
            # events are written and the lock released, as for any other error.
            return f"{exc.code().name}: {exc.details()}"
        finally:
            server.stop(grace=1).wait()
        return response.error

    def program_errors(self) -> list[str]:
        from pulumi.runtime.proto import engine_pb2

        return [m for severity, _, m in self.logged if severity == engine_pb2.ERROR]


def arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def fail(message: str, code: int = 255) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def finish(events: Events, changes: dict[str, int], seconds: int = 1) -> None:
    events.add(summaryEvent={"maybeCorrupt": False, "durationSeconds": seconds, "resourceChanges": changes,
                             "PolicyPacks": {}})
    events.add(cancelEvent={})
    events.flush()


def operate(command: str, args: list[str], backend: Backend) -> int:
    stack = arg(args, "--stack")
    events = Events(arg(args, "--event-log"))
    state = backend.get(stack_file(stack))
    if state is None:
        return fail(f"no stack named '{stack}' found")
    if backend.list(lock_prefix(stack)) and command != "preview":
        lock = backend.list(lock_prefix(stack))[0]
        return fail(f"the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end "
                    f"or delete the lock file with `pulumi cancel`.\n  {lock}: created by test (pid 1)")
    events.add(preludeEvent={"config": {}})
    if command in ("up", "preview"):
        return deploy(command, stack, args, state, backend, events)
    if command == "destroy":
        return destroy(stack, state, backend, events)
    # refresh: what no longer exists leaves the state, as the provider's read finds it gone
    provider = AwsProvider(stack, False)
    kept = [r for r in state.get("resources", []) if provider.exists(r)]
    backend.put(stack_file(stack), {**state, "resources": kept})
    finish(events, {"same": len(kept)})
    return 0


def deploy(command: str, stack: str, args: list[str], state: dict, backend: Backend, events: Events) -> int:
    dry_run = command == "preview"
    client = arg(args, "--client")
    if not client:
        return fail("the stand-in runs inline programs only (`--client`)", 2)
    lock = None
    if not dry_run:
        lock = f"{lock_prefix(stack)}{uuid.uuid4()}.json"
        backend.put(lock, {"pid": os.getpid(), "username": "test", "hostname": "test"})
    engine = Engine(stack, dry_run, events)
    error = engine.run(client, {"aws:region": os.environ.get("AWS_REGION", "us-east-1")})
    created = {"create": len(engine.resources)}
    if engine.failed or error:
        if not engine.failed:
            for message in engine.program_errors() or [error]:
                events.diagnostic(stack_urn(stack), message)
        events.diagnostic(stack_urn(stack), "update failed" if not dry_run else "preview failed")
        if not dry_run:
            backend.put(stack_file(stack), {**state, "resources": state.get("resources", []) + engine.resources})
            backend.delete(lock)
        finish(events, created)
        print(f"{'Previewing update' if dry_run else 'Updating'} ({stack}):\n    error: {error or 'update failed'}")
        return fail("update failed" if not dry_run else "preview failed")
    if dry_run:
        finish(events, created)
        return 0
    resources = state.get("resources", []) + engine.resources
    if os.environ.get("FAKE_PULUMI_UP") == "hang":
        events.flush()
        mark = os.environ.get("FAKE_PULUMI_MARK")
        if mark:
            group = aws_client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[stack])
            open(mark, "w").write(next((i["InstanceId"] for g in group["AutoScalingGroups"] for i in g["Instances"]), ""))
        deadline = time.monotonic() + 120
        while not _sigints and time.monotonic() < deadline:
            time.sleep(0.05)
        print("^C received; cancelling. If you would like to terminate immediately, press ^C again.")
        time.sleep(0.3)  # the in-flight operations finish and are recorded before the CLI exits
        backend.put(stack_file(stack), {**state, "resources": resources, "outputs": {}})
        backend.delete(lock)
        log_call(sys.argv[1:])
        return fail("update canceled")
    backend.put(stack_file(stack), {**state, "resources": resources, "outputs": engine.outputs})
    backend.put(f".pulumi/history/{PROJECT}/{stack}/{stack}-1.history.json", {"kind": "update"})
    finish(events, created, seconds=40)
    backend.delete(lock)
    rows = "\n".join(f" +  {r['type']} {r['name']} created" for r in engine.resources)
    print(f"Updating ({stack}):\n{rows}\nResources:\n    + {len(engine.resources)} created")
    return 0


def destroy(stack: str, state: dict, backend: Backend, events: Events) -> int:
    resources = list(state.get("resources", []))
    provider = AwsProvider(stack, False)
    for resource in reversed(list(resources)):
        events.step("resourcePreEvent", "delete", resource)
        try:
            if resource["type"] == GROUP and os.environ.get("FAKE_PULUMI_DESTROY") == "timeout":
                name = resource["id"]
                raise Refused(f"sdk-v2/provider2.go:572: sdk.helper_schema: deleting Auto Scaling Group ({name}): "
                              f"waiting for Auto Scaling Group ({name}) delete: timeout while waiting for state to "
                              f"become 'deleted' (last state: 'Delete in progress', timeout: 30m0s): "
                              f"provider=aws@{PROVIDER_VERSION}")
            provider.delete(resource)
        except Refused as exc:
            events.diagnostic(resource["urn"], exc.message)
            events.step("resOpFailedEvent", "delete", resource, status=1, steps=0)
            events.diagnostic(stack_urn(stack), "update failed")
            backend.put(stack_file(stack), {**state, "resources": resources})
            finish(events, {"delete": len(state.get("resources", [])) - len(resources)})
            return fail("destroy failed")
        resources.remove(resource)
        events.step("resOutputsEvent", "delete", resource)
    backend.put(stack_file(stack), {**state, "resources": [], "outputs": {}})
    finish(events, {"delete": len(state.get("resources", []))})
    return 0


def recorded(stack: str, template_id: str = "lt-0123456789abcdef0") -> dict:
    """The state `up` leaves in the backend for a run stack whose group exists (for tests that
    put a stack record in place without running `up`)."""
    machines = f"urn:pulumi:{stack}::{PROJECT}::chronos:run:Machines"
    rows = [("pulumi:pulumi:Stack", stack_urn(stack), ""),
            ("pulumi:providers:aws", f"urn:pulumi:{stack}::{PROJECT}::pulumi:providers:aws::{stack}-aws", str(uuid.uuid4())),
            ("chronos:run:Machines", f"{machines}::{stack}", ""),
            (TEMPLATE, f"{machines}${TEMPLATE}::{stack}", template_id), (GROUP, f"{machines}${GROUP}::{stack}", stack)]
    return {"resources": [{"urn": urn, "type": typ, "name": urn.rsplit("::", 1)[1], "id": rid,
                           "custom": typ.startswith(("aws:", "pulumi:providers:"))} for typ, urn, rid in rows],
            "outputs": {"group": stack, "launch_template": template_id}}


def log_call(argv: list[str]) -> None:
    path = os.environ.get("FAKE_PULUMI_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "sigints": _sigints,
                                 "env": {k: os.environ.get(k) for k in SEEN_VARS}}) + "\n")


def main(argv: list[str]) -> int:
    def on_sigint(signum, frame):
        global _sigints
        _sigints += 1

    signal.signal(signal.SIGINT, on_sigint)
    args = [a for a in argv if a != "--non-interactive"]
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["version"]:
        print(f"v{os.environ.get('FAKE_PULUMI_VERSION', '3.220.0')}")
        return 0
    if args[:1] != ["--help"] and "--help" not in args:
        log_call(argv)
    backend = Backend(os.environ.get("PULUMI_BACKEND_URL", "file:///nonexistent"))
    head = words[0] if words else ""
    if head == "stack":
        sub, stack = words[1], arg(args, "--stack") or (words[2] if len(words) > 2 else None)
        if sub == "select":
            return 0 if backend.get(stack_file(stack)) is not None else fail(f"no stack named '{stack}' found")
        if sub == "init":
            if backend.get(stack_file(stack)) is not None:
                return fail(f"stack '{stack}' already exists")
            backend.put(stack_file(stack), {"resources": [], "outputs": {}})
            return 0
        if sub == "rm":
            state = backend.get(stack_file(stack))
            if state is None:
                return fail(f"no stack named '{stack}' found")
            if state.get("resources"):
                return fail(f"'{stack}' still has resources; removal rejected. Possible actions: pulumi destroy")
            backend.delete(stack_file(stack))
            return 0
        if sub == "output":
            print(json.dumps((backend.get(stack_file(stack)) or {}).get("outputs", {})))
            return 0
        if sub == "history":
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            print(json.dumps([{"kind": "update", "startTime": now, "endTime": now, "message": "", "environment": {},
                               "config": {}, "result": "succeeded", "resourceChanges": {"create": 5}}]))
            return 0
    if head in ("config", "plugin"):
        return 0
    if head == "cancel":
        stack = arg(args, "--stack") or words[1]
        for key in backend.list(lock_prefix(stack)):
            backend.delete(key)
        return 0
    if head in ("up", "preview", "refresh", "destroy"):
        return operate(head, args, backend)
    return fail(f"fake pulumi does not play `{' '.join(argv)}`", 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
