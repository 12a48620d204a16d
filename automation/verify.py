"""verify-cleanup: find anything that could bill the user, found by tag and by listing, not
only from records; `--fix` removes it (idempotent)."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from instance.protocol.ec2 import tags_of
from instance.protocol.layout import DATASETS_PREFIX, PROJECT_TAG
from instance.protocol.state import DEFAULT_STALE_AFTER, is_stale
from instance.protocol.timeutil import utcnow

from .context import Target
from .ending import force_end, instance_state

S3_STANDARD_PER_GB_MONTH = 0.023
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def grace() -> timedelta:
    return timedelta(seconds=float(os.environ.get("CHRONOS_LAUNCH_GRACE_SECONDS", "120")))


def stale_after() -> timedelta:
    value = os.environ.get("CHRONOS_STALE_SECONDS")
    return timedelta(seconds=float(value)) if value else DEFAULT_STALE_AFTER


@dataclass
class Finding:
    kind: str  # instance | volume | stack | stale_lock | multipart_upload
    id: str
    detail: str
    run_id: str | None = None
    key: str | None = None  # the object key, for multipart uploads


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    fixed: list[Finding] = field(default_factory=list)
    starting: list[str] = field(default_factory=list)  # instances inside the launch grace window
    active_run: str | None = None
    storage: dict = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict:
        return {"clean": self.clean, "active_run": self.active_run, "starting": self.starting,
                "findings": [asdict(f) for f in self.findings], "fixed": [asdict(f) for f in self.fixed],
                "storage": self.storage}


def scan(target: Target, executor) -> Report:
    if hasattr(executor, "reconcile"):
        executor.reconcile()
    report = Report()
    now = utcnow()
    lease = target.state_store().read()
    live_run = None
    if lease:
        state = dict(lease.state)
        ec2_state = instance_state(target, state.get("instance_id"))
        if is_stale(state, now, ec2_state, stale_after()):
            report.findings.append(Finding(
                "stale_lock", target.layout.state,
                f"run {lease.run_id} ({lease.status.value}) last heartbeat {state.get('heartbeat_at')}, "
                f"instance {state.get('instance_id') or 'none'} is {ec2_state or 'gone'}", lease.run_id))
        else:
            live_run = report.active_run = lease.run_id

    for inst in _described(target.ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": "tag:Project", "Values": [PROJECT_TAG]}, {"Name": "instance-state-name", "Values": LIVE_STATES}])):
        run_id = tags_of(inst).get("RunId")
        if run_id and run_id == live_run:
            continue
        if now - inst["LaunchTime"] < grace():
            report.starting.append(inst["InstanceId"])
            continue
        report.findings.append(Finding("instance", inst["InstanceId"],
                                       f"{inst['InstanceType']} {inst['State']['Name']} with no active run", run_id))

    for vol in _pages(target.ec2.get_paginator("describe_volumes").paginate(Filters=[
        {"Name": "tag:Project", "Values": [PROJECT_TAG]}, {"Name": "status", "Values": ["available"]}]), "Volumes"):
        report.findings.append(Finding("volume", vol["VolumeId"], f"{vol['Size']} GB {vol['VolumeType']} detached",
                                       tags_of(vol).get("RunId")))

    for run_id in executor.leftover_stacks():
        if run_id != live_run:
            report.findings.append(Finding("stack", run_id, "run stack still in the Pulumi backend", run_id))

    for upload in _pages(target.s3.get_paginator("list_multipart_uploads").paginate(Bucket=target.bucket), "Uploads"):
        report.findings.append(Finding("multipart_upload", upload["UploadId"], f"incomplete upload of {upload['Key']}",
                                       key=upload["Key"]))

    report.storage = storage(target)
    return report


def _described(pages) -> list[dict]:
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


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


def fix(target: Target, executor, findings: list[Finding]) -> None:
    for f in findings:
        if f.kind == "stale_lock" or (f.kind == "instance" and f.run_id):
            force_end(target, executor, f.run_id, "failed", "lost")
        if f.kind == "instance":
            target.ec2.terminate_instances(InstanceIds=[f.id])
        elif f.kind == "volume":
            target.ec2.delete_volume(VolumeId=f.id)
        elif f.kind == "stack":
            executor.finalize(f.id)
        elif f.kind == "multipart_upload":
            target.s3.abort_multipart_upload(Bucket=target.bucket, Key=f.key, UploadId=f.id)


def verify(target: Target, executor, do_fix: bool) -> Report:
    """Scan; with do_fix, fix what was found and scan again (what remains is reported)."""
    report = scan(target, executor)
    if not (do_fix and report.findings):
        return report
    fix(target, executor, report.findings)
    after = scan(target, executor)
    after.fixed = report.findings
    return after
