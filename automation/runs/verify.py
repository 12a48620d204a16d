"""verify-cleanup: find anything that could bill the user, by tag and by listing, not only from
records; `--fix` removes it (idempotent).

One way through: scan (ask S3 and EC2 what is there), decide (which of it is a leftover, and
whether it bills), act (`--fix`), report (scan again: what remains is what the user sees).
Billable leftovers (an instance, a detached volume, a stale lock that blocks every launch, an
incomplete upload's parts) make the exit code 6; a run stack whose machine is gone costs nothing
and is only listed (exit 0), and `--fix` removes it once the Pulumi CLI is at hand.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from instance.protocol.ec2 import instances_by_tag, tags_of
from instance.protocol.layout import DATASETS_PREFIX, PROJECT_TAG
from instance.protocol.liveness import ALIVE_STATES, Verdict
from instance.protocol.state import Lease
from instance.protocol.timeutil import utcnow

from ..context import Target
from .ending import force_end
from .runcheck import check_run
from .records import duration
from ..settings import settings

S3_STANDARD_PER_GB_MONTH = 0.023
BILLABLE = ("instance", "volume", "stale_lock", "multipart_upload", "group")


@dataclass
class Finding:
    kind: str  # instance | volume | stale_lock | multipart_upload | group (billable) | stack (a record)
    id: str
    detail: str
    run_id: str | None = None
    key: str | None = None  # the object key, for multipart uploads
    reason: str | None = None  # a stale lock's run is recorded failed with this (liveness.py)
    error: dict | None = None  # and this error, when its machine said what went wrong

    @property
    def billable(self) -> bool:
        return self.kind in BILLABLE

    def to_json(self) -> dict:
        return {**asdict(self), "billable": self.billable}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    fixed: list[Finding] = field(default_factory=list)
    not_fixed: dict[str, str] = field(default_factory=dict)  # finding id -> why --fix left it
    starting: list[str] = field(default_factory=list)  # instances inside the launch grace window
    active_run: str | None = None
    active: dict = field(default_factory=dict)  # the live run: its status and its machine's verdict
    storage: dict = field(default_factory=dict)

    @property
    def leftovers(self) -> list[Finding]:
        return [f for f in self.findings if f.billable]

    @property
    def records(self) -> list[Finding]:
        return [f for f in self.findings if not f.billable]

    @property
    def clean(self) -> bool:
        """Nothing left that bills (records that cost nothing may remain)."""
        return not self.leftovers

    def to_json(self) -> dict:
        return {"clean": self.clean, "active_run": self.active_run, "active": self.active, "starting": self.starting,
                "findings": [f.to_json() for f in self.findings], "fixed": [f.to_json() for f in self.fixed],
                "not_fixed": self.not_fixed, "storage": self.storage}


@dataclass(frozen=True)
class Scan:
    """What S3 and EC2 hold right now, before any decision."""

    lease: Lease | None
    verdict: Verdict | None  # whether the lock's run goes on (its machine, its group)
    instances: list[dict]
    volumes: list[dict]
    stacks: list[str]
    uploads: list[dict]
    groups: list[dict] = field(default_factory=list)  # the project's Auto Scaling groups


def scan(target: Target, executor) -> Scan:
    stale_after = settings().stale_after  # a bad knob is refused before anything is asked
    executor.reconcile()
    lease = target.state_store().read()
    groups = [g for g in _pages(target.autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
        Filters=[{"Name": "tag:Project", "Values": [PROJECT_TAG]}]), "AutoScalingGroups")]
    return Scan(
        lease=lease,
        verdict=check_run(target, executor, lease, groups, stale_after, reconciled=True) if lease else None,
        instances=instances_by_tag(target.ec2, {"Project": PROJECT_TAG}),
        volumes=_pages(target.ec2.get_paginator("describe_volumes").paginate(Filters=[
            {"Name": "tag:Project", "Values": [PROJECT_TAG]}, {"Name": "status", "Values": ["available"]}]), "Volumes"),
        stacks=executor.leftover_stacks(),
        uploads=_pages(target.s3.get_paginator("list_multipart_uploads").paginate(Bucket=target.bucket), "Uploads"),
        groups=groups,
    )


def decide(target: Target, seen: Scan) -> Report:
    launch_grace = settings().launch_grace
    report = Report()
    live_run = None
    if seen.lease:
        lease, verdict = seen.lease, seen.verdict
        if verdict.stale:
            report.findings.append(Finding(
                "stale_lock", target.layout.state,
                f"run {lease.run_id} ({lease.status.value}) last written {_ago(lease)} ago by S3's clock: "
                f"{verdict.why}", lease.run_id, reason=verdict.reason, error=verdict.error))
        else:
            live_run = report.active_run = lease.run_id
            report.active = {"run_id": lease.run_id, "status": lease.status.value, **verdict.to_json()}

    now = utcnow()
    machines: set[str] = set()  # run ids with a machine that may bill
    for inst in seen.instances:
        run_id = tags_of(inst).get("RunId")
        if run_id:
            machines.add(run_id)
        alive = inst["State"]["Name"] in ALIVE_STATES
        if run_id and run_id == live_run and alive:
            continue
        if run_id and run_id == live_run:
            # A stopped machine of a run that goes on (or waits for its replacement): nobody starts
            # it again and its volume bills, but the run is not over. Only the machine is a leftover.
            report.findings.append(Finding("instance", inst["InstanceId"],
                                           f"{inst['InstanceType']} {inst['State']['Name']}, a former machine of "
                                           "the active run (its volume bills)"))
            continue
        if alive and now - inst["LaunchTime"] < launch_grace:  # a stopped machine is never starting
            report.starting.append(inst["InstanceId"])
            continue
        report.findings.append(Finding("instance", inst["InstanceId"],
                                       f"{inst['InstanceType']} {inst['State']['Name']} with no active run", run_id))
    for group in seen.groups:
        run_id = tags_of(group).get("RunId") or group["AutoScalingGroupName"]
        if run_id != live_run and int(group.get("DesiredCapacity", 0)) > 0:
            # It would launch (and relaunch) a machine for a run that has ended.
            report.findings.append(Finding("group", group["AutoScalingGroupName"],
                                           f"wants {group['DesiredCapacity']} machine with no active run", run_id))
    for vol in seen.volumes:
        report.findings.append(Finding("volume", vol["VolumeId"], f"{vol['Size']} GB {vol['VolumeType']} detached",
                                       tags_of(vol).get("RunId")))
    for run_id in seen.stacks:
        if run_id == live_run:
            continue
        machine = "its instance is still listed above" if run_id in machines else "its instance is gone"
        report.findings.append(Finding("stack", run_id, f"run stack record in the Pulumi backend; {machine}, "
                                       "so it costs nothing", run_id))
    for upload in seen.uploads:
        report.findings.append(Finding("multipart_upload", upload["UploadId"], f"incomplete upload of {upload['Key']}",
                                       key=upload["Key"]))
    report.storage = storage(target)
    return report


def _ago(lease: Lease) -> str:
    return duration(lease.age.total_seconds()) if lease.age is not None else "an unknown time"


def _pages(pages, key: str) -> list[dict]:
    return [item for page in pages for item in page.get(key, []) or []]


def storage(target: Target) -> dict:
    """Bytes at rest by top-level prefix and the monthly S3 Standard cost (datasets apart)."""
    sizes: dict[str, int] = defaultdict(int)
    for obj in _pages(target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket), "Contents"):
        key = obj["Key"]
        top = DATASETS_PREFIX if key.startswith(DATASETS_PREFIX) else key.split("/", 1)[0] + "/"
        sizes[top] += obj["Size"]
    per_prefix = {p: {"bytes": b, "usd_per_month": round(b / 1e9 * S3_STANDARD_PER_GB_MONTH, 4)}
                  for p, b in sorted(sizes.items())}
    runs = sum(b for p, b in sizes.items() if p != DATASETS_PREFIX)
    return {
        "prefixes": per_prefix,
        "runs_and_logs_usd_per_month": round(runs / 1e9 * S3_STANDARD_PER_GB_MONTH, 4),
        "datasets_usd_per_month": round(sizes.get(DATASETS_PREFIX, 0) / 1e9 * S3_STANDARD_PER_GB_MONTH, 4),
    }


def act(target: Target, executor, findings: list[Finding]) -> dict[str, str]:
    """Fix what was found; returns why a finding could not be fixed, by its id."""
    not_fixed: dict[str, str] = {}
    ended: set[str] = set()
    for f in findings:
        if f.kind in ("stale_lock", "group") or (f.kind == "instance" and f.run_id):
            if f.run_id not in ended:  # ends every machine of the run, by tag
                ended.add(f.run_id)
                left = force_end(target, executor, f.run_id, "failed", f.reason or "lost", f.error).stack_left
                if left:
                    not_fixed[f.run_id] = left
        if f.kind == "instance" and not f.run_id:
            target.ec2.terminate_instances(InstanceIds=[f.id])
        elif f.kind == "volume":
            target.ec2.delete_volume(VolumeId=f.id)
        elif f.kind == "stack" and f.run_id not in ended:
            try:
                executor.finalize(f.id)
            except Exception as exc:  # noqa: BLE001 - a record costs nothing; say why it stays
                not_fixed[f.id] = str(exc)
        elif f.kind == "multipart_upload":
            target.s3.abort_multipart_upload(Bucket=target.bucket, Key=f.key, UploadId=f.id)
    return not_fixed


def verify(target: Target, executor, do_fix: bool) -> Report:
    """Scan and decide; with do_fix, act on what was found, then scan again (what remains is
    reported, with why --fix could not remove it)."""
    report = decide(target, scan(target, executor))
    if not (do_fix and report.findings):
        return report
    not_fixed = act(target, executor, report.findings)
    after = decide(target, scan(target, executor))
    after.fixed = [f for f in report.findings if f.id not in not_fixed and f not in after.findings]
    after.not_fixed = not_fixed
    return after
