"""A stand-in for the `pulumi` CLI, driven by the real Automation API (there is no Pulumi CLI
here). It speaks the CLI's side of the contract the SDK relies on, and no more:
- `version`; `stack select/init/rm/output/history`; `config set`; `plugin install`; `cancel`;
- `up`, `preview`, `refresh`, `destroy` with `--event-log tcp://…`: engine events go to the SDK's
  gRPC Events service as JSON, in the shapes of pulumi's apitype events (prelude, resourcePre,
  resOutputs, diagnostic, resOpFailed, summary, cancel);
- state and locks in the DIY backend that PULUMI_BACKEND_URL names (s3:// through the moto
  server at AWS_ENDPOINT_URL, or file://), laid out as the CLI does
  (`.pulumi/stacks/<project>/<stack>.json`, `.pulumi/locks/organization/<project>/<stack>/…`);
- the machine itself: `up` runs an instance in moto's EC2 tagged with the run (the group's
  first machine), `destroy` terminates it, so tests can see what a cancelled or failed `up` leaves.
It does not run the program (that is tested under Pulumi's mocks).

Scenario (environment): FAKE_PULUMI_LOG (a JSON line per call: argv, cwd, the Pulumi variables
it saw, SIGINTs received), FAKE_PULUMI_UP = ok | fail:<AWS code> | hang, FAKE_PULUMI_DESTROY = ok |
timeout (the group's delete outlasts its custom timeout: the provider's error, the state kept), FAKE_PULUMI_MARK (a
file touched once a hanging `up` has created its instance), FAKE_PULUMI_VERSION (3.220.0),
FAKE_PULUMI_INPUTS (JSON: the instance inputs the engine would report).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from urllib.parse import urlsplit

PROJECT = "chronos-run"
SEEN_VARS = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE",
             "PULUMI_SKIP_UPDATE_CHECK", "PULUMI_AUTOMATION_API", "AWS_REGION")
AWS_MESSAGES = {
    "InsufficientInstanceCapacity": (500, "We currently do not have sufficient g4dn.xlarge capacity in the "
                                          "Availability Zone you requested (us-east-1a). Our system will be working on "
                                          "provisioning additional capacity."),
    "VcpuLimitExceeded": (400, "You have requested more vCPU capacity than your current vCPU limit of 0 allows for "
                               "the instance bucket that the specified instance type belongs to."),
    "UnauthorizedOperation": (403, "You are not authorized to perform this operation."),
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


def urn(stack: str, typ: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{typ}::{name}"


class Events:
    """The engine's events, streamed to the SDK's gRPC Events service (`--event-log tcp://…`)."""

    def __init__(self, address: str | None):
        self.address, self.sent, self.seq = address, [], 0

    def add(self, **event) -> None:
        self.seq += 1
        self.sent.append({"sequence": self.seq, "timestamp": int(time.time()), **event})

    def flush(self) -> None:
        if not self.address or not self.sent:
            return
        import grpc

        from pulumi.runtime.proto import events_pb2, events_pb2_grpc

        with grpc.insecure_channel(self.address.removeprefix("tcp://")) as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            stub.StreamEvents(iter([events_pb2.EventRequest(event=json.dumps(e)) for e in self.sent]))
        self.sent = []


def step(op: str, stack: str, typ: str, name: str, inputs: dict | None = None) -> dict:
    return {"op": op, "urn": urn(stack, typ, name), "type": typ, "provider": "",
            "new": {"type": typ, "urn": urn(stack, typ, name), "inputs": inputs or {}, "outputs": {}}}


def ec2():
    import boto3

    return boto3.client("ec2", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def run_instance(stack: str) -> str:
    client = ec2()
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": "Project", "Value": "Chronos-Training"}, {"Key": "RunId", "Value": stack}]
    return client.run_instances(ImageId=image, InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1,
                                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]


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
    inputs = json.loads(os.environ.get("FAKE_PULUMI_INPUTS") or "{}")
    events.add(preludeEvent={"config": {}})
    if command in ("up", "preview"):
        events.add(resourcePreEvent={"metadata": step("create", stack, "pulumi:pulumi:Stack", f"{PROJECT}-{stack}")})
        events.add(resourcePreEvent={"metadata": step("create", stack, "pulumi:providers:aws", f"{stack}-aws",
                                                      {"region": os.environ.get("AWS_REGION"), "maxRetries": "5"})})
        events.add(resourcePreEvent={"metadata": step("create", stack, "aws:ec2/instance:Instance", stack, inputs)})
    if command == "preview":
        events.add(summaryEvent={"maybeCorrupt": False, "durationSeconds": 1, "resourceChanges": {"create": 3},
                                 "PolicyPacks": {}})
        events.add(cancelEvent={})
        events.flush()
        return 0
    if command == "up":
        return up(stack, state, backend, events)
    if command == "destroy" and os.environ.get("FAKE_PULUMI_DESTROY") == "timeout":
        group = urn(stack, "aws:autoscaling/group:Group", stack)
        events.add(diagnosticEvent={"urn": group, "prefix": "error: ", "severity": "error", "color": "never",
                                    "message": f"deleting Auto Scaling Group ({stack}): waiting for Auto Scaling Group "
                                               f"({stack}) delete: timeout while waiting for state to become 'deleted' "
                                               "(last state: 'Delete in progress', timeout: 30m0s)"})
        events.add(resOpFailedEvent={"metadata": step("delete", stack, "aws:autoscaling/group:Group", stack),
                                     "status": 1, "steps": 0})
        events.add(cancelEvent={})
        events.flush()
        return fail("destroy failed")
    if command == "destroy":
        client = ec2()
        ids = state.get("instances", [])
        tagged = client.describe_instances(Filters=[{"Name": "tag:RunId", "Values": [stack]}])
        ids += [i["InstanceId"] for r in tagged["Reservations"] for i in r["Instances"]]
        if ids:
            client.terminate_instances(InstanceIds=sorted(set(ids)))
        backend.put(stack_file(stack), {**state, "instances": [], "outputs": {}})
    events.add(summaryEvent={"maybeCorrupt": False, "durationSeconds": 1, "resourceChanges": {}, "PolicyPacks": {}})
    events.add(cancelEvent={})
    events.flush()
    return 0


def up(stack: str, state: dict, backend: Backend, events: Events) -> int:
    mode = os.environ.get("FAKE_PULUMI_UP", "ok")
    instance_urn = urn(stack, "aws:ec2/instance:Instance", stack)
    if mode.startswith("fail:"):
        code = mode.split(":", 1)[1]
        status, message = AWS_MESSAGES.get(code, (400, "refused"))
        events.add(diagnosticEvent={"urn": instance_urn, "prefix": "error: ", "severity": "error", "color": "never",
                                    "message": f"1 error occurred:\n\t* creating EC2 Instance: operation error EC2: "
                                               f"RunInstances, https response error StatusCode: {status}, RequestID: "
                                               f"{uuid.uuid4()}, api error {code}: {message}\n\n"})
        events.add(resOpFailedEvent={"metadata": step("create", stack, "aws:ec2/instance:Instance", stack),
                                     "status": 1, "steps": 0})
        events.add(diagnosticEvent={"urn": urn(stack, "pulumi:pulumi:Stack", f"{PROJECT}-{stack}"),
                                    "prefix": "error: ", "severity": "error", "color": "never",
                                    "message": "update failed"})
        events.add(cancelEvent={})
        events.flush()
        print(f"Updating ({stack}):\n    aws:ec2:Instance {stack} creating failed error: {code}")
        return fail("update failed")
    lock = f"{lock_prefix(stack)}{uuid.uuid4()}.json"
    backend.put(lock, {"pid": os.getpid(), "username": "test", "hostname": "test"})
    instance = run_instance(stack)
    if mode == "hang":
        events.flush()
        mark = os.environ.get("FAKE_PULUMI_MARK")
        if mark:
            open(mark, "w").write(instance)
        deadline = time.monotonic() + 120
        while not _sigints and time.monotonic() < deadline:
            time.sleep(0.05)
        print("^C received; cancelling. If you would like to terminate immediately, press ^C again.")
        time.sleep(0.3)  # the in-flight create finishes and is recorded before the CLI exits
        backend.put(stack_file(stack), {**state, "instances": [instance], "outputs": {}})
        backend.delete(lock)
        log_call(sys.argv[1:])
        return fail("update canceled")
    # The run stack's outputs: its group (whose first machine is the instance made above).
    outputs = {"group": stack, "launch_template": "lt-0fake"}
    backend.put(stack_file(stack), {**state, "instances": [instance], "outputs": outputs})
    backend.put(f".pulumi/history/{PROJECT}/{stack}/{stack}-1.history.json", {"kind": "update"})
    events.add(resOutputsEvent={"metadata": step("create", stack, "aws:ec2/instance:Instance", stack)})
    events.add(summaryEvent={"maybeCorrupt": False, "durationSeconds": 40, "resourceChanges": {"create": 3},
                             "PolicyPacks": {}})
    events.add(cancelEvent={})
    events.flush()
    backend.delete(lock)
    print(f"Updating ({stack}):\n +  aws:ec2:Instance {stack} created (40s)\nResources:\n    + 3 created")
    return 0


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
            backend.put(stack_file(stack), {"instances": [], "outputs": {}})
            return 0
        if sub == "rm":
            state = backend.get(stack_file(stack))
            if state is None:
                return fail(f"no stack named '{stack}' found")
            if state.get("instances"):
                return fail(f"'{stack}' still has resources; removal rejected. Possible actions: pulumi destroy")
            backend.delete(stack_file(stack))
            return 0
        if sub == "output":
            print(json.dumps((backend.get(stack_file(stack)) or {}).get("outputs", {})))
            return 0
        if sub == "history":
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            print(json.dumps([{"kind": "update", "startTime": now, "endTime": now, "message": "", "environment": {},
                               "config": {}, "result": "succeeded", "resourceChanges": {"create": 3}}]))
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
